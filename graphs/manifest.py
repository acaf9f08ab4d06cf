"""The artifact manifest: the whole contract between graphs/ (which writes it) and serve_app/ (which reads only it
and the files it names).

An artifact directory holds:
    manifest.json            this schema
    tokenizer.json           Hugging Face tokenizers file; vocabulary == decoder vocab_size
    token_embeddings.npy     (V, Dd) float32: the decoder stage embeds prompt tokens itself, so image features and
                             token embeddings meet as one `inputs_embeds` tensor
    vision.<variant>.onnx    one file per vision variant
    decoder.<variant>.onnx   one file per decoder variant

Graph signatures (symbolic dims in quotes):
  vision
    in   pixels            uint8   ("batch", 3, H, W)            raw RGB; normalization is folded into the graph
    out  image_features    float32 ("batch", P, Dd)             P = (H/p)*(W/p) patches, already in decoder width
  decoder  (GroupQueryAttention with past and present sharing one preallocated buffer per layer)
    in   inputs_embeds     float32 ("batch", "seq", Dd)
    in   position_ids      int64   ("batch", "seq")              absolute positions (learned position table)
    in   seqlens_k         int32   ("batch",)                    per row: tokens in the cache after this call, minus 1
    in   total_sequence_length int32 ()                          max over rows of seqlens_k + 1
    in   past_key.{i}      float32 ("batch", nh, "max_cache", hs) one per layer; bind the same memory as present_key.{i}
    in   past_value.{i}    float32 ("batch", nh, "max_cache", hs)
    out  logits            float32 ("batch", V)                  next-token logits at each row's last position
    out  present_key.{i}   float32 ("batch", nh, "max_cache", hs) the updated cache, in place when bound to past
    out  present_value.{i} float32 ("batch", nh, "max_cache", hs)
  The past/present dtype is the variant's kv_cache.dtype (float32, int8, or uint8 with hs/2 bytes for 4 bits: the
  GraphEntry's inputs list the first variant's); scales of a quantized cache are initializers inside the graph.
  A prefill is a call with seq = prompt length on an empty cache row; a decode step is seq = 1 for every active row,
  each row at its own length. The cache is never copied between steps: callers bind past and present to one buffer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"


class TensorSpec(BaseModel):
    name: str
    dtype: str = Field(description="numpy dtype name, e.g. 'float32', 'uint8', 'int64'")
    shape: list[int | str] = Field(description="ints are fixed dims, strings are symbolic")


class KvCacheEntry(BaseModel):
    """A decoder variant's KV cache storage: what the runner allocates and binds as past/present."""
    dtype: str = Field(default="float32", description="numpy dtype of the cache buffers: float32, int8, or uint8 "
                                                       "(4-bit: two values per byte)")
    bits: int = Field(default=32, description="bits per cached value: 32, 8 or 4")
    quantization: str | None = Field(default=None, description="GroupQueryAttention k/v_quant_type, e.g. PER_CHANNEL")
    calibration: str | None = Field(default=None, description="how the static scales were calibrated at build")

    def last_dim(self, head_dim: int) -> int:
        """The cache's last dim: head_dim values, packed two per byte at 4 bits."""
        return head_dim * min(self.bits, 8) // 8


class Variant(BaseModel):
    file: str = Field(description="file name inside the artifact directory")
    sha256: str
    providers: list[str] = Field(description="execution providers this variant is built for, best first")
    precision: Literal["fp32", "fp16", "int8"]
    fusions: dict[str, int] = Field(default_factory=dict, description="node count by op type of fused/contrib ops")
    parity: dict[str, float | int | bool | str] = Field(default_factory=dict,
                                                         description="figures from the build's parity gate")
    ort_optimized: dict[str, int] = Field(default_factory=dict,
                                          description="node count by op type after ORT's load-time optimizer "
                                                      "(CPU EP, all levels); empty for non-CPU variants")
    kv_cache: KvCacheEntry = Field(default_factory=KvCacheEntry,
                                   description="decoder: the KV cache's dtype and quantization (default float32)")


class GraphEntry(BaseModel):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variants: dict[str, Variant]
    rejected: dict[str, str] = Field(default_factory=dict, description="optional variants built but left out: "
                                                                       "name -> the parity gate's message")

    def variant_for(self, provider: str, prefer: list[str] | None = None) -> tuple[str, Variant]:
        """The variant to run on `provider` (the EP that actually loaded); `prefer` orders candidate names."""
        names = list(prefer or []) + [n for n in self.variants if n not in (prefer or [])]
        for name in names:
            v = self.variants.get(name)
            if v is not None and provider in v.providers:
                return name, v
        raise LookupError(f"no variant for {provider}; have {sorted(self.variants)}")


class TokenizerEntry(BaseModel):
    file: str
    eos_token_id: int
    pad_token_id: int
    role_token_ids: dict[str, int]


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    preset: str
    model: dict = Field(description="graphs.config.ModelConfig as a dict")
    num_image_tokens: int
    image_size: int
    tokenizer: TokenizerEntry
    token_embeddings: TensorSpec = Field(description="name is the .npy file name")
    graphs: dict[str, GraphEntry] = Field(description="'vision' and 'decoder'")
    versions: dict[str, str] = Field(default_factory=dict, description="torch/onnx/onnxruntime used to build")
    weights_sha256: str | None = Field(default=None, description="sha256 of the weights file; None = seeded random")

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(self.model_dump_json(indent=2))

    @classmethod
    def read(cls, directory: str | Path) -> "Manifest":
        path = Path(directory) / MANIFEST
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no manifest; build artifacts with `mmserve build`") from None
