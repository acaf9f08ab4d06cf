"""Preprocess stage: an image URL from a chat message -> model-ready uint8 pixels and a content hash.

Lifecycle: construct (options; the manifest's vision spec, read at replica start) -> per request: fetch bytes
(data: URL, or http(s) when allowed) -> check the byte limit -> read the header only and check the pixel limit (a
decompression bomb is refused before its pixels are decoded) -> decode -> EXIF orientation -> RGB -> the spec's
resize (crop: short side + center crop; pad: long side + pad to square; resize: stretch) -> (3,S,S) uint8.
Resources: CPU only, a fraction of a core; stateless, so it scales out freely.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import re
import time
import urllib.request
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from graphs.manifest import Manifest, VisionSpec
from serve_app.api.errors import InvalidImage
from serve_app.artifacts import ModelSource, model_key, resolve_model
from serve_app.observability.metrics import ImageMetrics, StageMetrics
from serve_app.stages.pillow_errors import pillow_reading
from serve_app.engine.types import PreprocessedImage, check_model_key

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)


class PreprocessOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0,
                                 description="largest encoded image accepted, in bytes (after base64 decoding)")
    max_image_pixels: int = Field(default=25_000_000, gt=0,
                                  description="largest width*height accepted; checked from the header before decoding")
    allow_remote_urls: bool = Field(default=False,
                                    description="fetch http(s) image URLs; off by default (server-side requests)")
    fetch_timeout_s: float = Field(default=5.0, gt=0, description="timeout for fetching an http(s) image")


# ---------------------------------------------------------------- bytes


def _data_url_bytes(url: str, param: str, limit: int) -> bytes:
    m = _DATA_URL.match(url)
    if m is None or ";base64" not in (m.group("params") or ""):
        raise InvalidImage("image data URL must look like data:image/<type>;base64,<data>", param, "invalid_image_url")
    data = m.group("data").strip()
    if len(data) * 3 // 4 > limit + 3:  # refuse before decoding: base64 is 4 chars per 3 bytes
        raise InvalidImage(f"image is larger than {limit} bytes", param, "image_too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("image data is not valid base64", param, "invalid_base64") from None


def _remote_bytes(url: str, param: str, opts: PreprocessOptions) -> bytes:
    if not opts.allow_remote_urls:
        raise InvalidImage("http(s) image URLs are disabled on this server; send a data: URL", param,
                           "remote_url_disabled")
    try:
        with urllib.request.urlopen(url, timeout=opts.fetch_timeout_s) as resp:  # noqa: S310 -- scheme checked
            body = resp.read(opts.max_image_bytes + 1)
    except OSError as e:
        raise InvalidImage(f"could not fetch image: {e}", param, "image_fetch_failed") from None
    return body


def image_bytes(url: str, param: str, opts: PreprocessOptions) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        raw = _data_url_bytes(url, param, opts.max_image_bytes)
    elif scheme in ("http", "https"):
        raw = _remote_bytes(url, param, opts)
    else:
        raise InvalidImage("image_url must be a data: URL or an http(s) URL", param, "invalid_image_url")
    if len(raw) > opts.max_image_bytes:
        raise InvalidImage(f"image is larger than {opts.max_image_bytes} bytes", param, "image_too_large")
    if not raw:
        raise InvalidImage("image data is empty", param, "invalid_image")
    return raw


# ---------------------------------------------------------------- decode


def open_header(raw: bytes, param: str, max_pixels: int) -> Image.Image:
    """Image.open reads only the header: size and format are known, no pixel is decoded yet."""
    # pillow_reading: a recognised format cut inside its header fails in the plugin's own read in Image.open,
    # before load() (JPEG "Truncated File Read" in a marker segment, WebP "could not create decoder object").
    with warnings.catch_warnings(), pillow_reading(param):
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            raise _unreadable(raw, param) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidImage(f"image has more than {max_pixels} pixels", param, "image_too_many_pixels") from None
    w, h = img.size
    if w * h > max_pixels:
        raise InvalidImage(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}", param,
                           "image_too_many_pixels")
    return img


def _unreadable(raw: bytes, param: str) -> InvalidImage:
    """Tell an image in a format we do not take (GIF, BMP, TIFF...) from data that is no image at all."""
    try:
        fmt = Image.open(io.BytesIO(raw)).format
    except Exception:  # noqa: BLE001 -- any failure here means: not an image
        return InvalidImage("image data is not a PNG, JPEG or WebP image", param, "invalid_image")
    return InvalidImage(f"unsupported image format {fmt}; send PNG, JPEG or WebP", param, "unsupported_image_format")


def _from_alpha(img: Image.Image) -> Image.Image:
    # Transparent pixels have arbitrary colour underneath (often black); composite on white, as a viewer shows them.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _from_wide_int(img: Image.Image) -> Image.Image:
    # Pillow's convert("RGB") clips 16/32-bit values at 255 (a 16-bit photo turns white): rescale the range instead.
    a = np.asarray(img).astype(np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
    gray = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _from_float(img: Image.Image) -> Image.Image:
    a = np.asarray(img, dtype=np.float64)
    scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L").convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


# mode -> converter for modes that convert("RGB") gets wrong; every other mode (L, P, CMYK, YCbCr, 1, ...) is right.
_CONVERTERS = {
    "I;16": _from_wide_int, "I;16B": _from_wide_int, "I;16L": _from_wide_int, "I;16N": _from_wide_int,
    "I": _from_wide_int, "F": _from_float,
}


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if _has_alpha(img):
        return _from_alpha(img)
    return _CONVERTERS.get(img.mode, lambda i: i.convert("RGB"))(img)


def decode(raw: bytes, param: str, opts: PreprocessOptions) -> tuple[Image.Image, int]:
    """-> (oriented RGB image, source width*height)."""
    img = open_header(raw, param, opts.max_image_pixels)
    source_pixels = img.size[0] * img.size[1]
    with pillow_reading(param):  # truncated or corrupt data surfaces only when decoding, forged EXIF when rotating
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img), source_pixels


_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}


def _chw(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # (H,W,3) -> (3,H,W)


def resize_crop(img: Image.Image, size: int, resample: str = "bicubic") -> np.ndarray:
    """Resize the short side to `size`, center-crop the long side -> (3,size,size) uint8."""
    return _chw(ImageOps.fit(img, (size, size), method=_RESAMPLE[resample], centering=(0.5, 0.5)))


def resize_pad(img: Image.Image, size: int, resample: str = "bicubic", color=(0, 0, 0)) -> np.ndarray:
    """Resize the long side to `size`, pad the short side evenly -> (3,size,size) uint8."""
    return _chw(ImageOps.pad(img, (size, size), method=_RESAMPLE[resample], color=tuple(color)))


def resize_shortest_edge(img: Image.Image, edge: int, size: int, resample: str = "bicubic") -> np.ndarray:
    """transformers' shortest-edge resize + center crop, to the pixel: the short side becomes `edge`, the long side
    int(edge * long / short); then the centered (size, size) window with top = (h - size) // 2 -> (3,size,size)."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(edge * long / short)
    new_w, new_h = (edge, new_long) if w <= h else (new_long, edge)
    img = img.resize((new_w, new_h), _RESAMPLE[resample])
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return _chw(img.crop((left, top, left + size, top + size)))


