"""The "anyres" plan (LLaVA-NeXT, LLaVA-OneVision): which views an image is encoded as, and how their features become
the rows that replace the image's placeholder in the prompt. Pure (numpy, pydantic), exactly as transformers 5.23 does
it in its image processors (`image_processing_*llava_next.py`, `*llava_onevision.py`), processors
(`processing_llava_next.py`, `processing_llava_onevision.py`) and models (`pack_image_features`).

What HF does to one image of (height, width) pixels, vision tower of side S (`view_size`) and patch p:

1. Best resolution (`select_best_resolution`): over the (h, w) grid pinpoints, the one that keeps most of the image's
   pixels once it is scaled to fit (`int(w * scale) * int(h * scale)`, capped at h*w), ties broken by the least
   wasted canvas; the first pinpoint wins a full tie. Its (h // S) x (w // S) is the tile grid.
2. Views: the base view (the whole image squashed to S x S) first, then the tiles in row-major order: the image
   resized to fit the best resolution keeping its aspect (`get_patch_output_size`: the side that limits takes the
   target, the other `min(ceil(side * scale), target)`), pasted centred on a black canvas (the odd pixel of padding
   goes right/bottom), cut into S x S squares.
3. Features: each view gives s*s rows (s = S // p, after the `vision_feature_select_strategy` drop of CLS, so the
   plan does not depend on it). The tiles' features form one (R*s, C*s) map; `unpad_image` crops the rows (or
   columns) that cover the canvas padding, computed in feature units from the original size -- not from the pixel
   padding, so a feature that straddles the image edge is kept. OneVision (`anyres_max_N`) then shrinks an unpadded
   (h, w) map larger than N tiles' worth (ratio = sqrt(h*w / (N*s*s)) > 1.1) with bilinear interpolation
   (align_corners False, no antialias) to (int(h // ratio), int(w // ratio)). An `image_newline` row ends each map
   row.
4. Prompt rows: base s*s rows, then map_rows * (map_cols + 1). The processors compute the same count from the sizes
   alone (`_get_number_of_features`); the tests check plan, processor and model agree.

OneVision with more than one image in a prompt (HF's `batch_num_images` != 1, which is what `apply_chat_template`
produces for a conversation with several images) does not tile: each image is padded to a square with the mean
colour, resized to S x S, and becomes s*s rows plus one newline row.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


# transformers' OPENAI_CLIP_MEAN / _STD: both anyres image processors' class defaults
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnyresPlanSpec(_Spec):
    """What a checkpoint's processor and model config say about anyres tiling (the planner needs nothing else)."""
    kind: Literal["anyres"] = "anyres"
    grid_pinpoints: tuple[tuple[int, int], ...] = Field(
        min_length=1, description="candidate canvases as (height, width) pixels, in the checkpoint's order (a full "
                                  "tie goes to the first); each side a multiple of view_size")
    view_size: int = Field(ge=1, description="S: the vision tower's square input side (config vision_config.image_size,"
                                             " the processor's crop/size)")
    patch_size: int = Field(ge=1, description="p: the vision tower's patch side; a view gives (S // p)^2 feature rows")
    anyres_max: int | None = Field(default=None, ge=1, description="OneVision's N of vision_aspect_ratio "
                                   "'anyres_max_N': a tile map over N tiles' worth of features is shrunk; None for NeXT")
    resample: Literal["bicubic", "bilinear", "nearest"] = Field(
        default="bicubic", description="the processor's resample filter, for every resize of the image")
    backend: Literal["pil", "torchvision"] = Field(
        default="pil", description="whose resize the reference processor runs: the PIL-backend class's (PIL) or the "
                                   "torchvision-backend class's (torch's antialiased uint8 kernel); the geometry is "
                                   "the same, pixels differ by a level or two")
    pad_color: tuple[int, int, int] = Field(
        default=(0, 0, 0), description="OneVision's square padding for images of a multi-image prompt: "
                                       "int(image_mean * 255) per channel, as its processor computes it")
    rescale_factor: float = Field(default=1 / 255, description="preprocessor rescale_factor (1.0 if not do_rescale);"
                                  " the views are uint8, the vision graph folds rescale and normalization in")
    image_mean: tuple[float, float, float] = Field(default=CLIP_MEAN, description="preprocessor image_mean (0 if "
                                                   "not do_normalize)")
    image_std: tuple[float, float, float] = Field(default=CLIP_STD, description="preprocessor image_std (1 if not "
                                                  "do_normalize)")

    @model_validator(mode="after")
    def _consistent(self) -> AnyresPlanSpec:
        if self.backend == "torchvision" and self.resample == "nearest":
            raise ValueError("resample 'nearest' with the torchvision backend is not reproduced (bicubic and "
                             "bilinear are)")
        # view_size need not divide by patch_size: SigLIP's 384 / 14 gives 27 patches a side, the last 6 px unseen
        if self.patch_size > self.view_size:
            raise ValueError(f"patch_size {self.patch_size} is larger than view_size {self.view_size}")
        for h, w in self.grid_pinpoints:
            if h < self.view_size or w < self.view_size or h % self.view_size or w % self.view_size:
                raise ValueError(f"grid pinpoint (height {h}, width {w}) is not a multiple of view_size "
                                 f"{self.view_size}")
        return self

    @property
    def side(self) -> int:
        """s: features per view side."""
        return self.view_size // self.patch_size

    @property
    def max_grid_tiles(self) -> int:
        """The most tiles any image can be cut into: the largest pinpoint's grid."""
        return max((h // self.view_size) * (w // self.view_size) for h, w in self.grid_pinpoints)

    @property
    def view_counts(self) -> tuple[int, ...]:
        """Every number of views an image's plan can have (base + a pinpoint's tiles; OneVision's single padded view
        too), ascending: what a vision graph's batch profiles must cover per image."""
        counts = {1 + (h // self.view_size) * (w // self.view_size) for h, w in self.grid_pinpoints}
        return tuple(sorted(counts | ({1} if self.anyres_max is not None else set())))


class AnyresPlan(_Spec):
    """One image's plan. Views: base first, then tiles row-major; rows: base s*s, then the map row by row, each
    followed by one newline row. `tiled` False: the single padded view of a OneVision multi-image prompt."""
    height: int
    width: int
    view_size: int
    side: int = Field(description="s: features per view side")
    resample: str
    backend: str
    pad_color: tuple[int, int, int]
    tiled: bool
    best_resolution: tuple[int, int] | None = Field(description="(height, width) canvas; None when not tiled")
    resized: tuple[int, int] | None = Field(description="(height, width) of the image inside the canvas")
    paste: tuple[int, int] | None = Field(description="(top, left) of the resized image on the canvas")
    grid: tuple[int, int] = Field(description="(rows, cols) of tiles; (0, 0) when not tiled")
    crop: tuple[int, int, int, int] | None = Field(
        description="(top, bottom, left, right) of the unpadded region of the (R*s, C*s) feature map, half-open")
    map_shape: tuple[int, int] | None = Field(description="(rows, cols) of the map after unpadding and any shrink")
    downsampled: bool = Field(description="OneVision shrank the map (bilinear) because it was over anyres_max")

    @property
    def num_views(self) -> int:
        return 1 + self.grid[0] * self.grid[1]

    @property
    def base_rows(self) -> int:
        return self.side * self.side

    @property
    def newline_rows(self) -> int:
        return self.map_shape[0] if self.tiled else 1

    @property
    def num_rows(self) -> int:
        """Feature rows (= image tokens in the prompt) this image becomes."""
        if not self.tiled:
            return self.base_rows + 1
        rows, cols = self.map_shape
        return self.base_rows + rows * (cols + 1)

    def tile_boxes(self) -> list[tuple[int, int]]:
        """(top, left) of each tile on the canvas, row-major (view i + 1 is tile i)."""
        s = self.view_size
        return [(r * s, c * s) for r in range(self.grid[0]) for c in range(self.grid[1])]


def select_best_resolution(height: int, width: int, pinpoints) -> tuple[int, int]:
    """HF's select_best_resolution, float for float: most effective pixels, then least waste, first on a tie."""
    best, best_effective, best_wasted = None, 0, float("inf")
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pw * ph - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (ph, pw), effective, wasted
    return best


def fit_inside(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """HF's get_patch_output_size: the image resized to fit `target` keeping its aspect -> (height, width)."""
    th, tw = target
    scale_w, scale_h = tw / width, th / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), th), tw
    return th, min(math.ceil(width * scale_h), tw)


def unpad_crop(height: int, width: int, map_h: int, map_w: int) -> tuple[int, int, int, int]:
    """HF's unpad_image on a (map_h, map_w) feature map of an image of (height, width) -> (top, bottom, left, right).
    The round(..., 7) is HF's: it keeps float noise (e.g. 23.999999997) from flooring a side one short."""
    if width / height > map_w / map_h:
        new_h = int(round(height * (map_w / width), 7))
        pad = (map_h - new_h) // 2
        return pad, map_h - pad, 0, map_w
    new_w = int(round(width * (map_h / height), 7))
    pad = (map_w - new_w) // 2
    return 0, map_h, pad, map_w - pad


def plan(spec: AnyresPlanSpec, height: int, width: int, *, images_in_prompt: int = 1,
         max_tiles: int | None = None) -> AnyresPlan:
    """The plan for an image of (height, width) pixels (after EXIF orientation). `images_in_prompt`: images in the
    whole conversation (OneVision tiles only a lone image; NeXT always tiles). `max_tiles`: refuse an image whose
    plan has more views (tiles + the base view). ValueError, with a message naming the number and the limit, for an image that cannot be
    planned."""
    if height < 1 or width < 1:
        raise ValueError(f"image is {width}x{height} pixels: both sides must be at least 1")
    if images_in_prompt < 1:
        raise ValueError(f"images_in_prompt is {images_in_prompt}: the image itself is in the prompt")
    common = dict(height=height, width=width, view_size=spec.view_size, side=spec.side, resample=spec.resample,
                  backend=spec.backend, pad_color=spec.pad_color)
    if spec.anyres_max is not None and images_in_prompt != 1:
        return AnyresPlan(**common, tiled=False, best_resolution=None, resized=None, paste=None, grid=(0, 0),
                          crop=None, map_shape=None, downsampled=False)

    best = select_best_resolution(height, width, spec.grid_pinpoints)
    grid = (best[0] // spec.view_size, best[1] // spec.view_size)
    views = 1 + grid[0] * grid[1]
    if max_tiles is not None and views > max_tiles:  # views, as the idefics3 plan counts them: the encoder's work
        raise ValueError(f"image {width}x{height} becomes {views} views ({grid[0]}x{grid[1]} tiles at "
                         f"{best[1]}x{best[0]} + 1 base); the limit max_tiles is {max_tiles}")
    resized = fit_inside(height, width, best)
    paste = ((best[0] - resized[0]) // 2, (best[1] - resized[1]) // 2)

    s = spec.side
    map_h, map_w = grid[0] * s, grid[1] * s
    crop = unpad_crop(height, width, map_h, map_w)
    rows, cols = crop[1] - crop[0], crop[3] - crop[2]
    if rows < 1 or cols < 1:
        raise ValueError(f"image {width}x{height} is too narrow for its {grid[0]}x{grid[1]} tile grid: its "
                         f"unpadded feature map would be {rows}x{cols}; the aspect ratio (long side / short side "
                         f"{max(height, width) / min(height, width):.0f}) is too extreme")
    downsampled = False
    if spec.anyres_max is not None:
        # OneVision's rule, float for float (pack_image_features and _get_unpadded_features agree on it)
        ratio = math.sqrt(rows * cols / (spec.anyres_max * s ** 2))
        if ratio > 1.1:
            rows, cols, downsampled = int(rows // ratio), int(cols // ratio), True
            if rows < 1 or cols < 1:
                raise ValueError(f"image {width}x{height}: its feature map shrinks to {rows}x{cols} under "
                                 f"anyres_max_{spec.anyres_max}; the aspect ratio is too extreme")
    return AnyresPlan(**common, tiled=True, best_resolution=best, resized=resized, paste=paste, grid=grid, crop=crop,
                      map_shape=(rows, cols), downsampled=downsampled)


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's upsample_bilinear2d indices and weights along one axis (align_corners=False, no antialias, size given),
    rounded as its CPU kernel rounds them: scale = float32(n_in / n_out); source x = scale * (i + 0.5) - 0.5 in double
    (the 0.5 literals are C++ doubles), stored as float32, clamped at 0; neighbours floor(x) and the next (clamped);
    float32 weights 1 - t and t, t = x - floor(x). Computing x in float32 instead moves a weight by up to 1e-6."""
    scale = np.float32(n_in) / np.float32(n_out)
    x = np.maximum((np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(np.float32), np.float32(0))
    lo = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    t = np.clip(x - lo.astype(np.float32), 0, 1).astype(np.float32)
    return lo, hi, (np.float32(1) - t).astype(np.float64), t.astype(np.float64)


def bilinear(fmap: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(H, W, D) -> (rows, cols, D) as F.interpolate(mode="bilinear") does on (1, D, H, W): torch's weights, the sums
    in float64, then rounded to fmap's dtype (torch sums in float32: the two differ by an ulp or two)."""
    lo_h, hi_h, h0, h1 = _bilinear_axis(fmap.shape[0], rows)
    lo_w, hi_w, w0, w1 = _bilinear_axis(fmap.shape[1], cols)
    f = fmap.astype(np.float64)
    w0, w1 = w0[None, :, None], w1[None, :, None]
    top = f[lo_h][:, lo_w] * w0 + f[lo_h][:, hi_w] * w1
    bottom = f[hi_h][:, lo_w] * w0 + f[hi_h][:, hi_w] * w1
    return (top * h0[:, None, None] + bottom * h1[:, None, None]).astype(fmap.dtype)


def assemble(plan: AnyresPlan, view_features: np.ndarray, newline: np.ndarray) -> np.ndarray:
    """(views, s*s, D) features of the plan's views (base first, tiles row-major) and the model's (D,) image_newline
    -> (plan.num_rows, D) rows for the prompt, as pack_image_features builds them."""
    s, d = plan.side, view_features.shape[-1]
    if view_features.shape != (plan.num_views, s * s, d) or newline.shape != (d,):
        raise ValueError(f"features {view_features.shape} and newline {newline.shape} do not fit the plan: expected "
                         f"({plan.num_views}, {s * s}, D) and (D,)")
    newline = newline.astype(view_features.dtype)
    base = view_features[0]
    if not plan.tiled:
        return np.concatenate([base, newline[None]], axis=0)
    r, c = plan.grid
    # tile (i, j)'s feature (y, x) sits at map row i*s + y, column j*s + x
    fmap = view_features[1:].reshape(r, c, s, s, d).transpose(0, 2, 1, 3, 4).reshape(r * s, c * s, d)
    top, bottom, left, right = plan.crop
    fmap = fmap[top:bottom, left:right]
    if plan.downsampled:
        fmap = bilinear(fmap, *plan.map_shape)
    rows, cols = plan.map_shape
    with_newline = np.concatenate([fmap, np.broadcast_to(newline, (rows, 1, d))], axis=1)
    return np.concatenate([base, with_newline.reshape(rows * (cols + 1), d)], axis=0)
