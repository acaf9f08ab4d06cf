"""What a model family provides to the family-agnostic build (graphs/build.py).

    source (preset name, weights file, tokenizer file)
      --load--> reference model (PyTorch, or whatever the family's parity gate compares against)
      --variants--> ONNX protos per graph and variant name        (graphs.emit has the shared emitters)
      --tokenizer / specs--> tokenizer.json + the manifest's decoder, vision and prompt specs
      --parity_gate--> figures per variant and the figures past bounds of each that failed (graphs.gate: which
                       the build leaves out, and when it fails instead)

A family lives in its own folder under graphs/families/ and is registered by name in graphs/families/__init__.py;
nothing outside its folder knows its model's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from mmcore.manifest import DecoderSpec, KvCacheEntry, PromptSpec, VisionSpec

if TYPE_CHECKING:  # graphs.gate imports this package
    from graphs.gate import GateResult

Progress = Callable[[str], None]


class SourceError(ValueError):
    """A source input a family cannot use (a tokenizer file, a setting); the message names the file or field.
    The build reports it as a BuildError."""


@dataclass(frozen=True)
class VariantSpec:
    graph: str  # "vision" or "decoder"
    precision: str  # "fp32" | "fp16" | "int8"
    providers: tuple[str, ...]
    build: Callable  # (reference model) -> onnx.ModelProto
    contrib: bool  # may use com.microsoft ops (False: standard domain only, checked by tests)
    kv_cache: KvCacheEntry | None = None  # decoder: a quantized KV cache, as the manifest records it
    same_weights_as: str | None = None  # a quantized-cache variant: the one with its weights over a float cache


@dataclass(frozen=True)
class Source:
    """What to build: the family's source name (a preset, or a checkpoint's folder name) and optional inputs."""
    name: str
    weights: Path | None = None
    tokenizer: Path | None = None
    directory: Path | None = None  # a checkpoint directory, for families built from one (llava)


@dataclass(frozen=True)
class Specs:
    decoder: DecoderSpec
    vision: VisionSpec
    prompt: PromptSpec
    source: dict  # the family's own description of its source, recorded for provenance


class Family(Protocol):
    name: str
    variants: dict[str, dict[str, VariantSpec]]  # graph -> variant name -> spec; order = fallback order
    # `graph/name`s the parity gate runs beside any variant (e.g. an fp32 pair for end-to-end greedy checks): a
    # build of named variants builds and gates these too
    gate_partners: tuple[str, ...]

    def resolve(self, name: str, weights: Path | None, tokenizer: Path | None) -> Source:
        """The source with the family's defaults filled in (e.g. shipped weights); BuildError if unusable."""

    def load(self, source: Source):
        """The reference model (WeightsError naming the file and tensor on a bad weights file)."""

    def write_tokenizer(self, source: Source, model, dst: Path) -> None:
        """tokenizer.json for the model at dst (BuildError naming the file on a bad one)."""

    def embeddings(self, model) -> np.ndarray:
        """The decoder's token embedding table (V, D) float32."""

    def specs(self, source: Source, model, tokenizer_path: Path, embeddings_file: str) -> Specs:
        """The manifest's decoder, vision and prompt specs."""

    def parity_gate(self, model, built: dict[str, dict[str, bytes]], decoder: DecoderSpec,
                    progress: Progress) -> GateResult:
        """graphs.gate.GateResult: every variant's figures, and which figures are past bounds for each that failed
        (measure every variant: the build decides what to leave out)."""
