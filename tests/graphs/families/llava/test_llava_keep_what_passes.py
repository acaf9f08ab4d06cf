"""A LLaVA checkpoint whose int4 decoder fails its gate still builds and serves the variants that passed; the int4
variant's -kv8 sibling goes with it, since its cache is gated against it.

The failing int4 graph is a real wrong graph (layer 0's o_proj used untransposed) judged by the real gate against
transformers: an int4 decoder that misses its top-1 bound on its own needs a checkpoint far larger than a test can
build (on the tiny random checkpoints int4 has too few decisive contexts for its top-1 figure to be gated).
"""

from __future__ import annotations

import logging

import pytest

from graphs.build import build_artifacts
from graphs.emit.quantize import BlockInt4Weights
from graphs.families.base import VariantSpec
from graphs.families.llava.family import FAMILY
from graphs.families.llava.variants import VARIANTS
from mmcore.manifest import CPU_EP, Manifest
from serve_app.engine import EngineConfig
from serve_app.engine.loader import open_runner


def _wrong_int4_decoder() -> VariantSpec:
    def build(model):
        from graphs.families.llava.decoder_graph import build_decoder

        weights = dict(model.weights)
        key = "text.layers.0.self_attn.o_proj.weight"
        weights[key] = weights[key].T.copy()  # square in the tiny checkpoints: hidden == heads x head_dim
        return build_decoder(model.ck, weights, BlockInt4Weights())
    return VariantSpec("decoder", "int4", (CPU_EP,), build, True)


@pytest.fixture(scope="module")
def int4_rejected(tmp_path_factory, siglip_qwen2):
    registry = {"vision": {"cpu-fp32": VARIANTS["vision"]["cpu-fp32"]},
                "decoder": {n: VARIANTS["decoder"][n] for n in ("cpu-int4-kv8", "cpu-fp32", "cpu-int8")}
                | {"cpu-int4": _wrong_int4_decoder()}}
    out, lines = tmp_path_factory.mktemp("llava_int4_rejected") / "out", []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FAMILY, "variants", registry)
        manifest = build_artifacts(siglip_qwen2, out, progress=lines.append)
    return out, manifest, lines


def test_the_failing_int4_and_its_kv8_are_left_out(int4_rejected):
    out, manifest, lines = int4_rejected
    decoder = manifest.graphs["decoder"]
    assert list(decoder.variants) == ["cpu-fp32", "cpu-int8"] and list(decoder.rejected) == ["cpu-int4-kv8",
                                                                                              "cpu-int4"]
    assert decoder.rejected["cpu-int4"].precision == "int4"
    assert decoder.rejected["cpu-int4"].reason.startswith("forced_logits_rms_err_over_std ")
    assert decoder.rejected["cpu-int4-kv8"].reason == ("its float-cache sibling cpu-int4 was rejected (its cache "
                                                       "is gated against it)")
    assert decoder.rejected["cpu-int4-kv8"].parity["kv_err_ratio_vs_fp32_cache"] > 0  # measured all the same
    assert not list(out.glob("decoder.cpu-int4*"))
    assert [line for line in lines if line.startswith("rejected ")] == [
        f"rejected decoder/{n}: {decoder.rejected[n].reason}" for n in ("cpu-int4-kv8", "cpu-int4")]
    assert Manifest.read(out) == manifest


def test_serving_takes_int8_over_the_rejected_int4(int4_rejected, caplog):
    out, _, _ = int4_rejected
    with caplog.at_level(logging.WARNING, logger="mmcore.manifest"):
        _, name, _ = open_runner(out, EngineConfig(slots=2), prefer=["cpu-int4-kv8", "cpu-int4", "cpu-int8"])
    assert name == "cpu-int8"
    assert [r.getMessage().split(" was ")[0] for r in caplog.records] == ["prefer_variants: cpu-int4-kv8",
                                                                          "prefer_variants: cpu-int4"]
