"""Decoder variants with a quantized KV cache (GroupQueryAttention int8 / 4-bit, static calibrated scales): what the
manifest says, that the kernel caches in place on ragged rows and in chunks, and that rows stay independent."""

import numpy as np
import pytest

from graphs.families.own.config import get_preset
from graphs.families.own.kv_calibration import QMAX, calibrate, kv_absmax
from mmcore.manifest import Manifest, check_session_io, variant_dtypes
from graphs.verify import KV_MAX_REL_ERR
from mmcore.runtime.kv_runner import OrtDecoderRunner
from mmcore.runtime.ort_session import cpu_session

TINY = get_preset("tiny")
KV_VARIANTS = {"cpu-int8-kv8": ("int8", 8, TINY.decoder.head_dim),
               "cpu-int8-rowwise-kv8": ("int8", 8, TINY.decoder.head_dim)}


@pytest.fixture(scope="module")
def manifest(tiny_artifacts_dir):
    return Manifest.read(tiny_artifacts_dir)


def _decoder(artifacts, manifest, variant: str, slots: int, threads: int = 1) -> OrtDecoderRunner:
    """The serving runner over the variant, its cache allocated from the manifest's Variant.kv_cache."""
    v = manifest.graphs["decoder"].variants[variant]
    return OrtDecoderRunner(cpu_session(str(artifacts / v.file), threads), manifest.decoder, slots,
                            TINY.decoder.max_positions, cache=v.kv_cache)


def _cache(dec: OrtDecoderRunner) -> list[np.ndarray]:
    return [a for kind in dec._host for a in kind]  # per K/V and layer (slots+1,nh,T,last)


@pytest.mark.parametrize("variant", sorted(KV_VARIANTS))
def test_manifest_records_the_cache_dtype_and_its_calibration(tiny_artifacts_dir, manifest, variant):
    dtype, bits, last = KV_VARIANTS[variant]
    v = manifest.graphs["decoder"].variants[variant]
    assert (v.kv_cache.dtype, v.kv_cache.bits, v.kv_cache.quantization) == (dtype, bits, "PER_CHANNEL")
    assert "absmax" in v.kv_cache.calibration and "calibration contexts" in v.kv_cache.calibration
    assert v.kv_cache.last_dim(TINY.decoder.head_dim) == last
    dec = _decoder(tiny_artifacts_dir, manifest, variant, 1)
    assert all(a.dtype == np.dtype(dtype) and a.shape[-1] == last for a in _cache(dec))
    entry = manifest.graphs["decoder"]
    check_session_io(tiny_artifacts_dir / v.file, entry, dec.session, variant_dtypes(manifest.decoder, v))
    with pytest.raises(ValueError, match="past_key.0' is int8 in the graph, float32 in the manifest"):
        check_session_io(tiny_artifacts_dir / v.file, entry, dec.session)  # the entry lists the float cache
    assert v.parity["kv_logits_err_rel_std"] <= KV_MAX_REL_ERR
    assert entry.variants["cpu-int8"].kv_cache is None and manifest.decoder.cache_dtype == "float32"


def test_scales_are_the_calibration_absmax_over_qmax():
    from graphs.families.own.weights import load_model

    model = load_model(TINY)
    k_max, v_max = kv_absmax(model)  # (L,nh,hs)
    assert k_max.shape == (TINY.decoder.layers, TINY.decoder.heads, TINY.decoder.head_dim) and (k_max > 0).all()
    for bits in (8, 4):
        q = calibrate(model, bits)
        np.testing.assert_allclose(np.stack(q.k_scales), k_max / QMAX[bits], rtol=1e-6)
        np.testing.assert_allclose(np.stack(q.v_scales), v_max / QMAX[bits], rtol=1e-6)


