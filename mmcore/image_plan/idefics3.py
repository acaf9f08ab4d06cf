"""The Idefics3 / SmolVLM image plan: an image's size -> the views the vision graph encodes and the text that the
prompt's one `<image>` placeholder becomes, equal to transformers 5.23's `Idefics3ImageProcessor(Pil)` /
`SmolVLMImageProcessor(Pil)` (the same code under two names) and `Idefics3Processor` / `SmolVLMProcessor`.

What transformers does to one image (every resize is a PIL resize of uint8 pixels, LANCZOS by default):
1. `do_resize`: the longest edge becomes `size["longest_edge"]` -- up or down, so a 1x1 image is upscaled to a full
   grid -- the other edge `int(edge / aspect)`, rounded up to an even number, at least 1; then, should that exceed
   4096 (`MAX_IMAGE_SIZE`), the longest edge is capped at 4096.
2. `do_image_splitting`: both sides are resized to multiples of M = `max_image_size["longest_edge"]` (the long side
   `ceil(side / M) * M`, the other `ceil(int(long / aspect) / M) * M`). If that grid image is larger than M x M it is
   cut into rows x cols crops of M x M, row-major, and the grid image resized to M x M follows as the global view;
   otherwise the grid image (M x M) is the one view and rows = cols = 0. Without splitting, the image from step 1 is
   resized straight to M x M, rows = cols = 0.
3. Each view is rescaled and normalized; every view is M x M, so `pixel_attention_mask` is all ones for real views;
   the zero views that pad a batch to its longest image list are dropped by the model (it drops all-zero views).

The processor expands the placeholder to, for rows x cols crops (`image_seq_len` `<image>` tokens per view):

    <fake_token_around_image><row_1_col_1><image>*N ... <fake_token_around_image><row_1_col_C><image>*N \\n
    ...                                                                                   (one "\\n" per row)
    \\n<fake_token_around_image><global-img><image>*N<fake_token_around_image>

and, for rows = cols = 0, to `<fake_token_around_image><global-img><image>*N<fake_token_around_image>` alone.

The model's connector pixel-shuffles each view's (S/p)^2 patch rows by `scale_factor` into (S/p)^2 / scale^2 rows,
which must equal the processor's `image_seq_len`: the spec refuses a checkpoint where they differ.

`plan()` gives the pieces of that text with the `<image>` runs as feature slots, adjacent text merged: every piece
boundary is a special token (`<fake_token_around_image>`, `<image>`), so tokenizing each text piece on its own gives
the ids that tokenizing the whole expanded text does -- "\\n\\n" before the global view stays in one piece, as a
tokenizer may merge it into one token. The 1-based row/col tags are written as text, as transformers writes them
(a grid beyond the tokenizer's 6x6 tags still tokenizes, as text).

mmcore imports only numpy and pydantic: this module is pure arithmetic on sizes.
"""

from __future__ import annotations

