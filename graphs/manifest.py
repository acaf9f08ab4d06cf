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


class GraphEntry(BaseModel):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variants: dict[str, Variant]

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
    files_sha256: dict[str, str] = Field(default_factory=dict,
                                         description="sha256 of every file in the directory but the manifest, by "
                                                     "name: what a fetch from a store checks each download against")

    def files(self) -> dict[str, str | None]:
        """Every file the artifact holds besides the manifest -> its sha256 (None where the manifest has none)."""
        named = {self.tokenizer.file: None, self.token_embeddings.name: None}
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
        path = Path(directory) / MANIFEST
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no manifest; build artifacts with `mmserve build`") from None
