"""The reference preset, built for real once: the fusion counts and parity figures the issue states its targets on."""

import pytest

from graphs.build import build_artifacts
from graphs.verify import INT8_MIN_COSINE, INT8_MIN_TOP1


@pytest.mark.slow
def test_reference_build_fuses_every_attention_and_passes_the_gate(tmp_path):
    manifest = build_artifacts("reference", tmp_path / "reference")
    vision, decoder = manifest.graphs["vision"].variants, manifest.graphs["decoder"].variants
    assert vision["cpu-fp32"].fusions["Attention"] == 6
    assert vision["cpu-int8"].fusions["MultiHeadAttention"] == 6
    assert decoder["cpu-fp32"].fusions["GroupQueryAttention"] == 6
    assert decoder["cpu-int8"].fusions["GroupQueryAttention"] == 6
    for graph in (vision, decoder):
        for v in graph.values():
            if v.precision == "fp32":
                assert v.parity["greedy_identical"] is True
    assert vision["cpu-int8"].parity["feature_cosine"] >= INT8_MIN_COSINE
    assert decoder["cpu-int8"].parity["top1_agreement"] >= INT8_MIN_TOP1
