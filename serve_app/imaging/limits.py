"""What bounds one image: the preprocess stage's options satisfy this, and so does any object with these fields."""

from __future__ import annotations

from typing import Protocol

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


class ImageLimits(Protocol):
    max_image_bytes: int  # largest encoded image, after base64 decoding
    max_image_pixels: int  # largest width*height, checked from the header before decoding
    allow_remote_urls: bool  # fetch http(s) URLs (server-side requests) or refuse them
    fetch_timeout_s: float  # timeout for one http(s) fetch
    max_tiles: int | None  # most views one image may become (a tiling plan's); None = the plan's own bound
