"""Which 8-bit GEMM this CPU runs exactly and fast, and the int8 graphs' weights re-encoded for it at load.

The `cpu-int8*` graphs are built once and served on any x86 node, so their weights are stored as uint8 with zero
point 128 (graphs/emit/quantize.py): MLAS then runs its u8u8 GEMM, which widens to int16 before it adds and is exact
on every CPU. Its u8s8 GEMM (int8 weights, zero point 0) takes the same 8-bit values and is exact too where MLAS
has a VNNI kernel (AVX-512 VNNI, AVX-VNNI, AMX: products summed straight into int32), and 2-3x faster there; without
VNNI it adds pairs of u8*s8 products in a saturating int16 (vpmaddubsw: 255*127*2 > 32767 clips) and is wrong.

Both encodings give the same integer sums, so the same outputs bit for bit: sum(x*(w+128)) - 128*sum(x) ==
sum(x*w). At replica start:

    flags = cpu_flags()                        /proc/cpuinfo
    choice = choose_encoding(flags, forced)    u8s8 if a VNNI flag is there AND the probe multiplies exactly
    source = graph_source(path, choice)        the file as built (u8u8), or its bytes with every u8u8 weight
                                               re-encoded as int8 (q - 128, zero point 0): ~30 ms for 38 weights

The probe runs this ORT build's own DynamicQuantizeMatMul on inputs that saturate an int16 pair sum, so a CPU whose
flags promise VNNI but whose kernel (or OS: AMX needs a permission) does not deliver falls back to u8u8.
Re-encoding at load costs less than storing both encodings: no second file to build, gate, push and fetch, and
the time is small next to the session's own creation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

U8U8, U8S8 = "u8u8", "u8s8"
ENCODINGS = (U8U8, U8S8)
# MLAS (onnxruntime/core/mlas/lib/platform.cpp) picks a u8s8 kernel that sums in int32 when the CPU reports one of
# these; AMX machines report avx512_vnni too.
SIGNED_EXACT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
WEIGHT_ZERO_POINT = 128  # what the build stores (graphs/emit/quantize.py)
# op type -> (index of the weight input, index of its zero point)
_WEIGHT_INPUTS = {"DynamicQuantizeMatMul": (1, 3), "MatMulIntegerToFloat": (1, 5)}


@dataclass(frozen=True)
class Int8Choice:
    encoding: str  # u8u8 or u8s8
    reason: str  # one line: the flags and the probe, or "forced by prefer_variants"

    def describe(self) -> str:
        return f"{self.encoding} ({self.reason})"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's feature flags (x86 `flags`, Arm `Features`); empty where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def reported_isa(flags: frozenset[str] | None = None) -> str:
    """The flags a benchmark figure depends on, as benchmarks print them beside it: "avx2 avx512f avx512_vnni ..."."""
    flags = cpu_flags() if flags is None else flags
    return " ".join(f for f in REPORTED_FLAGS if f in flags)


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return "?"
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")


def vnni_flags(flags: frozenset[str]) -> list[str]:
    return [f for f in SIGNED_EXACT_FLAGS if f in flags]


def _probe_graph(k: int, n: int, w: np.ndarray) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(n, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(n, np.int8), "w_zero_point")]
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "w_scale", "w_zero_point"], ["y"],
                            domain="com.microsoft")
    graph = helper.make_graph([node], "u8s8_probe", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString()


@lru_cache(maxsize=1)
def signed_gemm_is_exact() -> bool:
    """Does this ORT build, on this CPU, multiply uint8 activations by int8 weights exactly? Activations of 255 (x
    in [0, 1] quantizes to scale 1/255, zero point 0) against weights of +-127: any int16 pair sum would clip."""
    import onnxruntime as ort

    k, n = 256, 32
    rng = np.random.default_rng(0)
    w = np.where(rng.random((k, n)) < 0.9, 127, -127).astype(np.int8)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    session = ort.InferenceSession(_probe_graph(k, n, w), so, providers=["CPUExecutionProvider"])
    for m in (1, 16):  # one row (a decode step's GEMV-like shape) and a block of rows
        x = np.ones((m, k), np.float32)
        x[:, 1::7] = 0.0  # pins the quantization range to [0, 1] whatever the row: scale 1/255, zero point 0
        got = session.run(None, {"x": x})[0]
        want = (np.rint(x * 255.0) @ w.astype(np.float64)) / 255.0
        if not np.allclose(got, want, rtol=1e-5, atol=1e-3):
            log.info("int8 probe: u8s8 DynamicQuantizeMatMul is off by up to %.1f at %d rows",
                     float(np.abs(got - want).max()), m)
            return False
    return True


def choose_encoding(flags: frozenset[str] | None = None, forced: str | None = None,
                    exact=signed_gemm_is_exact) -> Int8Choice:
    """u8s8 where the CPU has a VNNI kernel and the probe agrees; `forced` (from prefer_variants) wins, except that
    u8s8 forced on a CPU where the probe sees it clip is refused: its answers would be wrong."""
    flags = cpu_flags() if flags is None else flags
    have = vnni_flags(flags)
    if forced is not None:
        if forced not in ENCODINGS:
            raise ValueError(f"int8 encoding {forced!r}: expected one of {', '.join(ENCODINGS)}")
        if forced == U8S8 and not exact():
            raise ValueError("prefer_variants forces u8s8, but this CPU's u8s8 GEMM saturates (no VNNI kernel: "
                             f"flags {have or 'without ' + '/'.join(SIGNED_EXACT_FLAGS)}); it would give wrong "
                             "answers: force u8u8 or leave the encoding to the replica")
        return Int8Choice(forced, "forced by prefer_variants")
    if not have:
        return Int8Choice(U8U8, f"no {'/'.join(SIGNED_EXACT_FLAGS)} in the CPU flags: u8s8 would saturate")
    if not exact():
        return Int8Choice(U8U8, f"CPU flags {'+'.join(have)}, but the u8s8 probe saw its GEMM clip")
    return Int8Choice(U8S8, f"CPU flags {'+'.join(have)}; the u8s8 probe multiplied exactly")


def signed_weights(model: onnx.ModelProto) -> int:
    """Re-encode, in place, every u8u8 weight (uint8, zero point 128 throughout) of the int8 ops as int8 with zero
    point 0; -> how many. Others (another zero point, already int8) are left as they are."""
    inits = {i.name: i for i in model.graph.initializer}
    done = set()
    for node in model.graph.node:
        where = _WEIGHT_INPUTS.get(node.op_type)
        if where is None or len(node.input) <= where[1]:
            continue
        w_name, zp_name = node.input[where[0]], node.input[where[1]]
        if w_name in done or w_name not in inits or zp_name not in inits:
            continue
        w, zp = numpy_helper.to_array(inits[w_name]), numpy_helper.to_array(inits[zp_name])
        if w.dtype != np.uint8 or zp.dtype != np.uint8 or not np.all(zp == WEIGHT_ZERO_POINT):
            continue
        inits[w_name].CopyFrom(numpy_helper.from_array((w.astype(np.int16) - WEIGHT_ZERO_POINT).astype(np.int8),
                                                       w_name))
        inits[zp_name].CopyFrom(numpy_helper.from_array(np.zeros(zp.shape, np.int8), zp_name))
        done.add(w_name)
    return len(done)


def graph_source(path: str | Path, choice: Int8Choice, has_u8u8: bool | None = None) -> tuple[str | bytes, bool]:
    """What to open an ORT session on for an int8 graph: the file as built, or (u8s8 chosen) its bytes with the
    weights re-encoded; -> (path or bytes, whether the graph has u8u8 weights at all). `has_u8u8`: known from the
    manifest (the build's check ran on it), so a u8u8 choice need not read the graph; None: read it to find out."""
    if has_u8u8 is False or (has_u8u8 and choice.encoding == U8U8):
        return str(path), bool(has_u8u8)
    model = onnx.load(str(path))
    found = signed_weights(model) > 0  # none in MatMulNBits (rowwise) graphs: the choice does not apply there
    if found and choice.encoding == U8S8:
        return model.SerializeToString(), True
    return str(path), found


def split_forced(prefer: list[str] | None) -> tuple[list[str] | None, dict[str, str]]:
    """prefer_variants may name an encoding: "cpu-int8@u8u8" -> (["cpu-int8"], {"cpu-int8": "u8u8"})."""
    if prefer is None:
        return None, {}
    names, forced = [], {}
    for entry in prefer:
        name, sep, encoding = entry.partition("@")
        if sep:
            if encoding not in ENCODINGS:
                raise ValueError(f"prefer_variants: {entry!r}: the encoding after '@' must be one of "
                                 f"{', '.join(ENCODINGS)}")
            forced[name] = encoding
        names.append(name)
    return names, forced
