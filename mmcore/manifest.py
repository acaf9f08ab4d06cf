"""The artifact manifest (format 2): the whole contract between graphs/ (which writes it) and serve_app/ (which reads
only it and the files it names). Every stage takes its model's shape from here, never from a family's code.

An artifact directory holds:
    manifest.json            this schema
    tokenizer.json           Hugging Face tokenizers file; vocabulary == decoder vocab_size
    <decoder.embeddings>     (V, Dd) table: the decoder stage embeds prompt tokens itself, so image features and
                             token embeddings meet as one `inputs_embeds` tensor
    vision.<variant>.onnx    one file per vision variant that passed the build's parity gate
    decoder.<variant>.onnx   one file per decoder variant that passed it

A variant that failed its gate has no file: its figures and the reason stand in its graph's `rejected` map
(GraphEntry.rejected), apart from `variants`, so whatever reads `variants` (serving, fetches, sha256 checks) sees
only gated variants.

Graph signatures (symbolic dims in quotes); the names are data (`GraphEntry.inputs/outputs`, `DecoderSpec.cache_names`):
  vision
    in   pixels            uint8   ("batch", 3, H, W)            raw RGB; normalization is folded into the graph
    out  image_features    float32 ("batch", P, Dd)             P = features per image, already in decoder width
  decoder  (GroupQueryAttention with past and present sharing one preallocated buffer per layer)
    in   inputs_embeds     float32 ("batch", "seq", Dd)
    in   position_ids      int64   ("batch", "seq")              learned positions only; a rotary decoder has none
    in   seqlens_k         int32   ("batch",)                    per row: tokens in the cache after this call, minus 1
    in   total_sequence_length int32 ()                          max over rows of seqlens_k + 1
    in   past_key.{i}      cache   ("batch", kv_heads, "max_cache", head_dim) one per layer; bound to present_key.{i}
    in   past_value.{i}    cache   ("batch", kv_heads, "max_cache", head_dim)
    out  logits            float32 ("batch", V)                  next-token logits at each row's last position
    out  present_key.{i}   cache   ("batch", kv_heads, "max_cache", head_dim) updated in place when bound to past
    out  present_value.{i} cache   ("batch", kv_heads, "max_cache", head_dim)
  "cache" is DecoderSpec.cache_dtype, which GraphEntry.inputs/outputs list, unless the variant has a `kv_cache`
  (a quantized cache: int8, or uint8 with head_dim/2 bytes at 4 bits; its scales are initializers in the graph).
  A prefill is a call with seq = prompt length on an empty cache row; a decode step is seq = 1 for every active row,
  each row at its own length. The cache is never copied between steps: callers bind past and present to one buffer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 2

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"


class ManifestError(ValueError):
    """An artifact directory serving cannot use; the one-line message names the file and the field."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Spec):
    name: str
    dtype: str = Field(description="numpy dtype name, e.g. 'float32', 'uint8', 'int64'")
    shape: list[int | str] = Field(description="ints are fixed dims, strings are symbolic")


class KvCacheEntry(_Spec):
    """A decoder variant's own KV cache storage (a quantized cache): what the runner allocates and binds as
    past/present instead of DecoderSpec.cache_dtype at head_dim."""
    dtype: str = Field(description="numpy dtype of the cache buffers: int8, or uint8 (4 bits: two values per byte)")
    bits: int = Field(description="bits per cached value: 8 or 4")
    quantization: str = Field(description="GroupQueryAttention k/v_quant_type, e.g. PER_CHANNEL")
    calibration: str = Field(description="how the static scales were calibrated at build")

    def last_dim(self, head_dim: int) -> int:
        """The cache's last dim: head_dim values, packed two per byte at 4 bits."""
        return head_dim * self.bits // 8