import math
import operator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# transformers' MAX_IMAGE_SIZE: after the longest-edge resize, no side exceeds it ("4k resolution as absolute maximum")
MAX_IMAGE_SIDE = 4096


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Idefics3PlanSpec(_Spec):
    """What the plan reads from a checkpoint: preprocessor_config.json, processor_config.json, config.json."""
    kind: Literal["idefics3"] = "idefics3"
    do_resize: bool = Field(default=True, description="preprocessor do_resize: step 1, the longest-edge resize")
    longest_edge: int | None = Field(default=None, ge=1, description="preprocessor size.longest_edge (step 1)")
    max_image_size: int = Field(ge=1, description="M: preprocessor max_image_size.longest_edge, the crop side")
    do_image_splitting: bool = Field(default=True, description="preprocessor do_image_splitting")
    resample: Literal["lanczos", "bicubic", "bilinear", "nearest", "box", "hamming"] = Field(
        default="lanczos", description="preprocessor resample (PIL's filter; transformers' default LANCZOS = 1)")
    image_size: int = Field(ge=1, description="S: config vision_config.image_size, the encoder's input side")
    patch_size: int = Field(ge=1, description="p: config vision_config.patch_size")
    scale_factor: int = Field(ge=1, description="config scale_factor: the connector's pixel shuffle")
    image_seq_len: int = Field(ge=1, description="processor image_seq_len: <image> tokens written per view")
    rescale_factor: float = Field(default=1 / 255, description="preprocessor rescale_factor (1.0 if not do_rescale)")
    image_mean: tuple[float, float, float] = Field(default=(0.5, 0.5, 0.5),
                                                   description="preprocessor image_mean (0 if not do_normalize)")
    image_std: tuple[float, float, float] = Field(default=(0.5, 0.5, 0.5),
                                                  description="preprocessor image_std (1 if not do_normalize)")
    fake_image_token: str = "<fake_token_around_image>"
    image_token: str = "<image>"
    global_image_token: str = "<global-img>"

    @model_validator(mode="after")
    def _consistent(self) -> Idefics3PlanSpec:
        if self.do_resize and self.longest_edge is None:
            raise ValueError("size.longest_edge is required when do_resize is true")
        if self.max_image_size != self.image_size:
            # every view is M x M; the vision graph (and the model's position ids) are built for S x S
            raise ValueError(f"max_image_size.longest_edge {self.max_image_size} != vision_config.image_size "
                             f"{self.image_size}: the views would not be the encoder's input size")
        side = self.image_size // self.patch_size
        if side % self.scale_factor:
            raise ValueError(f"vision_config.image_size // patch_size = {side} patches a side is not divisible by "
                             f"scale_factor {self.scale_factor}: the connector's pixel shuffle cannot fold it")
        if self.image_seq_len != self.rows_per_view:
            raise ValueError(f"processor image_seq_len {self.image_seq_len} != the connector's rows per view "
                             f"(image_size // patch_size)^2 / scale_factor^2 = {self.rows_per_view}")
        return self

    @property
    def rows_per_view(self) -> int:
        """Feature rows the connector gives per view: ((S // p) / scale)^2."""
        return (self.image_size // self.patch_size // self.scale_factor) ** 2

    @property
    def max_views(self) -> int | None:
        """The most views any image can become (crops + global), or None when unbounded (no longest-edge resize):
        the vision graph's batch profile. After step 1 no side exceeds L, or L + 1 when L is odd (the other side is
        rounded up to even: a square image of odd L becomes L x (L + 1)), nor 4096; each side is then ceil(side / M)
        crops, reached by a square image."""
        if not self.do_image_splitting:
            return 1
        if not self.do_resize:
            return None
        longest = self.longest_edge + self.longest_edge % 2
        n = math.ceil(min(longest, MAX_IMAGE_SIDE) / self.max_image_size)
        return n * n + 1 if n > 1 else 1


class Text(_Spec):
    text: str


class Features(_Spec):
    view: int = Field(description="index into the plan's views")
    rows: int = Field(description="feature rows (the <image> tokens they replace)")


class View(_Spec):
    kind: Literal["crop", "global"]
    row: int = Field(description="1-based grid row of a crop; 0 for the global view")
    col: int = Field(description="1-based grid column of a crop; 0 for the global view")
    box: tuple[int, int, int, int] | None = Field(
        description="(left, top, right, bottom) of a crop in the grid image; None: the global view is the grid "
                    "image (or, without splitting, the resized image) resized to M x M")


class Idefics3Plan(_Spec):
    height: int
    width: int
    resample: str
    view_size: int = Field(description="M: every view is M x M")
    resized: tuple[int, int] = Field(description="(height, width) after step 1 (the input size if not do_resize)")
    grid: tuple[int, int] | None = Field(description="(height, width) of the grid image, multiples of M; None "
                                                     "without splitting")
    rows: int = Field(description="crop rows, 0 when the image is not split (transformers' `rows`)")
    cols: int = Field(description="crop columns, 0 when the image is not split (transformers' `cols`)")
    views: tuple[View, ...] = Field(description="crops row-major, then the global view: transformers' order")
    pieces: tuple[Text | Features, ...] = Field(description="what the placeholder expands to, in order")

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def num_rows(self) -> int:
        """Feature rows of the whole image: the <image> tokens the placeholder expands to."""
        return sum(p.rows for p in self.pieces if isinstance(p, Features))

    def expansion(self, image_token: str) -> str:
        """The placeholder's expansion as one string, each feature row written as `image_token` (the processor's
        own text when `image_token` is the spec's)."""
        return "".join(p.text if isinstance(p, Text) else image_token * p.rows for p in self.pieces)


def _rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    # transformers' _resize_output_size_rescale_to_max_len, expression for expression (same float roundings)
    aspect_ratio = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect_ratio)
        if height % 2 != 0:
            height += 1
    else:
        height = max_len
        width = int(height * aspect_ratio)
        if width % 2 != 0:
            width += 1
    return max(height, 1), max(width, 1)


