"""The THIRD renderer, for evaluation only: signed-distance fields in pure numpy, written apart from both the
training renderer (graphs/demo/render.py, Pillow) and the second one (graphs/demo/heldout_render.py, supersampled
coverage). It shares only the caption words of the grammar (graphs/demo/scenes.py); everything else is its own:
    placements   its own sampler (SINGLE_*, PAIR_*, COUNT_*): anchors, spreads and radii inside the grammar's
                 size classes and regions, so every caption stays decidable
    rasterizer   per pixel a signed distance to the shape (circle: distance to the centre; square and triangle: the
                 largest of the edge-line distances, exact inside and on the edges), antialiased analytically by
                 clipping 0.5 - distance / pixel to [0, 1]; outlines are the band |d + w/2| <= w/2 inside the edge
    styles       filled, outlined (2-4 model pixels), or filled with a darker rim
    palette      PALETTE, its own shade of each color name
    sides        SIDES, none of which the second renderer uses
    backgrounds  vignette, plasma (sums of sines), linen (cross-hatched lines), split (two tones along a soft
                 line), each with an optional uniform grain; all muted
Seeds start at SEED_START, past every other range. A test checks that this module imports neither Pillow nor the
other renderers.
"""

from __future__ import annotations

import math
import random

import numpy as np

from graphs.demo.scenes import COLORS, COUNT_WORDS, SHAPES

SIDES = (44, 60, 88, 136, 176, 240, 360, 480, 720)
SEED_START = 3_000_000_000  # past the training, in-distribution and second-renderer ranges
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (222, 62, 58),
    "green": (58, 168, 88),
    "blue": (58, 104, 224),
    "yellow": (236, 196, 52),
    "purple": (132, 66, 186),
}
assert set(PALETTE) == set(COLORS)
SINGLE_SMALL, SINGLE_LARGE, SINGLE_REACH, SINGLE_SPREAD = (0.125, 0.16), (0.235, 0.275), (0.2, 0.27), 0.06
PAIR_RADIUS, PAIR_ALONG, PAIR_SPREAD = (0.14, 0.175), (0.23, 0.29), 0.06
COUNT_RADIUS, COUNT_GAP = (0.13, 0.165), 0.07
SIDE_REGIONS = {"on the left": (-1, 0), "on the right": (1, 0), "at the top": (0, -1), "at the bottom": (0, 1)}


def _place(rng: random.Random):
    """-> (caption, [(kind, color, cx, cy, radius)]) in fractions of the side."""
    layout = rng.random()
    if layout < 0.4:
        kind, color = rng.choice(SHAPES), rng.choice(sorted(PALETTE))
        size = rng.choice(("small", "large"))
        r = rng.uniform(*(SINGLE_SMALL if size == "small" else SINGLE_LARGE))
        region = rng.choice(sorted(SIDE_REGIONS) + ["in the center"])
        if region == "in the center":
            cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04)
        else:
            (ax, ay), reach = SIDE_REGIONS[region], min(rng.uniform(*SINGLE_REACH), 0.49 - r)
            off = rng.uniform(-SINGLE_SPREAD, SINGLE_SPREAD)
            cx, cy = 0.5 + ax * reach + ay * off, 0.5 + ay * reach + ax * off
        return f"a {size} {color} {kind} {region}", [(kind, color, cx, cy, r)]
    if layout < 0.8:
        horizontal = rng.random() < 0.5
        words = ("on the left", "on the right") if horizontal else ("at the top", "at the bottom")
        looks = rng.sample([(k, c) for k in SHAPES for c in sorted(PALETTE)], 2)
        shapes, parts = [], []
        for sign, word, (kind, color) in zip((-1, 1), words, looks):
            along, across = 0.5 + sign * rng.uniform(*PAIR_ALONG), 0.5 + rng.uniform(-PAIR_SPREAD, PAIR_SPREAD)
            cx, cy = (along, across) if horizontal else (across, along)
            shapes.append((kind, color, cx, cy, rng.uniform(*PAIR_RADIUS)))
            parts.append(f"a {color} {kind} {word}")
        return " and ".join(parts), shapes
    n = rng.choice(sorted(COUNT_WORDS))
    kind, color = rng.choice(SHAPES), rng.choice(sorted(PALETTE))
    shapes = []
    while len(shapes) < n:
        r = rng.uniform(*COUNT_RADIUS)
        cx, cy = rng.uniform(r + 0.03, 0.97 - r), rng.uniform(r + 0.03, 0.97 - r)
        if all(math.hypot(cx - x, cy - y) > r + q + COUNT_GAP for _, _, x, y, q in shapes):
            shapes.append((kind, color, cx, cy, r))
        elif rng.random() < 0.01:  # boxed in: start the layout over
            shapes = []
    return f"{COUNT_WORDS[n]} {color} {kind}s", shapes