class Variant(_Spec):
    file: str = Field(description="file name inside the artifact directory")
    sha256: str
    providers: list[str] = Field(description="execution providers this variant is built for, best first")
    precision: Literal["fp32", "fp16", "int8", "int4"]
    fusions: dict[str, int] = Field(default_factory=dict, description="node count by op type of fused/contrib ops")
    parity: dict[str, float | int | bool | str] = Field(default_factory=dict,
                                                         description="figures from the build's parity gate")
    ort_optimized: dict[str, int] = Field(default_factory=dict,
                                          description="node count by op type after ORT's load-time optimizer "
                                                      "(CPU EP, all levels); empty for non-CPU variants")
    kv_cache: KvCacheEntry | None = Field(default=None, description="decoder: this variant's quantized KV cache; "
                                                                     "None: DecoderSpec.cache_dtype")


class RejectedVariant(_Spec):
    """A variant the build's parity gate turned down: no file in the artifact, only what it measured and why."""
    providers: list[str]
    precision: Literal["fp32", "fp16", "int8", "int4"]
    parity: dict[str, float | int | bool | str] = Field(default_factory=dict,
                                                         description="figures from the build's parity gate")
    reason: str = Field(description="one line: every figure past its bound, or the rejected variant it depends on")


class GraphEntry(_Spec):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variants: dict[str, Variant] = Field(description="the gated variants, each with its file")
    rejected: dict[str, RejectedVariant] = Field(default_factory=dict,
                                                 description="variants the parity gate rejected: no file, never "
                                                             "served")

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def variant_for(self, provider: str, prefer: list[str] | None = None) -> tuple[str, Variant]:
        """The variant to run on `provider` (the EP that actually loaded); `prefer` orders candidate names. A rejected
        variant is never picked: a preferred one is passed over with a warning naming the gate's reason."""
        names = list(prefer or []) + [n for n in self.variants if n not in (prefer or [])]
        for name in names:
            v = self.variants.get(name)
            if v is not None and provider in v.providers:
                return name, v
            if name in self.rejected and provider in self.rejected[name].providers:
                log.warning("prefer_variants: %s was rejected by the build's parity gate (%s); trying the next",
                            name, self.rejected[name].reason)
        rejected = "".join(f"; rejected at build: {n} ({r.reason})" for n, r in self.rejected.items()
                           if provider in r.providers)
        raise LookupError(f"no variant for {provider}; have {sorted(self.variants)}{rejected}")


class Positions(_Spec):
    """How the decoder encodes positions: a learned table (a `position_ids` input) or rotary inside attention."""
    scheme: Literal["learned", "rotary"]
    theta: float | None = Field(default=None, description="rotary base; None for learned")
    scaling: dict[str, float | str] | None = Field(default=None, description="rotary scaling (HF rope_scaling)")


class DecoderIO(_Spec):
    """The decoder graph's tensor names. `position_ids` is None for a decoder without a position input (rotary
    positions come from seqlens_k inside GroupQueryAttention)."""
    inputs_embeds: str = "inputs_embeds"
    position_ids: str | None = "position_ids"
    seqlens_k: str = "seqlens_k"
    total_sequence_length: str = "total_sequence_length"
    logits: str = "logits"
    past_key: str = "past_key.{i}"
    past_value: str = "past_value.{i}"
    present_key: str = "present_key.{i}"
    present_value: str = "present_value.{i}"


class GenerationDefaults(_Spec):
    """The checkpoint's generation_config.json sampling defaults: what a request that leaves a field out gets (request
    > these > the server's defaults, as vLLM applies them). None = the checkpoint does not set it."""
    temperature: float | None = Field(default=None, ge=0.0, description="0 = greedy: also what `do_sample: false` "
                                                                        "records, since transformers then decodes "
                                                                        "greedily whatever the temperature")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, description="0 = no top-k cut")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    max_new_tokens: int | None = Field(default=None, ge=1, description="max_tokens when the request sets none")


