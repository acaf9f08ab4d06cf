"""The TRAINING renderer (Pillow's ImageDraw): one scene drawn in many looks, so the captioner learns shapes and
colors, not one renderer's pixels.

Per image, all from the scene's seeded generator (so `render_seed(seed)` is a pure function of the seed):
    scene        scenes.sample_training_scene: shapes anywhere in their region, sizes over wide disjoint ranges
    canvas       a side from 32 to 1024 px, log-uniform (rarer above 320, where drawing costs most); the model sees
                 it after the processor's resize to 64 px, so geometry is in fractions of the side
    antialias    below 128 px, drawn at SUPERSAMPLE x the side and downsampled (Lanczos) or drawn aliased
    background   solid (white, gray, a muted tint), gray + pixel noise, a gradient, a texture (stripes, checks,
                 grain) or "photo-like" (multi-octave smooth noise in muted colours, with soft blobs); unsaturated,
                 so no background reads as a palette color
    shapes       filled, or outlined thin (1.2-2.5 px at the model's 64 px) or thick (2.5-6 px); a shade of the
                 color's hue (HUES +- HUE_JITTER, varied saturation and value: never the pure primaries); squares
                 and triangles rotated up to MAX_ROTATION_DEG; the whole scene seen through a slight perspective
    after        a Gaussian blur (up to BLUR_MAX model pixels), sensor noise, JPEG at quality 20-90

`render_labelled_seed` also gives, per 8x8 patch of the model's 64 px image, which shape covers most of it: the
training's auxiliary per-patch loss (graphs/demo/train.py) that teaches the vision tower shapes fast.

The evaluation renderers (graphs/demo/heldout_render.py, graphs/demo/sdf_render.py) share only the scene grammar.
"""

from __future__ import annotations

import colorsys
import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from graphs.demo.scenes import COLORS, NATURAL_MIX, SHAPES, Mix, Scene, Shape, sample_training_scene

MODEL_SIDE, PATCH = 64, 8
GRID = MODEL_SIDE // PATCH
LOCAL_CLASSES = 5  # none, curved edge, straight edge, right-angle corner, sharp corner
# A patch's part in its scene's sentence: none, the single shape, a pair's first (left/top) or second shape, one of
# a count's alike shapes (`patch_roles`).
ROLE_CLASSES = 5
SIDE_RANGE, BIG_SIDE, BIG_P = (32, 1024), 320, 0.08
SUPERSAMPLE = 4
HUES = {"red": 0.0, "yellow": 52.0, "green": 135.0, "blue": 226.0, "purple": 282.0}  # degrees
# +- degrees around each hue: blue and purple, the closest pair, stay 30 degrees apart; green, far from all, widest
HUE_JITTER = {"red": 12.0, "yellow": 10.0, "green": 20.0, "blue": 13.0, "purple": 13.0}
MAX_ROTATION_DEG = 20.0
PERSPECTIVE = 0.05  # corner displacement, fraction of the side
THIN, THICK = (1.2, 2.5), (2.5, 6.0)  # outline widths in model pixels; how often: Mix.outlined
BLUR_P, BLUR_MAX = 0.3, 1.0
JPEG_P, JPEG_QUALITY = 0.4, (20, 90)
BACKGROUNDS = ("solid", "noise", "gradient", "texture", "photo")
# A shadow or a table edge: a long straight brightness step across any background, sharp or soft. Without them the
# captioner read such an edge (the third renderer's two-tone backgrounds) as a second shape.
EDGE_P, EDGE_STEP, EDGE_SOFTNESS = 0.3, (30.0, 110.0), (0.003, 0.06)  # step in gray levels, softness in sides
assert set(HUES) == set(COLORS)


def shade(rng: random.Random, color: str) -> tuple[int, int, int]:
    h = (HUES[color] + rng.uniform(-HUE_JITTER[color], HUE_JITTER[color])) % 360 / 360
    s = rng.uniform(0.55, 0.95)
    v = rng.uniform(0.8, 1.0) if color == "yellow" else rng.uniform(0.6, 0.95)  # dark yellow reads as olive
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))


