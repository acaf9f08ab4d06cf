"""The EVALUATION renderer: a second, independent way to draw a scene, never used in training.

It shares only the scene grammar (graphs/demo/scenes.py: what is where, and the caption) with the training
renderer (graphs/demo/render.py, Pillow's ImageDraw). Everything about the pixels is its own:
    rasterizer   pure numpy: a pixel's coverage is the fraction of its SUBSAMPLES x SUBSAMPLES sample points inside
                 the shape, by a distance test (circle) or edge half-plane tests (square, triangle), so edges are
                 antialiased by supersampling, not by a resize filter
    sides        HELDOUT_SIDES, none of the training sides (the processor resizes them to 64 px)
    palette      its own RGB per color name (PALETTE), a different shade of the same named color
    backgrounds  radial gradients, diagonal gradients, smooth value noise ("paper"), and near-white with sparse dark
                 specks: kinds the training renderer never draws
    rotation     its own angle range, and no JPEG
Seeds come from their own range (EVAL_SEED_START), so not even a scene layout repeats a training image.
"""

from __future__ import annotations

import math
import random

import numpy as np

from graphs.demo.scenes import Scene, Shape, sample_scene

HELDOUT_SIDES = (72, 80, 112, 200, 256)
SUBSAMPLES = 4
EVAL_SEED_START = 2_000_000_000  # past the training range and the in-distribution held-out range
PALETTE: dict[str, tuple[int, int, int]] = {  # other shades of the grammar's colors
    "red": (205, 25, 55),
    "green": (25, 160, 75),
    "blue": (35, 70, 210),
    "yellow": (245, 200, 30),
    "purple": (140, 45, 190),
}
BACKGROUNDS = ("radial", "diagonal", "paper", "specks")


def _background(rng: random.Random, side: int) -> np.ndarray:
    """(H,W,3) float64 in [0,255]."""
    y, x = (np.mgrid[0:side, 0:side] + 0.5) / side
    kind = rng.choice(BACKGROUNDS)
    if kind == "radial":
        a, b = rng.uniform(60, 240), rng.uniform(60, 240)
        cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
        gray = a + (b - a) * np.clip(np.hypot(x - cx, y - cy) / 0.8, 0, 1)
    elif kind == "diagonal":
        a, b = rng.uniform(50, 230), rng.uniform(50, 230)
        gray = a + (b - a) * (x + y) / 2
    elif kind == "paper":  # bilinear value noise on a coarse grid: smooth blotches
        n = rng.randint(3, 6)
        grid = np.random.default_rng(rng.getrandbits(63)).uniform(-1, 1, (n + 1, n + 1))
        gx, gy = x * n, y * n
        i, j = np.minimum(gx.astype(int), n - 1), np.minimum(gy.astype(int), n - 1)
        fx, fy = gx - i, gy - j
        v = (grid[j, i] * (1 - fx) * (1 - fy) + grid[j, i + 1] * fx * (1 - fy)
             + grid[j + 1, i] * (1 - fx) * fy + grid[j + 1, i + 1] * fx * fy)
        gray = rng.uniform(150, 230) + rng.uniform(10, 25) * v
    else:  # specks: near-white paper with sparse dark dots
        gray = np.full((side, side), rng.uniform(225, 250))
        dots = np.random.default_rng(rng.getrandbits(63)).random((side, side)) < 0.01
        gray = np.where(dots, gray - 90, gray)
    warm = rng.uniform(-8, 8)
    return np.stack([gray + warm, gray, gray - warm], axis=-1)


def _inside_polygon(px: np.ndarray, py: np.ndarray, corners: list[tuple[float, float]]) -> np.ndarray:
    """Half-plane tests: a point is inside a convex polygon when it is on the same side of every edge."""
    signs = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        signs.append((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0) >= 0)
    inside_ccw = np.logical_and.reduce(signs)
    inside_cw = np.logical_and.reduce([~s for s in signs])
    return inside_ccw | inside_cw


def coverage(shape: Shape, side: int, angle_deg: float) -> np.ndarray:
    """(H,W) float64 in [0,1]: the fraction of each pixel's sample points inside the shape."""
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES
    sy, sx = np.meshgrid(offsets, offsets, indexing="ij")
    py = (np.arange(side)[:, None, None, None] + sy[None, None]) / side  # (H,1,S,S) -> broadcast with px
    px = (np.arange(side)[None, :, None, None] + sx[None, None]) / side  # (1,W,S,S)
    py, px = np.broadcast_arrays(py, px)
    if shape.kind == "circle":
        inside = (px - shape.cx) ** 2 + (py - shape.cy) ** 2 <= shape.radius ** 2
    else:
        corners = (45, 135, 225, 315) if shape.kind == "square" else (90, 210, 330)
        reach = shape.radius * (math.sqrt(2) if shape.kind == "square" else 1.0)
        pts = [(shape.cx + reach * math.cos(math.radians(a + angle_deg)),
                shape.cy - reach * math.sin(math.radians(a + angle_deg))) for a in corners]
        inside = _inside_polygon(px, py, pts)
    return inside.mean(axis=(2, 3))


def render(scene: Scene, rng: random.Random) -> np.ndarray:
    """scene -> (H,W,3) uint8 RGB at one of HELDOUT_SIDES."""
    side = rng.choice(HELDOUT_SIDES)
    img = _background(rng, side)
    for shape in scene.shapes:
        color = np.array(PALETTE[shape.color], np.float64) + [rng.uniform(-12, 12) for _ in range(3)]
        alpha = coverage(shape, side, rng.uniform(-8, 8))[:, :, None]
        img = img * (1 - alpha) + color * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_eval_seed(seed: int) -> tuple[np.ndarray, str]:
    """seed -> ((H,W,3) uint8, caption) from this renderer."""
    rng = random.Random(seed)
    scene = sample_scene(rng)
    return render(scene, rng), scene.caption


def eval_seeds(n: int) -> list[int]:
    return list(range(EVAL_SEED_START, EVAL_SEED_START + n))
