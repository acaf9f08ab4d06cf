"""Where a replica's artifacts come from: `resolve_model(source) -> artifact directory`, called by every stage
replica at its own start (Ingress, Preprocess, VisionEncoder, Decoder), on its own node.

    artifacts_dir  a built directory on this node's disk: checked, never built
    preset         built into this node's cache_dir when missing (graphs.build.ensure_artifacts under the cache's
                   file lock: replicas starting at once on one node build it once; torch is imported only then)

Why per replica and not in `build_app`: on a multi-node cluster the node that runs the builder is not the nodes
the replicas land on, and its disk is not theirs. `python -m serve_app` builds the default preset before
`serve run` only to show progress lines; the replicas then find it in the cache. A later source kind (an
`artifacts_uri` fetched into the node-local cache) belongs here too.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from graphs.families import source_names
from graphs.manifest import MANIFEST

DEFAULT_CACHE_DIR = "~/.cache/mmserve"


class ModelSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = Field(default="demo", description="model preset; its artifacts are built into cache_dir if missing")
    artifacts_dir: str | None = Field(default=None,
                                      description="a built artifact directory; overrides preset/cache_dir")
    cache_dir: str = Field(default=DEFAULT_CACHE_DIR, description="where artifacts for a preset are built and kept "
                                                                  "(on each node)")
    served_name: str | None = Field(default=None,
                                    description="model id in /v1/models and responses; default mmserve-<preset of the "
                                                "artifacts>")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        known = source_names()
        if v not in known:
            raise ValueError(f"unknown preset {v!r}; choose one of: {', '.join(sorted(known))}")
        return v

    def name(self, built_preset: str | None = None) -> str:
        """The model id clients send; by default named after the preset the artifacts were built from."""
        return self.served_name or f"mmserve-{built_preset or self.preset}"


class ArtifactsError(ValueError):
    """A model source that gives no usable artifact directory; the message names the field."""


def _print_progress(preset: str):
    def progress(step: str) -> None:  # a first start builds for a while: show where it is
        print(f"mmserve: building {preset} artifacts: {step}", flush=True)
    return progress


def resolve_model(source: ModelSource) -> Path:
    """The artifact directory for `source` on this node: the given one (must have a manifest), or the preset's,
    built into cache_dir if missing (progress lines on stdout)."""
    if source.artifacts_dir:
        path = Path(source.artifacts_dir).expanduser()
        if not (path / MANIFEST).is_file():
            raise ArtifactsError(f"model.artifacts_dir: {path} has no {MANIFEST}; build it with `mmserve build`")
        return path
    from graphs.build import ensure_artifacts  # the build pipeline and torch: only when a build may be needed

    return Path(ensure_artifacts(source.preset, Path(source.cache_dir).expanduser(), progress=_print_progress(source.preset)))