def _scale_below_upper_bound(height: int, width: int, max_len: int) -> tuple[int, int]:
    # transformers' _resize_output_size_scale_below_upper_bound
    aspect_ratio = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect_ratio)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect_ratio)
    return max(height, 1), max(width, 1)


def _grid_size(height: int, width: int, m: int) -> tuple[int, int]:
    # transformers' resize_for_vision_encoder, what the processor does (its get_number_of_image_patches rounds the
    # short side from the un-truncated size instead; no size where the two differ was found, but this is the one
    # the pixels come from)
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / m) * m
        height = int(width / aspect_ratio)
        height = math.ceil(height / m) * m
    else:
        height = math.ceil(height / m) * m
        width = int(height * aspect_ratio)
        width = math.ceil(width / m) * m
    return height, width


def _pieces(spec: Idefics3PlanSpec, rows: int, cols: int) -> tuple[Text | Features, ...]:
    n, fake, glob = spec.image_seq_len, spec.fake_image_token, spec.global_image_token
    out: list[Text | Features] = []
    text = ""
    for r in range(rows):
        for c in range(cols):
            out += [Text(text=f"{text}{fake}<row_{r + 1}_col_{c + 1}>"), Features(view=r * cols + c, rows=n)]
            text = ""
        text += "\n"
    if rows:
        text += "\n"
    out += [Text(text=f"{text}{fake}{glob}"), Features(view=rows * cols, rows=n), Text(text=fake)]
    return tuple(out)


def plan(spec: Idefics3PlanSpec, height: int, width: int, *, max_tiles: int | None = None) -> Idefics3Plan:
    """The plan of an image of `height` x `width` pixels; ValueError for a degenerate size or when the image becomes
    more views (crops + the global view) than `max_tiles`."""
    height, width = operator.index(height), operator.index(width)  # a float size is a caller's bug: TypeError
    if height < 1 or width < 1:
        raise ValueError(f"image is {width}x{height} pixels: both sides must be at least 1 pixel")
    m = spec.max_image_size
    resized = (height, width)
    if spec.do_resize:
        resized = _scale_below_upper_bound(*_rescale_to_max_len(height, width, spec.longest_edge), MAX_IMAGE_SIDE)
    grid, rows, cols = None, 0, 0
    views: list[View] = []
    if spec.do_image_splitting:
        grid = _grid_size(*resized, m)
        if grid[0] > m or grid[1] > m:
            rows, cols = grid[0] // m, grid[1] // m
            views = [View(kind="crop", row=r + 1, col=c + 1, box=(c * m, r * m, (c + 1) * m, (r + 1) * m))
                     for r in range(rows) for c in range(cols)]
    if grid is not None and not views:
        # the M x M grid image is the one view, uncropped: its box is the whole grid image
        views.append(View(kind="global", row=0, col=0, box=(0, 0, m, m)))
    else:
        views.append(View(kind="global", row=0, col=0, box=None))
    if max_tiles is not None and len(views) > max_tiles:
        raise ValueError(f"image {width}x{height} becomes {len(views)} views ({rows}x{cols} crops + 1 global); "
                         f"the limit max_tiles is {max_tiles}")
    return Idefics3Plan(height=height, width=width, resample=spec.resample, view_size=m, resized=resized, grid=grid,
                        rows=rows, cols=cols, views=tuple(views), pieces=_pieces(spec, rows, cols))


