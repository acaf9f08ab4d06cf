"""The comparison baseline for bench_graphs.py: torch.onnx.export + onnxruntime.transformers.optimize_model +
quantize_dynamic on the same model and dims — the standard recipe the issue measures against.

The exported decoder takes the cache the usual way, past (B,nh,T,hs) in and present (B,nh,T+1,hs) out, so each step
concatenates and returns the whole cache; that is the recipe's cost and part of what is being compared.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn


class _DecoderStep(nn.Module):
    """inputs_embeds, position_ids, past_key.0, past_value.0, ... -> logits at the last position, presents."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, inputs_embeds, position_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, present = self.decoder(inputs_embeds, position_ids, past)
        return (logits[:, -1], *[t for kv in present for t in kv])


def _export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)


def _optimize_and_quantize(path: Path, model_type: str, heads: int, width: int) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(path), model_type=model_type, num_heads=heads, hidden_size=width)
    opt.model.ir_version = min(opt.model.ir_version, 10)
    fp32 = path.with_suffix(".opt.onnx")
    opt.save_model_to_file(str(fp32))
    int8 = path.with_suffix(".int8.onnx")
    # Contrib nodes defeat the quantizer's shape inference; it asks for the default type to be named.
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"std-fp32": fp32, "std-int8": int8}


def build_standard(model, workdir: str | None = None) -> dict[str, dict[str, Path]]:
    """{"vision": {"std-fp32": path, "std-int8": path}, "decoder": {...}} for the reference model."""
    cfg = model.cfg
    work = Path(workdir or tempfile.mkdtemp(prefix="mmserve-std-"))
    work.mkdir(parents=True, exist_ok=True)
    pixels = torch.zeros(1, 3, cfg.vision.image_size, cfg.vision.image_size, dtype=torch.uint8)
    _export(model.vision, (pixels,), work / "vision.onnx", ["pixels"], ["image_features"],
            {"pixels": {0: "batch"}, "image_features": {0: "batch"}})
    d = cfg.decoder
    past = [torch.zeros(1, d.heads, 4, d.head_dim) for _ in range(2 * d.layers)]
    names = [f"past_{kv}.{i}" for i in range(d.layers) for kv in ("key", "value")]
    outs = ["logits"] + [n.replace("past", "present") for n in names]
    axes = {"inputs_embeds": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    axes |= {n: {0: "batch", 2: "past"} for n in names} | {n: {0: "batch", 2: "total"} for n in outs[1:]}
    _export(_DecoderStep(model.decoder), (torch.zeros(1, 1, d.width), torch.zeros(1, 1, dtype=torch.long), *past),
            work / "decoder.onnx", ["inputs_embeds", "position_ids", *names], outs, axes)
    return {"vision": _optimize_and_quantize(work / "vision.onnx", "vit", cfg.vision.heads, cfg.vision.width),
            "decoder": _optimize_and_quantize(work / "decoder.onnx", "gpt2", d.heads, d.width)}
