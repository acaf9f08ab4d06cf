"""The application's typed arguments: what `build_app` validates before any deployment exists.

Deployment resources (num_cpus, replicas, autoscaling) belong to the Serve config file's `deployments:` section;
these args hold what the code needs to know: which model, limits on requests, and each stage's own options.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graphs.config import PRESETS
from serve_app.stages.decoder import DecoderOptions
from serve_app.stages.preprocess import PreprocessOptions
from serve_app.stages.vision import VisionOptions

DEFAULT_CACHE_DIR = "~/.cache/mmserve"
API_KEYS_ENV = "MMSERVE_API_KEYS"


class ModelSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = Field(default="demo", description="model preset; its artifacts are built into cache_dir if missing")
    artifacts_dir: str | None = Field(default=None,
                                      description="a built artifact directory; overrides preset/cache_dir")
    artifacts_uri: str | None = Field(default=None,
                                      description="s3://bucket/prefix, file:///path or a path written by `mmserve "
                                                  "push`; fetched into cache_dir/fetched on each node, every file "
                                                  "checked against the manifest; overrides preset and artifacts_dir")
    cache_dir: str = Field(default=DEFAULT_CACHE_DIR, description="where artifacts for a preset are built and kept")
    served_name: str | None = Field(default=None,
                                    description="model id in /v1/models and responses; default mmserve-<preset of the "
                                                "artifacts>")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose one of: {', '.join(sorted(PRESETS))}")
        return v

    @field_validator("artifacts_uri")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is not None:
            from serve_app.store import StoreError, parse_uri

            try:
                parse_uri(v)
            except StoreError as e:
                raise ValueError(str(e)) from None
        return v

    def name(self, built_preset: str | None = None) -> str:
        """The model id clients send; by default named after the preset the artifacts were built from."""
        return self.served_name or f"mmserve-{built_preset or self.preset}"


class IngressOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(default_factory=list,
                                description=f"accepted Bearer keys; the {API_KEYS_ENV} env var (comma-separated) "
                                            "adds more; none = no authentication")
    max_images_per_request: int = Field(default=4, ge=0, description="image parts allowed in one request")
    stage_timeout_s: float = Field(default=60.0, gt=0, description="how long the ingress waits on a stage call")

    def keys(self) -> frozenset[str]:
        """Keys from config plus the environment of the process that asks (the ingress replica)."""
        from_env = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
        return frozenset([*self.api_keys, *from_env])


class AppArgs(BaseModel):
    """Arguments of `build_app`, i.e. the `args:` block of an application in a Serve config file."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default_factory=ModelSource, description="which model to serve")
    ingress: IngressOptions = Field(default_factory=IngressOptions, description="HTTP API: auth and request limits")
    preprocess: PreprocessOptions = Field(default_factory=PreprocessOptions, description="image decoding limits")
    vision: VisionOptions = Field(default_factory=VisionOptions, description="vision encoder stage")
    decoder: DecoderOptions = Field(default_factory=DecoderOptions, description="decoder stage")


class ConfigError(ValueError):
    """Bad application args; the message names the field path, e.g. `vision.max_batch_size`."""


def parse_args(args: dict | AppArgs | None) -> AppArgs:
    if isinstance(args, AppArgs):
        return args
    try:
        return AppArgs.model_validate(args or {})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<args>'}: {err['msg']}"
                             for err in e.errors())
        raise ConfigError(f"invalid mmserve application args: {problems}") from None


def resolve_artifacts(source: ModelSource) -> Path:
    """The artifact directory to serve: fetched from artifacts_uri, the given one (must have a manifest), or the
    preset's, built if missing."""
    if source.artifacts_uri:  # interim: runs where build_app runs until each replica resolves its own source
        from serve_app.store import StoreError, fetch_artifacts

        try:
            return fetch_artifacts(source.artifacts_uri, Path(source.cache_dir).expanduser() / "fetched")
        except StoreError as e:
            raise ConfigError(f"model.artifacts_uri: {e}") from None
    if source.artifacts_dir:
        path = Path(source.artifacts_dir).expanduser()
        if not (path / "manifest.json").is_file():
            raise ConfigError(f"model.artifacts_dir: {path} has no manifest.json; build it with `mmserve build`")
        return path
    from graphs.build import ensure_artifacts  # imports torch only when a build may be needed

    def progress(step: str) -> None:  # the first start builds for a while: show where it is
        print(f"mmserve: building {source.preset} artifacts: {step}", flush=True)

    return Path(ensure_artifacts(source.preset, Path(source.cache_dir).expanduser(), progress=progress))