def test_int8_cache_logits_match_the_fp32_cache_within_the_gate(tiny_artifacts_dir, manifest):
    """Ragged rows prefilled one by one, then batched decode steps: the int8 cache stays within its gate bound of
    the same weights over a float32 cache, step after step (errors do not compound past it)."""
    rng = np.random.default_rng(0)
    d = TINY.decoder
    decs = {v: _decoder(tiny_artifacts_dir, manifest, v, 4) for v in ("cpu-int8-rowwise", "cpu-int8-rowwise-kv8")}
    prompts = [rng.standard_normal((5 + 7 * r, d.width)).astype(np.float32) for r in range(4)]
    steps = rng.standard_normal((12, 4, d.width)).astype(np.float32)
    out = {}
    for name, dec in decs.items():
        got = [np.stack([dec.prefill(r, p) for r, p in enumerate(prompts)])]
        lengths = np.array([len(p) for p in prompts])
        for x in steps:
            got.append(dec.decode(4, x, lengths).copy())
            lengths += 1
        out[name] = np.stack(got)  # (13,4,V)
    base, mine = out["cpu-int8-rowwise"], out["cpu-int8-rowwise-kv8"]
    err = np.abs(mine - base).max() / base.std()
    assert 0 < err <= KV_MAX_REL_ERR  # quantized (not a float cache in disguise), within the bound


def test_int8_cache_chunked_prefill_caches_what_a_whole_prefill_does(tiny_artifacts_dir, manifest):
    """A prompt prefilled in two chunks (the engine's staging path: sequence_length > 1 over a past) writes the same
    int8 cache bytes and the same last logits as one whole prefill. Row-wise weights: the K/V projections of a row
    do not depend on which other positions share the call."""
    d = TINY.decoder
    x = np.random.default_rng(1).standard_normal((30, d.width)).astype(np.float32)
    whole = _decoder(tiny_artifacts_dir, manifest, "cpu-int8-rowwise-kv8", 1)
    chunked = _decoder(tiny_artifacts_dir, manifest, "cpu-int8-rowwise-kv8", 1)
    a = whole.prefill(0, x)
    chunked.prefill(0, x[:17])
    b = chunked.prefill(0, x[17:], start=17)
    assert all(np.array_equal(w, c) for w, c in zip(_cache(whole), _cache(chunked)))
    np.testing.assert_allclose(a, b, atol=1e-4)
    keys = _cache(whole)[0]
    assert (keys[0, :, 30:] == 0).all() and (keys[0, :, :30] != 0).any()  # only 30 positions


@pytest.mark.parametrize("threads", [1, 2])
def test_rowwise_int8_cache_rows_do_not_depend_on_their_batch(tiny_artifacts_dir, manifest, threads):
    """Static scales: what a row writes into and reads from the int8 cache is its own, whatever shares the step."""
    d = TINY.decoder
    dec = _decoder(tiny_artifacts_dir, manifest, "cpu-int8-rowwise-kv8", 4, threads)
    rng = np.random.default_rng(0)
    for slot in range(4):
        dec.prefill(slot, rng.standard_normal((3 + 2 * slot, d.width)).astype(np.float32))
    lengths = np.array([3 + 2 * slot for slot in range(4)])
    x = rng.standard_normal((4, d.width)).astype(np.float32)
    together = dec.decode(4, x, lengths)[0].copy()  # each call writes the same position again
    alone = dec.decode(1, x[:1], lengths[:1])[0].copy()
    loud = x.copy()
    loud[1:] *= 50.0
    crowded = dec.decode(4, loud, lengths)[0].copy()
    assert np.array_equal(together, alone) and np.array_equal(crowded, alone)


def test_an_int8_cache_past_its_bound_fails_the_gate():
    """The -kv8 variants are ordinary variants: a cache error or top-1 past its bound fails the build."""
    from graphs.verify import INT8_MIN_TOP1, ParityError, check

    ok = {"top1_agreement": 1.0, "kv_logits_err_rel_std": KV_MAX_REL_ERR, "kv_top1_agreement_vs_fp32_cache": 1.0}
    check("decoder", "cpu-int8-kv8", "int8", ok)
    with pytest.raises(ParityError, match="cpu-int8-kv8: kv_logits_err_rel_std 0.26 > 0.25"):
        check("decoder", "cpu-int8-kv8", "int8", ok | {"kv_logits_err_rel_std": 0.26})
    with pytest.raises(ParityError, match="kv_top1_agreement_vs_fp32_cache"):
        check("decoder", "cpu-int8-kv8", "int8", ok | {"kv_top1_agreement_vs_fp32_cache": INT8_MIN_TOP1 - 0.01})