def _smooth(rng: random.Random, side: int, cells: int) -> np.ndarray:
    """(side,side) smooth noise in [-1,1]: a random coarse grid upsampled bicubically."""
    grid = np.random.default_rng(rng.getrandbits(63)).uniform(0, 255, (cells, cells)).astype(np.uint8)
    up = np.asarray(Image.fromarray(grid).resize((side, side), Image.Resampling.BICUBIC), np.float32)
    return up / 127.5 - 1


def background(rng: random.Random, side: int) -> np.ndarray:
    """(H,W,3) float32 (clipped to [0,255] by the caller): one of BACKGROUNDS, unsaturated (chroma <= ~30), with
    probability EDGE_P crossed by a straight brightness step (`_edge`)."""
    img = _plain_background(rng, side)
    return img + _edge(rng, side)[:, :, None] if rng.random() < EDGE_P else img


def _edge(rng: random.Random, side: int) -> np.ndarray:
    """(side,side) a gray step across a line of any angle through any point of the canvas: lighter or darker on one
    side, over a ramp from a pixel to a sixteenth of the side wide."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    t, px, py = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
    dist = (x - px) * math.cos(t) + (y - py) * math.sin(t)
    step = rng.uniform(*EDGE_STEP) * rng.choice((-1, 1))
    return step / (1 + np.exp(-np.clip(dist / rng.uniform(*EDGE_SOFTNESS), -60, 60)))


def _plain_background(rng: random.Random, side: int) -> np.ndarray:
    kind = rng.choice(BACKGROUNDS)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    tint = np.array([rng.uniform(-12, 12) for _ in range(3)], np.float32)
    if kind == "solid":
        gray = np.full((side, side), rng.choice([rng.uniform(232, 255), rng.uniform(30, 230)]), np.float32)
    elif kind == "noise":
        std = rng.uniform(3.0, 22.0)
        gray = rng.uniform(50, 220) + np.random.default_rng(rng.getrandbits(63)).normal(0, std, (side, side))
    elif kind == "gradient":
        a, b, t = rng.uniform(30, 240), rng.uniform(30, 240), rng.uniform(0, 2 * math.pi)
        gray = a + (b - a) * np.clip(0.5 + (x - 0.5) * math.cos(t) + (y - 0.5) * math.sin(t), 0, 1)
    elif kind == "texture":
        base, amp, period = rng.uniform(70, 235), rng.uniform(5, 22), rng.uniform(0.04, 0.25)
        pick = rng.random()
        if pick < 0.4:
            t = rng.uniform(0, math.pi)
            wave = np.sin(2 * math.pi * (x * math.cos(t) + y * math.sin(t)) / period)
        elif pick < 0.7:
            wave = np.where(((x // period) + (y // period)) % 2 == 0, 1.0, -1.0)
        else:  # grain: smooth noise at a fine scale
            wave = _smooth(rng, side, max(4, int(1 / period) * 2))
        gray = base + amp * wave
    else:  # photo-like: smooth colour fields at two scales plus soft blobs, each channel its own, all muted
        base = rng.uniform(60, 210)
        chans = [base + rng.uniform(20, 45) * _smooth(rng, side, rng.randint(2, 4))
                 + rng.uniform(4, 14) * _smooth(rng, side, rng.randint(8, 20)) for _ in range(3)]
        img = np.stack(chans, -1)
        mean = img.mean(-1, keepdims=True)
        img = mean + (img - mean) * rng.uniform(0.2, 0.5)  # pull towards gray: a muted photo, never a palette color
        for _ in range(rng.randint(0, 3)):
            bx, by, br = rng.random(), rng.random(), rng.uniform(0.1, 0.4)
            blob = np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * br ** 2))
            img = img + rng.uniform(-40, 40) * blob[:, :, None]
        return img + tint
    return gray[:, :, None] + tint


def _perspective(rng: random.Random):
    """A slight projective map of the unit square (fractions -> fractions): corners moved up to PERSPECTIVE."""
    src = [(0, 0), (1, 0), (1, 1), (0, 1)]
    dst = [(u + rng.uniform(-PERSPECTIVE, PERSPECTIVE), v + rng.uniform(-PERSPECTIVE, PERSPECTIVE)) for u, v in src]
    rows, rhs = [], []
    for (u, v), (X, Y) in zip(src, dst):
        rows += [[u, v, 1, 0, 0, 0, -u * X, -v * X], [0, 0, 0, u, v, 1, -u * Y, -v * Y]]
        rhs += [X, Y]
    h = np.append(np.linalg.solve(np.array(rows, float), np.array(rhs, float)), 1.0).reshape(3, 3)

    def warp(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        p = np.c_[np.array(pts), np.ones(len(pts))] @ h.T
        return [(a / c, b / c) for a, b, c in p]
    return warp


def outline(shape: Shape, angle: float, inset: float = 0.0) -> list[tuple[float, float]]:
    """The shape's boundary as a polygon in fractions of the side (a circle as a 48-gon); `inset` moves every edge
    inwards by that distance (the inner edge of an outlined shape)."""
    if shape.kind == "circle":
        corners, reach, inner = [i * 7.5 for i in range(48)], shape.radius, shape.radius
    elif shape.kind == "square":  # corners at 45 + k*90 degrees on radius r*sqrt(2); r is also the inradius
        corners, reach, inner = [45 + angle, 135 + angle, 225 + angle, 315 + angle], shape.radius * math.sqrt(2), shape.radius
    else:  # triangle apex up: 90, 210, 330 degrees on r; inradius r/2
        corners, reach, inner = [90 + angle, 210 + angle, 330 + angle], shape.radius, shape.radius / 2
    reach *= max(0.0, 1 - inset / inner)
    return [(shape.cx + reach * math.cos(math.radians(a)), shape.cy - reach * math.sin(math.radians(a)))
            for a in corners]


def _pick_side(rng: random.Random) -> int:
    lo, hi = (BIG_SIDE, SIDE_RANGE[1]) if rng.random() < BIG_P else (SIDE_RANGE[0], BIG_SIDE)
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def render_labelled(scene: Scene, rng: random.Random, outlined: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scene -> ((H,W,3) uint8 RGB at a random side, (64,) patch labels: 0 background, i+1 shape i,
    (64,) local boundary labels (`_local_labels`)); each shape outlined with probability `outlined`."""
    side = _pick_side(rng)
    # antialiasing matters below 128 px, where the processor enlarges the image: tiny ones always smooth
    scale = SUPERSAMPLE if side < 64 or (side < 128 and rng.random() < 0.6) else 1
    canvas = side * scale
    bg = np.clip(background(rng, min(side, 192)), 0, 255).astype(np.uint8)  # 3x the model's side is detail enough
    img = Image.fromarray(bg).resize((canvas, canvas), Image.Resampling.BILINEAR)
    mask = Image.new("L", (MODEL_SIDE, MODEL_SIDE), 0)
    mdraw = ImageDraw.Draw(mask)
    warp = _perspective(rng)
    local = np.zeros(GRID * GRID, np.int64)
    for i, shape in enumerate(scene.shapes):
        rgb = shade(rng, shape.color)
        angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
        poly = warp(outline(shape, angle))
        layer = Image.new("L", (canvas, canvas), 0)  # coverage of this shape, composited in its color
        ImageDraw.Draw(layer).polygon([(u * canvas, v * canvas) for u, v in poly], fill=255)
        if rng.random() < outlined:  # an outline: the inner polygon, inset by the stroke width, cut out again
            width = rng.uniform(*(THIN if rng.random() < 0.5 else THICK)) / MODEL_SIDE
            hole = warp(outline(shape, angle, inset=width))
            ImageDraw.Draw(layer).polygon([(u * canvas, v * canvas) for u, v in hole], fill=0)
        img.paste(rgb, mask=layer)
        model_poly = [(u * MODEL_SIDE, v * MODEL_SIDE) for u, v in poly]
        mdraw.polygon(model_poly, fill=i + 1)  # the interior, either way
        local = np.maximum(local, _local_labels(shape.kind, model_poly))
    if scale > 1:
        img = img.resize((side, side), Image.Resampling.LANCZOS)
    if rng.random() < BLUR_P:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, BLUR_MAX) * side / MODEL_SIDE))
    if rng.random() < 0.2:  # sensor noise
        arr = np.asarray(img, np.float32)
        arr = arr + np.random.default_rng(rng.getrandbits(63)).normal(0, rng.uniform(2, 10), arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < JPEG_P:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(*JPEG_QUALITY))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(img, dtype=np.uint8), patch_labels(np.asarray(mask), len(scene.shapes)), local


