"""Draw a scene with Pillow: muted background (flat or gradient), saturated shapes with color jitter, pixel noise.

The randomness of the look (background, jitter, noise) comes from the same seeded generator as the scene, so
`render_seed(seed, size)` is a pure function of its arguments.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw

from graphs.demo.scenes import COLORS, Scene, Shape, sample_scene

COLOR_JITTER = 20  # per channel; far below the distance between any two palette colors
MAX_NOISE_STD = 10.0  # gaussian pixel noise, uint8 units


def _background(rng: random.Random, size: int) -> np.ndarray:
    """(H,W,3) float32 muted gray, flat or a linear gradient between two grays, slightly tinted."""
    a, b = rng.uniform(30, 200), rng.uniform(30, 200)
    tint = np.array([rng.uniform(-12, 12) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    axis = rng.choice(("flat", "vertical", "horizontal"))
    if axis == "flat":
        gray = np.full((size, size), a, dtype=np.float32)
    elif axis == "vertical":
        gray = np.repeat((a + (b - a) * ramp)[:, None], size, axis=1)
    else:
        gray = np.repeat((a + (b - a) * ramp)[None, :], size, axis=0)
    return gray[:, :, None] + tint  # (H,W,3)


def _outline(shape: Shape, size: int) -> tuple[str, list[tuple[float, float]]]:
    cx, cy, r = shape.cx * size, shape.cy * size, shape.radius * size
    if shape.kind == "circle":
        return "ellipse", [(cx - r, cy - r), (cx + r, cy + r)]
    if shape.kind == "square":
        return "polygon", [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    # triangle, apex up: vertices on the circumcircle at 90, 210 and 330 degrees
    pts = [(cx + r * math.cos(math.radians(a)), cy - r * math.sin(math.radians(a))) for a in (90, 210, 330)]
    return "polygon", pts


def render(scene: Scene, rng: random.Random, size: int) -> np.ndarray:
    """scene -> (3,H,W) uint8 RGB, the layout every stage passes around."""
    img = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for shape in scene.shapes:
        rgb = tuple(int(np.clip(c + rng.uniform(-COLOR_JITTER, COLOR_JITTER), 0, 255)) for c in COLORS[shape.color])
        kind, xy = _outline(shape, size)
        getattr(draw, kind)(xy, fill=rgb)
    pixels = np.asarray(img, dtype=np.float32)
    noise_std = rng.uniform(0.0, MAX_NOISE_STD)
    noise = np.random.default_rng(rng.getrandbits(63)).normal(0.0, noise_std, pixels.shape)
    return np.clip(pixels + noise, 0, 255).round().astype(np.uint8).transpose(2, 0, 1)  # (3,H,W)


def render_seed(seed: int, size: int) -> tuple[np.ndarray, str]:
    """One labelled example: seed -> ((3,H,W) uint8 pixels, caption)."""
    rng = random.Random(seed)
    scene = sample_scene(rng)
    return render(scene, rng, size), scene.caption


def to_png(pixels: np.ndarray, path: str) -> None:
    Image.fromarray(pixels.transpose(1, 2, 0)).save(path)
