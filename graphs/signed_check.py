"""The build's check of the u8s8 re-encoding serving may apply to an int8 variant (mmcore/runtime/int8_kernels.py).

Serving re-encodes a `cpu-int8*` graph's uint8 weights (zero point 128) as int8 on CPUs whose u8s8 GEMM is exact.
The integer sums are the same by arithmetic, so the outputs should be too, bit for bit; the build proves it on the
gate's own inputs wherever its CPU has the kernel, and records the figure in the variant's parity:

    u8s8_checked        false: this CPU's u8s8 GEMM saturates (no VNNI), so the check could not run here
    u8s8_max_abs_diff   the largest difference between the two encodings' outputs; serving keeps u8u8 for a
                        variant where it is not 0
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from mmcore.runtime.int8_kernels import signed_gemm_is_exact, signed_weights


def u8s8_figures(model_bytes: bytes, run: Callable[[bytes], np.ndarray],
                 as_built: np.ndarray | None = None) -> dict:
    """`run(graph bytes) -> outputs` on the gate's inputs; `as_built`: those outputs for `model_bytes` when the gate
    has them already. {} for a graph with no u8u8 weights."""
    model = onnx.load_from_string(model_bytes)
    if signed_weights(model) == 0:
        return {}
    if not signed_gemm_is_exact():
        return {"u8s8_checked": False}
    want = run(model_bytes) if as_built is None else as_built
    got = run(model.SerializeToString())
    return {"u8s8_checked": True, "u8s8_max_abs_diff": float(np.abs(np.asarray(got) - np.asarray(want)).max())}