def _local_labels(kind: str, poly: list[tuple[float, float]]) -> np.ndarray:
    """(64,) what of the shape's boundary each patch holds, decidable from that patch alone: LOCAL_NONE, a curved
    edge (circle), a straight edge, a right-angle corner (square) or a sharp corner (triangle). A dense, local
    signal that teaches the patch embedding edge and corner detectors before the tower can tell kinds apart."""
    layer = Image.new("L", (MODEL_SIDE, MODEL_SIDE), 0)
    ImageDraw.Draw(layer).polygon(poly, fill=1)
    frac = np.asarray(layer).reshape(GRID, PATCH, GRID, PATCH).mean(axis=(1, 3)).reshape(-1)
    out = np.where((frac > 0.06) & (frac < 0.94), 1 if kind == "circle" else 2, 0)
    if kind != "circle":
        for x, y in poly:
            if 0 <= x < MODEL_SIDE and 0 <= y < MODEL_SIDE:
                out[int(y) // PATCH * GRID + int(x) // PATCH] = 3 if kind == "square" else 4
    return out


def patch_labels(mask: np.ndarray, n_shapes: int) -> np.ndarray:
    """(64,64) shape-index mask -> (64,) per 8x8 patch (row-major, the tower's order): the shape covering most of
    the patch if it covers at least a quarter of it, else 0."""
    g = MODEL_SIDE // PATCH
    blocks = mask.reshape(g, PATCH, g, PATCH).transpose(0, 2, 1, 3).reshape(g * g, PATCH * PATCH)
    counts = np.stack([(blocks == i).sum(1) for i in range(n_shapes + 1)], 1)  # (64, n+1)
    counts[:, 0] = 0
    best = counts.argmax(1)
    return np.where(counts.max(1) >= PATCH * PATCH // 4, best, 0).astype(np.int64)


def patch_targets(scene: Scene, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patch labels -> (kind ids, color ids), 0 for background, 1 + index in SHAPES / COLORS for a shape."""
    kinds = np.array([0] + [1 + SHAPES.index(s.kind) for s in scene.shapes])
    colors = np.array([0] + [1 + list(COLORS).index(s.color) for s in scene.shapes])
    return kinds[labels], colors[labels]


def patch_roles(scene: Scene, labels: np.ndarray) -> np.ndarray:
    """Patch labels -> each patch's part in the caption's sentence (ROLE_CLASSES): 0 background, 1 a single shape,
    2 / 3 a pair's first / second shape, 4 one of a count. Deciding pair against count needs both shapes' kinds,
    and first against second both positions: the calls the caption's first words hang on, here taught at every
    patch of a shape instead of by one caption token."""
    if len(scene.shapes) == 1:
        roles = np.array([0, 1])
    elif " and " in scene.caption:
        roles = np.array([0, 2, 3])
    else:
        roles = np.array([0] + [4] * len(scene.shapes))
    return roles[labels]


def render_labelled_seed(seed: int, mix: Mix = NATURAL_MIX) -> tuple[np.ndarray, str, np.ndarray, np.ndarray,
                                                                     np.ndarray, np.ndarray]:
    """seed -> (pixels, caption, per-patch kind ids (64,), color ids (64,), local boundary ids (64,), role ids
    (64,)); scenes drawn with `mix` (training passes scenes.TRAINING_MIX)."""
    rng = random.Random(seed)
    scene = sample_training_scene(rng, mix)
    pixels, labels, local = render_labelled(scene, rng, mix.outlined)
    return (pixels, scene.caption, *patch_targets(scene, labels), local, patch_roles(scene, labels))


def render_seed(seed: int) -> tuple[np.ndarray, str]:
    """One labelled example: seed -> ((H,W,3) uint8 RGB at its own side, caption)."""
    pixels, caption, *_ = render_labelled_seed(seed)
    return pixels, caption


def to_png(pixels: np.ndarray, path: str) -> None:
    Image.fromarray(pixels).save(path)