# PIL's filter numbers, as preprocessor_config.json's `resample` writes them (PILImageResampling)
_RESAMPLE_BY_NUMBER = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# transformers' class defaults, for keys a checkpoint's files leave out (Idefics3ImageProcessor / SmolVLM's: equal)
_IMAGE_PROCESSOR_DEFAULTS = {"do_resize": True, "size": {"longest_edge": 4 * 364}, "max_image_size": {
    "longest_edge": 364}, "do_image_splitting": True, "resample": 1, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}


def _square(vision: dict, key: str, default: int) -> int:
    value = vision.get(key, default)
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"config.json vision_config.{key} {value}: only a square side is supported")
        value = value[0]
    return int(value)


def _triple(value) -> tuple[float, float, float]:
    # transformers takes one float for all three channels, or a list of three
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * 3


def spec_from_hf(image_processor: dict, processor: dict, config: dict) -> Idefics3PlanSpec:
    """The spec from a checkpoint's own files: `image_processor` = preprocessor_config.json (or processor_config.json's
    "image_processor"), `processor` = processor_config.json (its image_seq_len), `config` = config.json. Missing keys
    take transformers' class defaults; an option the views cannot reproduce is a ValueError naming the field."""
    ip = _IMAGE_PROCESSOR_DEFAULTS | image_processor
    if config.get("model_type") not in ("idefics3", "smolvlm"):
        raise ValueError(f"config.json model_type {config.get('model_type')!r}: the idefics3 plan takes "
                         "'idefics3' or 'smolvlm'")
    if not ip["do_convert_rgb"]:
        raise ValueError("preprocessor do_convert_rgb false: the preprocess stage always converts to RGB")
    size, max_size = ip["size"] or {}, ip["max_image_size"] or {}
    if ip["do_resize"] and "longest_edge" not in size:
        raise ValueError(f"preprocessor size {size}: only size.longest_edge is supported")
    if "longest_edge" not in max_size:
        raise ValueError(f"preprocessor max_image_size {max_size}: max_image_size.longest_edge is required")
    resample = ip["resample"]
    if resample not in _RESAMPLE_BY_NUMBER:
        raise ValueError(f"preprocessor resample {resample!r}: not one of PIL's filters {sorted(_RESAMPLE_BY_NUMBER)}")
    vision = config.get("vision_config") or {}
    return Idefics3PlanSpec(
        do_resize=ip["do_resize"], longest_edge=size.get("longest_edge") if ip["do_resize"] else None,
        max_image_size=max_size["longest_edge"], do_image_splitting=ip["do_image_splitting"],
        resample=_RESAMPLE_BY_NUMBER[resample], image_size=_square(vision, "image_size", 224),
        patch_size=_square(vision, "patch_size", 32), scale_factor=config.get("scale_factor", 2),
        image_seq_len=processor.get("image_seq_len", 169),
        rescale_factor=ip["rescale_factor"] if ip["do_rescale"] else 1.0,
        image_mean=_triple(ip["image_mean"]) if ip["do_normalize"] else (0.0, 0.0, 0.0),
        image_std=_triple(ip["image_std"]) if ip["do_normalize"] else (1.0, 1.0, 1.0))
