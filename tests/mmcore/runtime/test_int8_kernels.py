"""The int8 weight encoding a replica chooses for its CPU, and the re-encoded graphs it runs.

On every machine: the choice follows the CPU's flags, and the probe agrees with them (a VNNI CPU multiplies u8s8
exactly, an AVX2-only one clips: the premise the choice rests on). Where the u8s8 kernels exist: a built graph
re-encoded as u8s8 gives the u8u8 graph's outputs bit for bit, through the serving stages' own openers. Elsewhere
those tests skip with the reason, as the GPU tests do on a host without one.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mmcore.manifest import CPU_EP, Manifest
from mmcore.runtime.int8_kernels import (U8S8, U8U8, Int8Choice, choose_encoding, cpu_flags, graph_source,
                                         signed_gemm_is_exact, signed_weights, split_forced, vnni_flags)
from mmcore.runtime.ort_session import cpu_session, open_stage_session
from mmcore.runtime.providers import CPUSpec

VNNI = bool(vnni_flags(cpu_flags()))
needs_vnni = pytest.mark.skipif(not VNNI, reason="this CPU has no VNNI/AMX u8s8 kernel (flags: AVX2 path): "
                                                 "MLAS's u8s8 GEMM saturates here, so u8s8 is never chosen")


def test_the_probe_agrees_with_the_cpu_flags():
    """AVX-512 VNNI / AVX-VNNI / AMX: u8s8 sums in int32 and is exact; without them vpmaddubsw clips a pair sum."""
    assert signed_gemm_is_exact() == VNNI, sorted(f for f in cpu_flags() if "avx" in f or "amx" in f)


def test_this_machine_gets_the_encoding_its_flags_call_for():
    choice = choose_encoding()
    assert choice.encoding == (U8S8 if VNNI else U8U8), choice.reason


@pytest.mark.parametrize("flags, exact, encoding, why", [
    ({"avx2", "fma"}, True, U8U8, "no avx512_vnni/avx_vnni/amx_int8"),
    ({"avx2", "avx512f"}, True, U8U8, "u8s8 would saturate"),  # AVX-512 without VNNI clips too
    ({"avx2", "avx_vnni"}, True, U8S8, "avx_vnni"),
    ({"avx512f", "avx512_vnni", "amx_int8"}, True, U8S8, "avx512_vnni+amx_int8"),
    ({"avx512f", "avx512_vnni"}, False, U8U8, "probe saw its GEMM clip"),
])
def test_choice_from_flags_and_probe(flags, exact, encoding, why):
    choice = choose_encoding(frozenset(flags), exact=lambda: exact)
    assert choice.encoding == encoding and why in choice.reason


def test_forcing_an_encoding():
    assert choose_encoding(frozenset({"avx512_vnni"}), U8U8, exact=lambda: True).encoding == U8U8
    assert choose_encoding(frozenset({"avx2"}), U8S8, exact=lambda: True).reason == "forced by prefer_variants"
    with pytest.raises(ValueError, match="u8s8 GEMM saturates.*wrong answers"):
        choose_encoding(frozenset({"avx2"}), U8S8, exact=lambda: False)
    with pytest.raises(ValueError, match="'s8s8'"):
        choose_encoding(frozenset(), "s8s8")


def test_prefer_variants_may_name_an_encoding():
    assert split_forced(["cpu-int8-kv8@u8u8", "cpu-int8", "cpu-fp32@u8s8"]) == (
        ["cpu-int8-kv8", "cpu-int8", "cpu-fp32"], {"cpu-int8-kv8": U8U8, "cpu-fp32": U8S8})
    assert split_forced(None) == (None, {})
    with pytest.raises(ValueError, match="'cpu-int8@int8'.*after '@'"):
        split_forced(["cpu-int8@int8"])


def test_cpu_flags_of_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_vnni"} and cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if "weight" in i.name}


def test_re_encoding_shifts_every_u8u8_weight_and_nothing_else(tiny_artifacts_dir):
    man = Manifest.read(tiny_artifacts_dir)
    path = tiny_artifacts_dir / man.graphs["vision"].variants["cpu-int8"].file
    before, model = onnx.load(str(path)), onnx.load(str(path))
    count = signed_weights(model)
    old, new = _weights(before), _weights(model)
    shifted = [n for n in old if old[n].dtype != new[n].dtype]
    assert count == len([n for n in shifted if not n.endswith("zero_point")]) > 0
    for name in shifted:
        assert old[name].dtype == np.uint8 and new[name].dtype == np.int8
        want = old[name].astype(np.int16) - 128 if not name.endswith("zero_point") else np.zeros_like(old[name])
        np.testing.assert_array_equal(new[name].astype(np.int16), want)
    rowwise = man.graphs["decoder"].variants["cpu-int8-rowwise"]  # MatMulNBits: not the u8u8 kind
    assert signed_weights(onnx.load(str(tiny_artifacts_dir / rowwise.file))) == 0
    u8s8 = Int8Choice(U8S8, "test")
    assert graph_source(tiny_artifacts_dir / rowwise.file, u8s8) == (str(tiny_artifacts_dir / rowwise.file), False)
    assert graph_source(path, Int8Choice(U8U8, "test")) == (str(path), True)  # read to find out, not re-encoded


@needs_vnni
def test_u8s8_vision_graph_gives_the_u8u8_features_bit_for_bit(tiny_artifacts_dir):
    man = Manifest.read(tiny_artifacts_dir)
    variant = man.graphs["vision"].variants["cpu-int8"]
    path = tiny_artifacts_dir / variant.file
    source, has_u8u8 = graph_source(path, choose_encoding())
    assert isinstance(source, bytes) and has_u8u8
    size = man.vision.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, size, size), dtype=np.uint8)
    want = cpu_session(str(path)).run(None, {"pixels": pixels})[0]
    np.testing.assert_array_equal(cpu_session(source).run(None, {"pixels": pixels})[0], want)
    assert variant.parity["u8s8_checked"] is True and variant.parity["u8s8_max_abs_diff"] == 0.0  # the build's


def test_the_vision_stage_opener_reports_and_honours_the_choice(tiny_artifacts_dir):
    graph = Manifest.read(tiny_artifacts_dir).graphs["vision"]
    chosen = open_stage_session(tiny_artifacts_dir, graph, [CPUSpec()], prefer=["cpu-int8"], stage="vision")
    assert (chosen.variant, chosen.int8.encoding) == ("cpu-int8", choose_encoding().encoding)
    forced = open_stage_session(tiny_artifacts_dir, graph, [CPUSpec()], prefer=["cpu-int8@u8u8"], stage="vision")
    assert (forced.variant, forced.int8.encoding, forced.int8.reason) == ("cpu-int8", U8U8,
                                                                           "forced by prefer_variants")
    assert forced.source() == str(tiny_artifacts_dir / graph.variants["cpu-int8"].file)  # the file as built
    fp32 = open_stage_session(tiny_artifacts_dir, graph, [CPUSpec()], prefer=["cpu-fp32"], stage="vision")
    assert fp32.int8 is None and fp32.provider == CPU_EP


@needs_vnni
def test_the_decoder_runs_u8s8_with_the_u8u8_logits(tiny_artifacts_dir):
    from serve_app.engine.config import EngineConfig
    from serve_app.engine.loader import open_planned_runner

    runs = {}
    for prefer in (["cpu-int8-kv8"], ["cpu-int8-kv8@u8u8"]):
        opened = open_planned_runner(tiny_artifacts_dir, EngineConfig(slots=2, max_context=64), prefer=prefer)
        width = opened.manifest.decoder.hidden_size
        x = np.random.default_rng(1).standard_normal((9, width)).astype(np.float32)
        first = opened.runner.prefill(0, x).copy()
        step = opened.runner.decode(1, x[:1], np.array([9], np.int32)).copy()
        runs[opened.int8.encoding] = (first, step)
    assert set(runs) == {U8S8, U8U8}
    for a, b in zip(runs[U8S8], runs[U8U8]):
        np.testing.assert_array_equal(a, b)