def to_pixels(img: Image.Image, vision: VisionSpec) -> np.ndarray:
    """An RGB image -> (3,S,S) uint8 the way the manifest's vision spec says."""
    pre, size = vision.preprocessing, vision.image_size
    if pre.resize == "crop":
        return resize_crop(img, size, pre.resample)
    if pre.resize == "pad":
        return resize_pad(img, size, pre.resample, pre.pad_color)
    if pre.resize == "shortest_edge":
        return resize_shortest_edge(img, pre.shortest_edge, size, pre.resample)
    return _chw(img.resize((size, size), _RESAMPLE[pre.resample]))


def preprocess_image(url: str, vision: VisionSpec, opts: PreprocessOptions,
                     param: str = "image_url") -> PreprocessedImage:
    raw = image_bytes(url, param, opts)
    img, source_pixels = decode(raw, param, opts)
    pixels = to_pixels(img, vision)  # (3,S,S)
    return PreprocessedImage(pixels=pixels, content_hash=hashlib.sha256(pixels.tobytes()).hexdigest(),
                             source_bytes=len(raw), source_pixels=source_pixels)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
class Preprocess:
    """Stateless CPU stage. In: an image URL string. Out: PreprocessedImage with pixels (3,S,S) uint8."""

    def __init__(self, model: ModelSource | dict, options: PreprocessOptions | dict | None = None):
        self.source = ModelSource.model_validate(model).model_dump()
        artifacts = resolve_model(ModelSource.model_validate(model))
        self.vision, self.model_key = Manifest.read(artifacts).vision, model_key(artifacts)
        self.options = PreprocessOptions.model_validate(options or {})
        self.metrics, self.image_metrics = StageMetrics("preprocess"), ImageMetrics()
        # Decoding is CPU-bound: one image per replica at a time. The wait for this slot is the stage's queue wait;
        # the decode runs in a thread so the replica keeps answering health checks meanwhile.
        self._slot = asyncio.Semaphore(1)

    async def process(self, url: str, param: str = "image_url", model_key: str | None = None) -> PreprocessedImage:
        arrived = time.perf_counter()
        with self.metrics.track():
            check_model_key("preprocess", self.model_key, model_key, self.source)  # image size and resize rule are the model's
            async with self._slot:
                self.metrics.observe_queue_wait(time.perf_counter() - arrived)
                with self.metrics.timed_compute():
                    image = await asyncio.to_thread(preprocess_image, url, self.vision, self.options, param)
            self.image_metrics.add(image.source_bytes, image.source_pixels)
            return image

    async def ready(self) -> bool:
        return True
