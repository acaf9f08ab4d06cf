"""The ingress's options (the `ingress` block of the application's args) and the body limits they default to. Plain
pydantic: the config validates them without importing the ingress, Ray Serve or FastAPI."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

API_KEYS_ENV = "MMSERVE_API_KEYS"
TEXT_HEADROOM_BYTES = 1024 * 1024  # the messages' text and JSON framing around the images
DEFAULT_MAX_JSON_DEPTH = 32  # a chat request nests 5 deep (messages[].content[].image_url.url)


def default_max_request_bytes(max_image_bytes: int, max_images: int) -> int:
    """Every allowed image at its byte limit, base64-encoded (4 characters per 3 bytes), plus the text's room."""
    return max_images * ((max_image_bytes + 2) // 3) * 4 + TEXT_HEADROOM_BYTES


class IngressOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(default_factory=list,
                                description=f"accepted Bearer keys; the {API_KEYS_ENV} env var (comma-separated) "
                                            "adds more; none = no authentication")
    max_images_per_request: int = Field(default=4, ge=0, description="image parts allowed in one request")
    max_image_tokens_per_request: int | None = Field(
        default=None, ge=1, description="feature rows all of one request's images may fill (each image's plan says "
                                        "how many it fills); more is refused with 400 too_many_image_tokens before "
                                        "any is encoded; none = only the context bounds them")
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
