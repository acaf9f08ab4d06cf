"""The TRAINING renderer (Pillow's ImageDraw): one scene drawn in many looks, so the captioner learns shapes and
colors, not one renderer's pixels.

Per image, all from the scene's seeded generator (so `render_seed(seed)` is a pure function of the seed):
    canvas       a side from CANVAS_SIDES; the model sees it after the processor's resize to 64 px
    antialias    drawn at SUPERSAMPLE x the side and downsampled (Lanczos), or drawn aliased at the side itself
    background   white, flat gray, gray + pixel noise, a linear gradient, or a light texture (sine stripes or
                 checks); every one unsaturated, so no background reads as a palette color
    shapes       palette color +- COLOR_JITTER, square and triangle rotated up to MAX_ROTATION_DEG (a square stays
                 a square and a triangle a triangle at that angle; the scene grammar keeps sizes and regions apart)
    JPEG         re-encoded at a random quality with probability JPEG_P

The evaluation renderer (graphs/demo/heldout_render.py) shares only the scene grammar: other drawing code, other
sides, other backgrounds.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw

from graphs.demo.scenes import COLORS, Scene, Shape, sample_scene

CANVAS_SIDES = (48, 64, 96, 128, 160, 224)
SUPERSAMPLE = 4
COLOR_JITTER = 20  # per channel; far below the distance between any two palette colors
MAX_NOISE_STD = 12.0  # gaussian pixel noise of the "noise" background, uint8 units
MAX_ROTATION_DEG = 12.0
JPEG_P = 0.4
JPEG_QUALITY = (30, 90)
BACKGROUNDS = ("white", "gray", "noise", "gradient", "texture")


def _gray(rng: random.Random, lo: float = 40, hi: float = 210) -> float:
    return rng.uniform(lo, hi)


def _tint(rng: random.Random) -> np.ndarray:
    return np.array([rng.uniform(-10, 10) for _ in range(3)], dtype=np.float32)


def background(rng: random.Random, side: int) -> np.ndarray:
    """(H,W,3) float32 in [0,255]: one of BACKGROUNDS, unsaturated."""
    kind = rng.choice(BACKGROUNDS)
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
    if kind == "white":
        gray = np.full((side, side), rng.uniform(232, 255), np.float32)
    elif kind in ("gray", "noise"):
        gray = np.full((side, side), _gray(rng), np.float32)
        if kind == "noise":
            std = rng.uniform(3.0, MAX_NOISE_STD)
            gray = gray + np.random.default_rng(rng.getrandbits(63)).normal(0, std, (side, side)).astype(np.float32)
    elif kind == "gradient":
        a, b = _gray(rng), _gray(rng)
        line = a + (b - a) * ramp
        gray = np.repeat(line[:, None], side, 1) if rng.random() < 0.5 else np.repeat(line[None, :], side, 0)
    else:  # texture: faint stripes or checks over a light or mid gray
        base, amp = _gray(rng, 90, 235), rng.uniform(5, 18)
        period = rng.uniform(0.06, 0.25) * side
        y, x = np.mgrid[0:side, 0:side].astype(np.float32)
        if rng.random() < 0.5:
            angle = rng.uniform(0, math.pi)
            wave = np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period)
        else:
            wave = np.where(((x // period) + (y // period)) % 2 == 0, 1.0, -1.0)
        gray = base + amp * wave
    return gray[:, :, None] + _tint(rng)  # (H,W,3)


def _outline(shape: Shape, side: int, angle: float) -> tuple[str, list[tuple[float, float]]]:
    cx, cy, r = shape.cx * side, shape.cy * side, shape.radius * side
    if shape.kind == "circle":
        return "ellipse", [(cx - r, cy - r), (cx + r, cy + r)]
    # square: corners at 45 + k*90 degrees on radius r*sqrt(2); triangle apex up: 90, 210, 330 degrees on r
    corners = (45, 135, 225, 315) if shape.kind == "square" else (90, 210, 330)
    reach = r * math.sqrt(2) if shape.kind == "square" else r
    return "polygon", [(cx + reach * math.cos(math.radians(a + angle)), cy - reach * math.sin(math.radians(a + angle)))
                       for a in corners]


def render(scene: Scene, rng: random.Random) -> np.ndarray:
    """scene -> (H,W,3) uint8 RGB at a random side, before the processor's resize."""
    side = rng.choice(CANVAS_SIDES)
    scale = SUPERSAMPLE if rng.random() < 0.5 else 1
    bg = np.clip(background(rng, side), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg).resize((side * scale, side * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for shape in scene.shapes:
        rgb = tuple(int(np.clip(c + rng.uniform(-COLOR_JITTER, COLOR_JITTER), 0, 255)) for c in COLORS[shape.color])
        kind, xy = _outline(shape, side * scale, rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
        getattr(draw, kind)(xy, fill=rgb)
    if scale > 1:
        img = img.resize((side, side), Image.Resampling.LANCZOS)
    if rng.random() < JPEG_P:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(*JPEG_QUALITY))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def render_seed(seed: int) -> tuple[np.ndarray, str]:
    """One labelled example: seed -> ((H,W,3) uint8 RGB at its own side, caption)."""
    rng = random.Random(seed)
    scene = sample_scene(rng)
    return render(scene, rng), scene.caption


def to_png(pixels: np.ndarray, path: str) -> None:
    Image.fromarray(pixels).save(path)
