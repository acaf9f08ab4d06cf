"""LLaVA decoders with an int8 KV cache (GroupQueryAttention PER_CHANNEL, static scales calibrated at build on
transformers' post-rotary K and V): what the manifest records, that the scales are what the kernel stores, that the
gate bounds the cache against its same-weights sibling and fails a wrong one, and that it serves first on CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphs.build import _selected
from graphs.emit import kv_quant
from graphs.families.base import Source
from graphs.families.llava import kv_calibration, kv_parity, parity
from graphs.families.llava.decoder_graph import build_decoder
from graphs.families.llava.driver import decoder_spec
from graphs.families.llava.family import FAMILY
from graphs.families.llava.reference import Reference
from graphs.emit.quantize import Int8Weights
from mmcore.manifest import CPU_EP
from mmcore.runtime.kv_runner import OrtDecoderRunner

NAMES = ["clip-llama", "siglip-qwen2"]
KV = {"cpu-int8-kv8": "cpu-int8", "cpu-int4-kv8": "cpu-int4"}


@pytest.fixture(scope="module")
def loaded(siglip_qwen2):
    return FAMILY.load(Source(siglip_qwen2.name, directory=siglip_qwen2))


@pytest.mark.parametrize("name", NAMES)
def test_manifest_records_the_cache_and_gates_it(built, name):
    variants = built[name][1].graphs["decoder"].variants
    for variant, sibling in KV.items():
        v = variants[variant]
        assert (v.kv_cache.dtype, v.kv_cache.bits, v.kv_cache.quantization) == ("int8", 8, "PER_CHANNEL")
        assert "post-rotary" in v.kv_cache.calibration and "absmax / 127" in v.kv_cache.calibration
        assert v.precision == variants[sibling].precision and variants[sibling].kv_cache is None
        f = v.parity
        assert f["kv_err_ratio_vs_fp32_cache"] <= kv_parity.KV_MAX_ERR_RATIO
        assert f["kv_err_ratio_vs_fp32_cache"] == pytest.approx(
            f["forced_logits_rms_err_over_std"] / variants[sibling].parity["forced_logits_rms_err_over_std"])
        assert f["kv_top1_gated"] and f["kv_top1_agreement_vs_fp32_cache"] >= kv_parity.KV_MIN_TOP1
        assert 0 <= f["kv_clipped_fraction"] < 0.01
        assert ("kv_err_ratio_vs_fp32_cache", "max", kv_parity.KV_MAX_ERR_RATIO) in parity.bounds(v.precision, f)
        assert f["forced_logits_rms_err_over_std"] <= parity.NOISE_REL[v.precision]  # its own gate vs the reference


@pytest.mark.parametrize("name", NAMES)
def test_int8_cache_decoder_is_the_first_cpu_decoder(built, name):
    out, m = built[name]
    entry = m.graphs["decoder"]
    assert entry.variant_for(CPU_EP)[0] == "cpu-int8-kv8"
    gqa = [n for n in onnx.load(out / entry.variants["cpu-int8-kv8"].file).graph.node
           if n.op_type == "GroupQueryAttention"]
    attrs = {a.name: (a.s.decode() if a.type == onnx.AttributeProto.STRING else a.i) for a in gqa[0].attribute}
    assert attrs["k_quant_type"] == attrs["v_quant_type"] == "PER_CHANNEL" and attrs["kv_cache_bit_width"] == 8
    assert attrs["do_rotary"] == 1 and len(gqa[0].input) == 14 and gqa[0].input[12].endswith("k_scale")


def test_asking_for_a_kv_variant_builds_its_sibling():
    picked = _selected(FAMILY, ["vision/cpu-fp32", "decoder/cpu-int8-kv8"])
    assert picked["decoder"] == ["cpu-int8-kv8", "cpu-int8"]


def test_the_kernel_caches_the_rotated_key_at_the_calibrated_scale(loaded):
    """Prefill a context through the kv8 graph: its int8 cache is transformers' post-rotary K (and V) divided by
    the calibrated scale and rounded (fp32 weights, so the float K is the reference's to rounding): the scales apply
    to what the kernel really stores, the rotated key."""
    ck, ref = loaded.ck, Reference(loaded.ck)
    quant = kv_calibration.calibrate(loaded, 8)
    proto = build_decoder(ck, loaded.weights, kv_cache=quant)
    inp = parity.Inputs(ref)
    ids = inp.rows[1]  # text only: the decoder's own input embeddings, no vision error
    runner = OrtDecoderRunner(parity.session(proto.SerializeToString()), decoder_spec(ck), 2, len(ids) + 1,
                              cache=kv_calibration.cache_entry(8))
    runner.prefill(0, inp.embeds(ids))
    k, v = ref.kv(ids, None)[0]  # layer 0 (1,kvh,S,hs): later layers read attention over the quantized cache
    for cached, x, s in ((runner._host[0][0], k, quant.k_scales[0]), (runner._host[1][0], v, quant.v_scales[0])):
        q = np.clip(np.round(x[0] / s[:, None, :]), -127, 127)  # (kvh,S,hs)
        got = cached[0, :, :len(ids)].astype(np.int32)
        assert np.abs(got - q).max() <= 1  # a value on a rounding boundary may go either way
        assert np.mean(got == q) > 0.99


@pytest.mark.parametrize("factor, clipped", [(32.0, False), (0.25, True)])
def test_gate_fails_a_cache_at_the_wrong_scale(loaded, factor, clipped):
    """Scales 32x too coarse (a ~3-bit cache) or 4x too fine (ranges clipped): the error vs the reference past
    KV_MAX_ERR_RATIO x the float-cache sibling's."""
    ck, ref = loaded.ck, Reference(loaded.ck)
    inp, good = parity.Inputs(ref), kv_calibration.calibrate(loaded, 8)
    wrong = kv_quant.KvCacheQuant(8, [s * factor for s in good.k_scales], [s * factor for s in good.v_scales], "-")
    base, sibling = parity.decoder_run(ck, inp, build_decoder(ck, loaded.weights, Int8Weights()).SerializeToString())
    f, mine = parity.decoder_run(ck, inp, build_decoder(ck, loaded.weights, Int8Weights(), kv_cache=wrong)
                                 .SerializeToString(), kv_calibration.cache_entry(8))
    key = "forced_logits_rms_err_over_std"
    f |= kv_parity.kv_figures(mine, sibling, f[key], base[key], kv_parity.clipped_fraction(ref, inp, wrong))
    assert (f["kv_clipped_fraction"] > 0.1) == clipped
    with pytest.raises(parity.ParityError, match="decoder cpu-int8-kv8: .*kv_err_ratio_vs_fp32_cache"):
        parity.check("decoder", "cpu-int8-kv8", "int8", f)
