"""The application's typed arguments: what `build_app` validates before any deployment exists.

Deployment resources (num_cpus, replicas, autoscaling) belong to the Serve config file's `deployments:` section;
these args hold what the code needs to know: which model, limits on requests, and each stage's own options.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serve_app.artifacts import DEFAULT_CACHE_DIR, ModelSource  # noqa: F401 -- part of the args
from serve_app.api.request_limits import DEFAULT_MAX_JSON_DEPTH, default_max_request_bytes
from serve_app.stages.decoder import DecoderOptions
from serve_app.stages.preprocess import PreprocessOptions
from serve_app.stages.vision import VisionOptions

API_KEYS_ENV = "MMSERVE_API_KEYS"


class IngressOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(default_factory=list,
                                description=f"accepted Bearer keys; the {API_KEYS_ENV} env var (comma-separated) "
                                            "adds more; none = no authentication")
    max_images_per_request: int = Field(default=4, ge=0, description="image parts allowed in one request")
    stage_timeout_s: float = Field(default=60.0, gt=0, description="how long the ingress waits on a stage call")
    decoder_timeout_s: float = Field(default=60.0, gt=0,
                                     description="longest wait for the decoder's first chunk and between two "
                                                 "chunks of one answer; past it the decoder call is cancelled and "
                                                 "the client gets 504 decoder_timeout (an error event then [DONE] "
                                                 "once streaming has started)")
    max_request_bytes: int | None = Field(default=None, gt=0,
                                          description="largest request body in bytes (413 request_too_large over "
                                                      "it); default: every allowed image at preprocess."
                                                      "max_image_bytes, base64-encoded, plus 1 MiB of text")
    max_json_depth: int = Field(default=DEFAULT_MAX_JSON_DEPTH, ge=4, le=512,
                                description="deepest nesting of JSON arrays/objects in a request body (400 "
                                            "json_too_deep over it)")

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
