"""Encoded test images, made in memory: every mode and format the preprocess stage must handle."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def gradient_rgb(w: int = 48, h: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(a, mode="RGB")


def png_url(w: int = 48, h: int = 32, seed: int = 0) -> str:
    return data_url(encode(gradient_rgb(w, h, seed)))


def bomb_png(side: int = 20000) -> bytes:
    """A PNG whose header claims side x side pixels in a few kB: decoding it would need side^2 * 3 bytes."""
    return encode(Image.new("1", (side, side)), "PNG", optimize=True)
