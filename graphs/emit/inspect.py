"""What a built graph holds: fused/contrib op counts (recorded per variant in the manifest) and file names."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx

from graphs.emit.onnx_ops import MS_DOMAIN

# Op types worth counting in a saved graph: every contrib op, plus the standard ones that are themselves fusions
# or quantization.
_COUNTED_STANDARD_OPS = {"LayerNormalization", "MatMulInteger", "DynamicQuantizeLinear", "ConvInteger"}


def fusion_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(n.op_type for n in model.graph.node
                     if n.domain == MS_DOMAIN or n.op_type in _COUNTED_STANDARD_OPS)
    return dict(sorted(counts.items()))


def ort_optimized_counts(path: Path) -> dict[str, int]:
    """What ORT's own optimizer makes of a saved graph on the CPU EP: every op type, counted after optimization."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3  # it warns that the saved file is hardware specific: known, it is only counted
        so.intra_op_num_threads = so.inter_op_num_threads = 1  # only counted: no thread pool sized by the machine
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath, load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in optimized.graph.node).items()))


def file_name(graph: str, variant: str) -> str:
    return f"{graph}.{variant}.onnx"
