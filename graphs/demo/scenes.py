"""Scenes and their captions: a tiny grammar whose every sentence is decidable from the pixels.

A scene is a list of shapes placed by its layout; the layout fixes the caption's sentence form:
    single  "a large red circle on the left"               one shape; size word + region word
    pair    "a red circle on the left and a blue square on the right"   (or "at the top ... at the bottom");
            the two shapes always differ, since two alike are a count
    count   "three green triangles"                         2 or 3 identical shapes anywhere, apart

Why these rules make captions unambiguous: a region is a jittered centre well inside its third of the canvas, the
two sizes never overlap in radius, colors are saturated and far apart while backgrounds are muted grays, and shapes
in a pair or count never touch. Everything is drawn from one `random.Random(seed)`, so a seed is an image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
}
SHAPES = ("circle", "square", "triangle")
# Radii as fractions of the canvas side. On the demo's 48 px canvas with 8 px patches, shapes under ~12 px across
# left circle/square/triangle confusable for a small ViT (74% exact match after training); these sizes keep even a
# small shape over 2x2 patches.
SIZES: dict[str, tuple[float, float]] = {  # the ranges never meet
    "small": (0.13, 0.16),
    "large": (0.24, 0.27),
}
MEDIUM = (0.15, 0.18)  # pair and count shapes: no size word, so one range that fits two or three apart
REGIONS: dict[str, tuple[float, float]] = {  # centre of a single shape, as fractions (x, y)
    "on the left": (0.25, 0.5),
    "on the right": (0.75, 0.5),
    "at the top": (0.5, 0.25),
    "at the bottom": (0.5, 0.75),
    "in the center": (0.5, 0.5),
}
PAIR_AXES = {  # (first region, second region) of a pair: the caption names the left (or top) shape first
    "horizontal": ("on the left", "on the right"),
    "vertical": ("at the top", "at the bottom"),
}
COUNT_WORDS = {2: "two", 3: "three"}
LAYOUT_WEIGHTS = {"single": 0.4, "pair": 0.4, "count": 0.2}
# A count layout whose earlier shapes box in the next one starts over after this many misses, so sampling always
# ends. The bound sits just above the worst case of the seeds the shipped weights were trained and evaluated on
# (1.66M misses, a few seconds), which keeps that data identical; a lower bound means retraining.
MAX_PLACEMENT_MISSES = 2_000_000
JITTER = 0.05  # centre jitter, fraction of the side: small enough that a region stays inside its third


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # one of COLORS
    cx: float  # centre, fractions of the side
    cy: float
    radius: float  # circumradius for the triangle, half side for the square; fraction of the side


@dataclass(frozen=True)
class Scene:
    caption: str
    shapes: tuple[Shape, ...]


def _jittered(rng: random.Random, x: float, y: float) -> tuple[float, float]:
    return x + rng.uniform(-JITTER, JITTER), y + rng.uniform(-JITTER, JITTER)


def _single(rng: random.Random) -> Scene:
    kind, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    size, region = rng.choice(list(SIZES)), rng.choice(list(REGIONS))
    radius = rng.uniform(*SIZES[size])
    if size == "large" and region != "in the center":  # a large shape near the edge: pull it in so it stays whole
        x, y = REGIONS[region]
        x, y = 0.5 + (x - 0.5) * 0.8, 0.5 + (y - 0.5) * 0.8
        cx, cy = _jittered(rng, x, y)
    else:
        cx, cy = _jittered(rng, *REGIONS[region])
    return Scene(f"a {size} {color} {kind} {region}", (Shape(kind, color, cx, cy, radius),))


def _pair(rng: random.Random) -> Scene:
    first, second = PAIR_AXES[rng.choice(list(PAIR_AXES))]
    looks = rng.sample([(k, c) for k in SHAPES for c in COLORS], 2)  # two alike would read as a count ("two ...")
    shapes, words = [], []
    for region, (kind, color) in zip((first, second), looks):
        cx, cy = _jittered(rng, *REGIONS[region])
        shapes.append(Shape(kind, color, cx, cy, rng.uniform(*MEDIUM)))
        words.append(f"a {color} {kind} {region}")
    return Scene(" and ".join(words), tuple(shapes))


def _count(rng: random.Random) -> Scene:
    n = rng.choice(list(COUNT_WORDS))
    kind, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    shapes: list[Shape] = []
    misses = 0
    while len(shapes) < n:  # rejection sampling: centres far enough apart that shapes never touch
        r = rng.uniform(*MEDIUM)
        cx, cy = rng.uniform(r + 0.03, 1 - r - 0.03), rng.uniform(r + 0.03, 1 - r - 0.03)
        if all((cx - s.cx) ** 2 + (cy - s.cy) ** 2 > (r + s.radius + 0.06) ** 2 for s in shapes):
            shapes.append(Shape(kind, color, cx, cy, r))
            misses = 0
        elif (misses := misses + 1) >= MAX_PLACEMENT_MISSES:  # boxed in by earlier shapes: place all anew
            shapes, misses = [], 0
    return Scene(f"{COUNT_WORDS[n]} {color} {kind}s", tuple(shapes))


LAYOUTS = {"single": _single, "pair": _pair, "count": _count}


def sample_scene(rng: random.Random) -> Scene:
    layout = rng.choices(list(LAYOUT_WEIGHTS), weights=list(LAYOUT_WEIGHTS.values()))[0]
    return LAYOUTS[layout](rng)


def all_captions() -> list[str]:
    """Every sentence the grammar can produce: the tokenizer corpus, and the set a caption must belong to."""
    out = [f"a {s} {c} {k} {r}" for s in SIZES for c in COLORS for k in SHAPES for r in REGIONS]
    for first, second in PAIR_AXES.values():
        out += [f"a {c1} {k1} {first} and a {c2} {k2} {second}"
                for c1 in COLORS for k1 in SHAPES for c2 in COLORS for k2 in SHAPES if (c1, k1) != (c2, k2)]
    out += [f"{w} {c} {k}s" for w in COUNT_WORDS.values() for c in COLORS for k in SHAPES]
    return out


# The TRAINING scenes (graphs/demo/render.py) spread wider than `sample_scene`'s anchors: a single shape anywhere in
# its region's wedge, sizes over wider (still disjoint) ranges, pairs off-axis. Still decidable: a side region's
# centre is at least WIDE_SIDE_MIN from the canvas centre along its axis and at most WIDE_SIDE_SLOPE times that
# across it; "in the center" stays within WIDE_CENTER of the centre; small radii never reach large ones. The
# evaluation renderers keep their own placements (sample_scene, and graphs/demo/sdf_render.py's), a subset.
WIDE_SIZES: dict[str, tuple[float, float]] = {"small": (0.11, 0.17), "large": (0.23, 0.29)}
WIDE_MEDIUM = (0.13, 0.185)
WIDE_SIDE_MIN, WIDE_SIDE_SLOPE, WIDE_CENTER = 0.16, 0.45, 0.06
_AXES = {"on the left": (-1, 0), "on the right": (1, 0), "at the top": (0, -1), "at the bottom": (0, 1)}


def _wide_single(rng: random.Random) -> Scene:
    kind, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    size, region = rng.choice(list(WIDE_SIZES)), rng.choice(list(REGIONS))
    r = rng.uniform(*WIDE_SIZES[size])
    if region == "in the center":
        cx, cy = 0.5 + rng.uniform(-WIDE_CENTER, WIDE_CENTER), 0.5 + rng.uniform(-WIDE_CENTER, WIDE_CENTER)
    else:
        ax, ay = _AXES[region]
        along = rng.uniform(WIDE_SIDE_MIN, max(WIDE_SIDE_MIN, 0.5 - r - 0.01))  # whole, or nearly, on the canvas
        across = rng.uniform(-1, 1) * min(WIDE_SIDE_SLOPE * along, 0.5 - r - 0.01)
        cx, cy = 0.5 + ax * along + ay * across, 0.5 + ay * along + ax * across
    return Scene(f"a {size} {color} {kind} {region}", (Shape(kind, color, cx, cy, r),))


def _pair_looks(rng: random.Random, same_color: float | None) -> list[tuple[str, str]]:
    """Two different (kind, color) looks: uniformly (same_color None, the grammar's draw), or one color for both
    with probability same_color and two colors otherwise."""
    if same_color is None:
        return rng.sample([(k, c) for k in SHAPES for c in COLORS], 2)
    if rng.random() < same_color:
        color = rng.choice(list(COLORS))
        return [(k, color) for k in rng.sample(SHAPES, 2)]
    return [(rng.choice(SHAPES), c) for c in rng.sample(list(COLORS), 2)]


def _wide_pair(rng: random.Random, same_color: float | None = None) -> Scene:
    first, second = PAIR_AXES[rng.choice(list(PAIR_AXES))]
    looks = _pair_looks(rng, same_color)
    horizontal = first == "on the left"
    while True:  # the pair's axis must dominate: along-axis distance > 2x the cross-axis one, and no touching
        r1, r2 = rng.uniform(*WIDE_MEDIUM), rng.uniform(*WIDE_MEDIUM)
        a1, a2 = rng.uniform(r1 + 0.02, 0.42), rng.uniform(0.58, 1 - r2 - 0.02)
        c1, c2 = rng.uniform(r1 + 0.02, 1 - r1 - 0.02), rng.uniform(r2 + 0.02, 1 - r2 - 0.02)
        if a2 - a1 > 2 * abs(c2 - c1) and (a2 - a1) ** 2 + (c2 - c1) ** 2 > (r1 + r2 + 0.05) ** 2:
            break
    shapes, words = [], []
    for (a, c, r), region, (kind, color) in zip(((a1, c1, r1), (a2, c2, r2)), (first, second), looks):
        cx, cy = (a, c) if horizontal else (c, a)
        shapes.append(Shape(kind, color, cx, cy, r))
        words.append(f"a {color} {kind} {region}")
    return Scene(" and ".join(words), tuple(shapes))


def _wide_count(rng: random.Random) -> Scene:
    n = rng.choice(list(COUNT_WORDS))
    kind, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    shapes: list[Shape] = []
    while len(shapes) < n:
        shapes, tries = [], 0
        while len(shapes) < n and tries < 200:  # a boxed-in layout starts over
            tries += 1
            r = rng.uniform(WIDE_MEDIUM[0], 0.17)
            cx, cy = rng.uniform(r + 0.02, 1 - r - 0.02), rng.uniform(r + 0.02, 1 - r - 0.02)
            if all((cx - s.cx) ** 2 + (cy - s.cy) ** 2 > (r + s.radius + 0.05) ** 2 for s in shapes):
                shapes.append(Shape(kind, color, cx, cy, r))
    return Scene(f"{COUNT_WORDS[n]} {color} {kind}s", tuple(shapes))


WIDE_LAYOUTS = {"single": _wide_single, "pair": _wide_pair, "count": _wide_count}


@dataclass(frozen=True)
class Mix:
    """How often the training renderer draws each layout, how often a pair shares one color (None: the grammar's
    uniform draw of two different looks, 1 pair in 7 one-colored), and how often it outlines a shape rather than
    filling it."""
    layouts: dict[str, float]
    pair_same_color: float | None
    outlined: float = 0.25


# The grammar's own mix: what the in-distribution evaluation draws (the same images as before TRAINING_MIX).
NATURAL_MIX = Mix(LAYOUT_WEIGHTS, None)
# What training draws: more pairs, and pairs of one color far more often. 21 of the 22 in-distribution misses of
# the 4400-step model were pairs, half of them one-colored (a purple triangle and a purple square read as "two
# purple squares"): count scenes, always one color and one kind, taught "same color, same kind"; one-colored pairs
# of two kinds were 6% of the data to unteach it.
TRAINING_MIX = Mix({"single": 0.33, "pair": 0.42, "count": 0.25}, 0.4)


def sample_training_scene(rng: random.Random, mix: Mix = NATURAL_MIX) -> Scene:
    layout = rng.choices(list(mix.layouts), weights=list(mix.layouts.values()))[0]
    if layout == "pair":
        return _wide_pair(rng, mix.pair_same_color)
    return WIDE_LAYOUTS[layout](rng)
