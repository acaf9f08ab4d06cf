"""Encoded bytes -> an oriented RGB image: the header first (size and format, no pixel decoded yet), then the
pixels, then the colour modes that Pillow's convert("RGB") gets wrong."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serve_app.contract import InvalidImage
from serve_app.imaging.limits import ACCEPTED_FORMATS, ImageLimits
from serve_app.imaging.pillow_errors import pillow_reading


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


def decode(raw: bytes, param: str, opts: ImageLimits) -> tuple[Image.Image, int]:
    """-> (oriented RGB image, source width*height)."""
    img = open_header(raw, param, opts.max_image_pixels)
    source_pixels = img.size[0] * img.size[1]
    with pillow_reading(param):  # truncated or corrupt data surfaces only when decoding, forged EXIF when rotating
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img), source_pixels
