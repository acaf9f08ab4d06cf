"""Build a LLaVA checkpoint directory into an artifact directory, atomically:

    read_checkpoint (config, tokenizer, processor; one-line errors, nothing written)
      -> load_weights (both key layouts, shards, every shape asserted)
      -> emit every requested variant -> parity gate vs transformers (ParityError fails the build)
      -> tmp dir: *.onnx, tokenizer files, token_embeddings.npy, llava_build.json -> rename into place

`llava_build.json` holds everything a manifest needs (dims, rope, eos ids, chat template, image token and features
per image, preprocessing, graph I/O, per-variant files, sha256s, fusion counts, parity figures and bounds); the
family registry of the manifest v2 folds it in.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from graphs.families.llava.checkpoint import read_checkpoint
from graphs.families.llava.weights import load_weights
from graphs.quantize import BlockInt4Weights, Int8Weights

Progress = Callable[[str], None]
BUILD_JSON = "llava_build.json"
TOKEN_EMBEDDINGS = "token_embeddings.npy"
CPU_EP, CUDA_EP, TRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


@dataclass(frozen=True)
class VariantSpec:
    graph: str  # "vision" | "decoder"
    precision: str  # "fp32" | "fp16" | "int8" | "int4"
    providers: tuple[str, ...]
    build: Callable  # (checkpoint, weights) -> ModelProto


def _vision(style: str, dtype=np.float32, quantize=None):
    def build(ck, w):
        from graphs.families.llava.vision_graph import build_vision
        return build_vision(ck, w, style, dtype, quantize() if quantize else None)
    return build


def _decoder(quantize=None):
    def build(ck, w):
        from graphs.families.llava.decoder_graph import build_decoder
        return build_decoder(ck, w, quantize() if quantize else None)
    return build


VARIANTS = {
    "vision/portable-fp32": VariantSpec("vision", "fp32", (TRT_EP, CUDA_EP, CPU_EP), _vision("portable")),
    "vision/portable-fp16": VariantSpec("vision", "fp16", (TRT_EP, CUDA_EP), _vision("portable", np.float16)),
    "vision/cpu-fp32": VariantSpec("vision", "fp32", (CPU_EP,), _vision("cpu")),
    "vision/cpu-int8": VariantSpec("vision", "int8", (CPU_EP,), _vision("cpu", quantize=Int8Weights)),
    "decoder/cpu-fp32": VariantSpec("decoder", "fp32", (CPU_EP,), _decoder()),
    "decoder/cpu-int8": VariantSpec("decoder", "int8", (CPU_EP,), _decoder(Int8Weights)),
    "decoder/cpu-int4": VariantSpec("decoder", "int4", (CPU_EP,), _decoder(BlockInt4Weights)),
}


class BuildError(RuntimeError):
    """A build that cannot proceed (bad variant name, unwritable output); one line."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _io(values) -> list[dict]:
    def dims(t):
        return [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
    return [{"name": t.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.type.tensor_type.elem_type).name,
             "shape": dims(t)} for t in values]


def _fusions(proto: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        if n.domain == "com.microsoft" or n.op_type in ("SimplifiedLayerNormalization", "LayerNormalization"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _select(variants) -> list[str]:
    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise BuildError(f"--variants: unknown {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    if not any(VARIANTS[n].graph == "decoder" for n in names) or not any(VARIANTS[n].graph == "vision" for n in names):
        raise BuildError("--variants: need at least one vision and one decoder variant")
    return names


def _emit_and_gate(ck, w, names: list[str], tmp: Path, progress: Progress) -> dict:
    from graphs.families.llava import parity
    from graphs.families.llava.reference import Reference

    progress("reference: transformers LlavaForConditionalGeneration")
    ref = Reference(ck)
    inputs = parity.Inputs(ref)
    graphs: dict = {}
    for name in names:
        spec = VARIANTS[name]
        progress(f"emit {name}")
        proto = spec.build(ck, w)
        data = proto.SerializeToString()
        file = name.replace("/", "_") + ".onnx"
        (tmp / file).write_bytes(data)
        progress(f"parity {name}")
        figures = (parity.vision_figures(ref, data) if spec.graph == "vision"
                   else parity.decoder_figures(ck, inputs, data, spec.precision))
        gate = parity.check(*name.split("/"), spec.precision, figures)
        entry = graphs.setdefault(spec.graph, {"inputs": _io(proto.graph.input), "outputs": _io(proto.graph.output),
                                               "variants": {}})
        entry["variants"][name.split("/")[1]] = {
            "file": file, "sha256": _sha256(tmp / file), "providers": list(spec.providers),
            "precision": spec.precision, "fusions": _fusions(proto), "parity": figures, "parity_bounds": gate}
        del proto, data
    return graphs


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _write(ck, names, tmp: Path, progress: Progress) -> dict:
    progress("load weights")
    w = load_weights(ck)
    for f in ck.tokenizer_files:
        shutil.copyfile(ck.directory / f, tmp / f)
    np.save(tmp / TOKEN_EMBEDDINGS, w["text.embed_tokens.weight"].astype(np.float32))  # (V,D)
    graphs = _emit_and_gate(ck, w, names, tmp, progress)
    t = ck.text
    info = {
        "family": "llava", "checkpoint": ck.to_dict(),
        "decoder": {"layers": t.layers, "heads": t.heads, "kv_heads": t.kv_heads, "head_dim": t.head_dim,
                    "width": t.hidden, "vocab_size": t.vocab_size, "max_positions": t.max_positions,
                    "positions": "rotary-in-graph", "rope_theta": t.rope_theta, "rope_scaling": t.rope_scaling,
                    "eos_token_ids": list(ck.eos_token_ids)},
        "vision": {"image_size": ck.vision.image_size, "features_per_image": ck.vision.features_per_image,
                   "preprocess": ck.to_dict()["preprocess"]},
        "prompt": {"chat_template": ck.chat_template, "image_token_id": ck.image_token_id,
                   "image_token": "<image>", "image_expansion": ck.vision.features_per_image},
        "tokenizer_files": {f: _sha256(tmp / f) for f in ck.tokenizer_files},
        "token_embeddings": {"file": TOKEN_EMBEDDINGS, "dtype": "float32", "shape": [t.vocab_size, t.hidden],
                             "sha256": _sha256(tmp / TOKEN_EMBEDDINGS)},
        "graphs": graphs, "versions": _versions(),
    }
    text = json.dumps(info, indent=2, sort_keys=True)
    (tmp / BUILD_JSON).write_text(text)
    return json.loads(text)  # exactly what a reader gets back (JSON turns tuples into lists)


def build_llava(checkpoint_dir: str | Path, out_dir: str | Path, variants=None,
                progress: Progress | None = None) -> dict:
    """Build `variants` (default: all of VARIANTS) of the checkpoint into out_dir; returns the build JSON.

    Raises CheckpointError / BuildError / ParityError with one-line messages; on any failure out_dir is untouched.
    """
    from graphs.build import _check_replaceable, _move_into_place

    progress = progress or (lambda _msg: None)
    ck = read_checkpoint(checkpoint_dir)  # first: a bad checkpoint fails before anything is created
    names = _select(variants)
    out = Path(out_dir).absolute()
    if out.is_dir() and any(out.iterdir()) and not (out / BUILD_JSON).is_file():
        raise BuildError(f"{out}: not an artifact directory (no {BUILD_JSON}); refusing to replace it")
    if out.is_file():
        _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        info = _write(ck, names, tmp, progress)
        progress("write")
        _move_into_place(tmp, out)
        return info
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