class DecoderSpec(_Spec):
    layers: int = Field(ge=1)
    heads: int = Field(ge=1, description="query heads")
    kv_heads: int = Field(ge=1, description="key/value heads (== heads without grouped-query attention)")
    head_dim: int = Field(ge=1)
    hidden_size: int = Field(ge=1, description="width of inputs_embeds")
    vocab_size: int = Field(ge=1)
    max_positions: int = Field(ge=1, description="the longest context a sequence may reach")
    positions: Positions
    eos_token_ids: list[int] = Field(min_length=1, description="any of them ends a completion")
    pad_token_id: int | None = None
    embeddings: TensorSpec = Field(description="token embedding table (V, hidden_size); name is the .npy file")
    cache_dtype: str = Field(default="float32", description="numpy dtype of the KV cache buffers")
    io: DecoderIO = Field(default_factory=DecoderIO, description="tensor names; per-layer ones with {i} for the "
                                                                  "layer (ORT GenAI's name templates)")
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults,
                                           description="sampling defaults from the checkpoint's generation_config")

    def cache_names(self) -> list[str]:
        """Every past/present tensor name, all layers."""
        io = self.io
        return [t.format(i=i) for i in range(self.layers)
                for t in (io.past_key, io.past_value, io.present_key, io.present_value)]


class Preprocessing(_Spec):
    """What the preprocess stage does to a decoded RGB image before the vision graph sees uint8 (3,H,W) pixels."""
    resize: Literal["crop", "pad", "resize", "shortest_edge"] = Field(
        description="crop: fit the short side, center-crop; pad: fit the long side, pad to square; resize: stretch; "
                    "shortest_edge: resize the short side to `shortest_edge` (long side int(s * long / short)), then "
                    "center-crop (top = (h - S) // 2), as transformers' CLIPImageProcessor does")
    shortest_edge: int | None = Field(default=None, ge=1, description="short side after resizing, for "
                                      "`shortest_edge` (>= the crop size, image_size)")
    resample: Literal["bicubic", "bilinear", "nearest", "lanczos"] = Field(
        default="bicubic", description="PIL filter; lanczos (Idefics3's default) only with a `plan` whose views are "
                                       "resized by the plan's own resample")
    pad_color: tuple[int, int, int] = Field(default=(0, 0, 0), description="RGB fill for `pad`")
    mean: tuple[float, float, float] = Field(description="normalization folded into the vision graph (for reference: "
                                             "serving passes raw pixels)")
    std: tuple[float, float, float]


class VisionIO(_Spec):
    pixels: str = "pixels"
    features: str = "image_features"


class VisionSpec(_Spec):
    image_size: int = Field(ge=1, description="square input side, pixels")
    patch_size: int = Field(ge=1)
    features_per_image: int = Field(ge=1, description="P: rows of image_features per image")
    feature_dim: int = Field(ge=1, description="width of each feature row (the decoder's hidden size)")
    preprocessing: Preprocessing
    io: VisionIO = Field(default_factory=VisionIO)
    newline: TensorSpec | None = Field(
        default=None, description="anyres families: the model's `image_newline` row (feature_dim,) float32, a .npy "
                                  "file in the artifact, appended after each row of a tiled image's features")
    plan: dict | None = Field(
        default=None, description="the view planner's spec, mmcore.image_plan's by `kind`: anyres (LLaVA-NeXT, "
                                  "OneVision: grid_pinpoints as (height, width), view_size, patch_size, anyres_max, "
                                  "...), idefics3 (Idefics3/SmolVLM: crops + a global view, each view's rows wrapped "
                                  "in row/column text); None: one view per image of features_per_image rows. With a "
                                  "plan, features_per_image counts one view's rows")


class PromptSpec(_Spec):
    """How chat messages become prompt segments: a Jinja chat template (rendered as `transformers` renders
    `chat_template`) whose output marks each image with `image_token`, which expands to that image's features."""
    chat_template: str
    image_token: str = Field(description="the placeholder text the template writes where an image goes")
    image_features: int = Field(ge=1, description="feature rows one placeholder expands to")
    bos_token: str = ""
    eos_token: str = ""
    clean_up_tokenization_spaces: bool = Field(
        default=False, description="transformers' decode rewrites ' .' to '.' and the like (tokenizer_config.json's "
                                   "flag; transformers ignores it for BPE models)")


