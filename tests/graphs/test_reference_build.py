"""The reference preset, built for real once: the fusion counts the issue states its targets on (the build itself
enforces the parity figures: a variant past tolerance fails the build)."""

import pytest

from graphs.build import build_artifacts


@pytest.mark.slow
def test_reference_build_fuses_every_attention(tmp_path):
    manifest = build_artifacts("reference", tmp_path / "reference")
    vision, decoder = manifest.graphs["vision"].variants, manifest.graphs["decoder"].variants
    assert vision["cpu-fp32"].fusions["Attention"] == 6
    assert vision["cpu-int8"].fusions["MultiHeadAttention"] == 6
    assert decoder["cpu-fp32"].fusions["GroupQueryAttention"] == 6
    assert decoder["cpu-int8"].fusions["GroupQueryAttention"] == 6