def signed_distance(kind: str, cx: float, cy: float, r: float, angle: float, x: np.ndarray, y: np.ndarray):
    """Signed distance (negative inside) from points (x, y) to the shape, in fractions of the side."""
    if kind == "circle":
        return np.hypot(x - cx, y - cy) - r
    # a regular polygon as the intersection of half-planes: distance along each outward edge normal minus the
    # inradius (square: inradius r, normals every 90 degrees; triangle apex up: inradius r/2, base normal down)
    normals = [angle + k * 90 for k in range(4)] if kind == "square" else [angle + 270 + k * 120 for k in range(3)]
    inradius = r if kind == "square" else r / 2
    dist = [(x - cx) * math.cos(math.radians(t)) - (y - cy) * math.sin(math.radians(t)) for t in normals]
    return np.max(np.stack(dist), axis=0) - inradius


def _background(rng: random.Random, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    kind = rng.choice(("vignette", "plasma", "linen", "split"))
    if kind == "vignette":
        inner, outer = rng.uniform(170, 250), rng.uniform(60, 160)
        gray = outer + (inner - outer) * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) / rng.uniform(0.08, 0.3))
    elif kind == "plasma":
        gray = np.full_like(x, rng.uniform(90, 200))
        for _ in range(3):
            fx, fy, ph = rng.uniform(-9, 9), rng.uniform(-9, 9), rng.uniform(0, 2 * math.pi)
            gray = gray + rng.uniform(5, 15) * np.sin(fx * x + fy * y + ph)
    elif kind == "linen":
        period, amp = rng.uniform(0.02, 0.06), rng.uniform(6, 16)
        gray = rng.uniform(150, 235) - amp * ((np.abs(np.sin(math.pi * x / period)) < 0.2)
                                              | (np.abs(np.sin(math.pi * y / period)) < 0.2))
    else:
        a, b, t = rng.uniform(50, 230), rng.uniform(50, 230), rng.uniform(0, 2 * math.pi)
        line = (x - 0.5) * math.cos(t) + (y - 0.5) * math.sin(t) - rng.uniform(-0.2, 0.2)
        gray = a + (b - a) / (1 + np.exp(-line / 0.03))
    cast = np.array([rng.uniform(-10, 10) for _ in range(3)])
    img = gray[:, :, None] + cast
    if rng.random() < 0.3:
        img = img + np.random.default_rng(rng.getrandbits(63)).uniform(-10, 10, img.shape)
    return img


def render_sdf_seed(seed: int) -> tuple[np.ndarray, str]:
    """seed -> ((H,W,3) uint8 RGB at one of SIDES, caption)."""
    rng = random.Random(seed)
    caption, shapes = _place(rng)
    side = rng.choice(SIDES)
    y, x = (np.mgrid[0:side, 0:side] + 0.5) / side
    img = _background(rng, x, y)
    pixel = 1.0 / side
    for kind, color, cx, cy, r in shapes:
        d = signed_distance(kind, cx, cy, r, rng.uniform(-10, 10), x, y)
        rgb = np.array(PALETTE[color], float) * rng.uniform(0.85, 1.08) + [rng.uniform(-10, 10) for _ in range(3)]
        style = rng.random()
        if style < 0.3:  # outline: a band of width w just inside the edge
            w = rng.uniform(2.0, 4.0) / 64
            d = np.abs(d + w / 2) - w / 2
        cover = np.clip(0.5 - d / pixel, 0, 1)[:, :, None]
        img = img * (1 - cover) + rgb * cover
        if 0.3 <= style < 0.45:  # a darker rim over the filled shape
            w = rng.uniform(1.0, 2.0) / 64
            rim = np.clip(0.5 - (np.abs(d + w / 2) - w / 2) / pixel, 0, 1)[:, :, None]
            img = img * (1 - rim) + rgb * 0.6 * rim
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), caption


def sdf_seeds(n: int) -> list[int]:
    return list(range(SEED_START, SEED_START + n))