class Manifest(_Spec):
    format_version: int = FORMAT_VERSION
    family: str = Field(description="graphs.families registry name the artifacts were built by")
    preset: str = Field(description="the source's name (preset or checkpoint), for the served model id")
    decoder: DecoderSpec
    vision: VisionSpec
    prompt: PromptSpec
    tokenizer_file: str
    graphs: dict[str, GraphEntry] = Field(description="'vision' and 'decoder'")
    source: dict = Field(default_factory=dict, description="the family's own description of its source (provenance; "
                                                           "serving never reads it)")
    versions: dict[str, str] = Field(default_factory=dict, description="torch/onnx/onnxruntime used to build")
    weights_sha256: str | None = Field(default=None, description="sha256 of the weights file; None = seeded random")
    files_sha256: dict[str, str] = Field(default_factory=dict,
                                         description="sha256 of every file in the directory but the manifest, by "
                                                     "name: what a fetch from a store checks each download against")

    def files(self) -> dict[str, str | None]:
        """Every file the artifact holds besides the manifest (names relative to its directory) -> its sha256 (None
        where the manifest has none); ValueError when two fields disagree on a file's hash."""
        named: dict[str, str | None] = {self.tokenizer_file: None, self.decoder.embeddings.name: None}
        if self.vision.newline is not None:
            named[self.vision.newline.name] = None
        named |= {v.file: v.sha256 for g in self.graphs.values() for v in g.variants.values()}
        for name, digest in self.files_sha256.items():
            if named.get(name) not in (None, digest):
                raise ValueError(f"{name}: manifest gives two different sha256 for it")
            named[name] = digest
        return named

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(self.model_dump_json(indent=2))

    @classmethod
    def read(cls, directory: str | Path) -> "Manifest":
        """The manifest of an artifact directory; ManifestError (one line: file and field) for any other version,
        a missing or malformed field. FileNotFoundError when there is none."""
        path = Path(directory) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no manifest; build artifacts with `mmserve build`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(f"{path}: not JSON ({e}); rebuild with `mmserve build`") from None
        version = data.get("format_version", 1) if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise ManifestError(f"{path}: format_version {version}, this mmserve reads {FORMAT_VERSION}; rebuild "
                                f"with `mmserve build`")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "<manifest>"
            raise ManifestError(f"{path}: {where}: {err['msg']}") from None


def check_session_io(path: str | Path, entry: GraphEntry, session, dtypes: dict[str, str] | None = None) -> None:
    """The graph file must take and give exactly the tensors the manifest declares (names and dtypes), so no stage
    meets a surprise at its first request. `session` is an ORT InferenceSession of that file; `dtypes` overrides
    the entry's dtype per tensor name where the variant differs (variant_dtypes: a quantized KV cache)."""
    ort_types = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
                 "tensor(int8)": "int8", "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}
    for kind, declared, actual in (("inputs", entry.inputs, session.get_inputs()),
                                   ("outputs", entry.outputs, session.get_outputs())):
        have = {a.name: ort_types.get(a.type, a.type) for a in actual}
        want = {t.name: (dtypes or {}).get(t.name, t.dtype) for t in declared}
        if have == want:
            continue
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        wrong = sorted(n for n in set(want) & set(have) if want[n] != have[n])
        what = (f"declares {missing[0]!r}, the graph has no such tensor" if missing else
                f"the graph has {extra[0]!r}, the manifest does not declare it" if extra else
                f"{wrong[0]!r} is {have[wrong[0]]} in the graph, {want[wrong[0]]} in the manifest")
        raise ManifestError(f"{path}: graph {kind}: {what}")


def variant_dtypes(decoder: DecoderSpec, variant: Variant) -> dict[str, str]:
    """The tensors whose dtype this decoder variant has in place of its GraphEntry's: its quantized cache's."""
    if variant.kv_cache is None:
        return {}
    return {name: variant.kv_cache.dtype for name in decoder.cache_names()}
