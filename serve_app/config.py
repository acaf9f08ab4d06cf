"""The application's typed arguments: what `build_app` validates before any deployment exists.

Deployment resources (num_cpus, replicas, autoscaling) belong to the Serve config file's `deployments:` section;
these args hold what the code needs to know: which model, limits on requests, and each stage's own options.
Every part is plain pydantic (api/options.py, stages/options.py, artifacts.py): validating args imports neither
Ray Serve nor ONNX Runtime.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serve_app.api.options import API_KEYS_ENV, IngressOptions, default_max_request_bytes  # noqa: F401 -- args
from serve_app.artifacts import DEFAULT_CACHE_DIR, ModelSource  # noqa: F401 -- part of the args
from serve_app.stages.options import DecoderOptions, PreprocessOptions, VisionOptions


class AppArgs(BaseModel):
    """Arguments of `build_app`, i.e. the `args:` block of an application in a Serve config file."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default_factory=ModelSource, description="which model to serve")
    ingress: IngressOptions = Field(default_factory=IngressOptions, description="HTTP API: auth and request limits")
    preprocess: PreprocessOptions = Field(default_factory=PreprocessOptions, description="image decoding limits")
    vision: VisionOptions = Field(default_factory=VisionOptions, description="vision encoder stage")
    decoder: DecoderOptions = Field(default_factory=DecoderOptions, description="decoder stage")

    @model_validator(mode="after")
    def _derive_body_limit(self) -> AppArgs:
        if self.ingress.max_request_bytes is None:
            self.ingress.max_request_bytes = default_max_request_bytes(self.preprocess.max_image_bytes,
                                                                       self.ingress.max_images_per_request)
        return self


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
