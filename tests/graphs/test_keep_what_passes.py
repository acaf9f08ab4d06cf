"""A build keeps the variants that pass their parity gate: one failing variant is left out (no file, a `rejected`
record with its figures and reason, one output line), and the build fails only when a graph keeps no variant or a
variant named in --variants fails. Serving never picks a rejected variant.

The failing variants are real wrong graphs (a weight used untransposed, a classic export slip: a decoder layer's
out-projection, the vision tower's output projection) judged by the real gate: deterministic on any CPU, unlike an
int4 variant that misses top-1 on some random checkpoint (on the tiny test checkpoints int4 has too few decisive
contexts to be top-1 gated at all). Each test builds the own family's tiny preset with a few variants only, to keep
the CPU cost down.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging

import pytest
import torch

from graphs.cli import main
from graphs.families.own.decoder_graph import build_decoder
from graphs.families.own.family import FAMILY
from graphs.families.own.variants import VARIANTS, VariantSpec
from graphs.families.own.vision_graph import build_vision
from graphs.gate import GateResult, ParityError, settle
from mmcore.manifest import CPU_EP, MANIFEST, Manifest
from serve_app.engine import EngineConfig
from serve_app.engine.loader import open_runner
from serve_app.encoder.session import open_vision_session
from serve_app.stages.options import VisionOptions


def _transposed(model, linear):
    """A copy of model with one square weight used untransposed: `linear` picks it (model -> nn.Linear)."""
    wrong = copy.deepcopy(model)  # the reference itself must stay right
    out = linear(wrong)
    with torch.no_grad():
        out.weight.copy_(out.weight.T.clone())
    return wrong


def _wrong_int8_decoder() -> VariantSpec:
    def build(model):
        from graphs.emit.quantize import Int8Weights
        return build_decoder(_transposed(model, lambda m: m.decoder.blocks[0].attn.out), quantize=Int8Weights())
    return VariantSpec("decoder", "int8", (CPU_EP,), build, contrib=True)


def _wrong_int8_vision() -> VariantSpec:
    def build(model):
        from graphs.emit.quantize import Int8Weights
        return build_vision(_transposed(model, lambda m: m.vision.proj), "cpu", quantize=Int8Weights())
    return VariantSpec("vision", "int8", (CPU_EP,), build, contrib=True)


def _use(monkeypatch, registry: dict) -> None:
    """Build the own family with `registry` as its variants (what the family-agnostic build emits and gates)."""
    monkeypatch.setattr(FAMILY, "variants", registry)
    monkeypatch.setattr("graphs.parity.VARIANTS", registry)


def _build(tmp_path, capsys, *args) -> tuple[int, str, str]:
    code = main(["build", "--preset", "tiny", "--out", str(tmp_path / "out"), "--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def one_rejected(tmp_path_factory):
    """The tiny preset with vision cpu-int8 (wrong) and cpu-fp32, decoder cpu-int8 (wrong) + its cpu-int8-kv8 and
    cpu-fp32, via the CLI: (artifact dir, manifest, stdout, stderr)."""
    registry = {"vision": {"cpu-int8": _wrong_int8_vision(), "cpu-fp32": VARIANTS["vision"]["cpu-fp32"]},
                "decoder": {"cpu-int8-kv8": VARIANTS["decoder"]["cpu-int8-kv8"], "cpu-int8": _wrong_int8_decoder(),
                            "cpu-fp32": VARIANTS["decoder"]["cpu-fp32"]}}
    tmp = tmp_path_factory.mktemp("one_rejected")
    with pytest.MonkeyPatch.context() as mp:
        _use(mp, registry)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["build", "--preset", "tiny", "--out", str(tmp / "out"), "--quiet"])
    assert code == 0, err.getvalue()
    return tmp / "out", Manifest.read(tmp / "out"), out.getvalue(), err.getvalue()


def test_a_failing_variant_is_left_out_and_recorded(one_rejected):
    out, manifest, stdout, stderr = one_rejected
    decoder = manifest.graphs["decoder"]
    assert list(decoder.variants) == ["cpu-fp32"]
    assert list(decoder.rejected) == ["cpu-int8-kv8", "cpu-int8"]
    wrong = decoder.rejected["cpu-int8"]
    assert wrong.precision == "int8" and wrong.providers == [CPU_EP]
    assert wrong.reason.startswith("top1_agreement ") and wrong.parity["top1_agreement"] < 0.9  # its figures kept
    assert decoder.rejected["cpu-int8-kv8"].reason and decoder.rejected["cpu-int8-kv8"].parity
    assert not (out / "decoder.cpu-int8.onnx").exists() and not (out / "decoder.cpu-int8-kv8.onnx").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest.files(), "manifest.json"])
    assert "decoder.cpu-int8.onnx" not in manifest.files_sha256
    vision = manifest.graphs["vision"]
    assert list(vision.variants) == ["cpu-fp32"] and vision.rejected["cpu-int8"].reason.startswith("feature_cosine ")
    # one line per rejected variant naming it and the reason, and the summary names them too
    rejected = [("vision", "cpu-int8"), ("decoder", "cpu-int8-kv8"), ("decoder", "cpu-int8")]
    assert stderr.strip().splitlines() == [f"rejected {g}/{n}: {manifest.graphs[g].rejected[n].reason}"
                                           for g, n in rejected]
    assert stdout.endswith("2 graph variants passed the parity gate; left out, past their parity bounds: "
                           "vision/cpu-int8, decoder/cpu-int8-kv8, decoder/cpu-int8\n")


def test_the_manifest_round_trips(one_rejected):
    out, manifest, _, _ = one_rejected
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest == Manifest.read(out)


def test_serving_never_picks_a_rejected_variant(one_rejected, caplog):
    out, manifest, _, _ = one_rejected
    with caplog.at_level(logging.WARNING, logger="mmcore.manifest"):
        _, name, _ = open_runner(out, EngineConfig(slots=2), prefer=["cpu-int8-kv8", "cpu-int8", "cpu-fp32"])
    assert name == "cpu-fp32"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all("rejected by the build's parity gate" in w for w in warned)
    assert "cpu-int8 " in warned[1] and manifest.graphs["decoder"].rejected["cpu-int8"].reason in warned[1]


def test_the_vision_stage_never_picks_a_rejected_variant(one_rejected, caplog):
    out, manifest, _, _ = one_rejected
    with caplog.at_level(logging.WARNING, logger="mmcore.manifest"):
        opened = open_vision_session(out, VisionOptions(providers=[CPU_EP], prefer_variants=["cpu-int8", "cpu-fp32"]))
    assert opened.variant == "cpu-fp32" and opened.provider == CPU_EP
    assert [r.getMessage() for r in caplog.records] == [
        "prefer_variants: cpu-int8 was rejected by the build's parity gate "
        f"({manifest.graphs['vision'].rejected['cpu-int8'].reason}); trying the next"]


def test_nothing_left_for_a_provider_names_the_rejected(one_rejected):
    _, manifest, _, _ = one_rejected
    entry = manifest.graphs["decoder"].model_copy(update={"variants": {}})
    with pytest.raises(LookupError, match=r"no variant for CPUExecutionProvider; have \[\]; rejected at build: "
                                          r"cpu-int8-kv8 \(.+\); rejected at build: cpu-int8 \(top1_agreement"):
        entry.variant_for(CPU_EP, ["cpu-int8"])


def test_a_graph_with_no_passing_variant_fails_the_build(tmp_path, capsys, monkeypatch):
    _use(monkeypatch, {"vision": {"cpu-int8": VARIANTS["vision"]["cpu-int8"]},
                       "decoder": {"cpu-int8": _wrong_int8_decoder()}})
    code, stdout, stderr = _build(tmp_path, capsys)
    assert code == 1 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith(
        "mmserve build: error: parity gate rejected every decoder variant, nothing to serve: cpu-int8: "
        "top1_agreement ")
    assert list(tmp_path.iterdir()) == []  # no artifact, no temp dir


def test_a_variant_named_in_variants_that_fails_fails_the_build(tmp_path, capsys, monkeypatch):
    _use(monkeypatch, {"vision": {"cpu-int8": VARIANTS["vision"]["cpu-int8"]},
                       "decoder": {"cpu-int8": _wrong_int8_decoder(),
                                   "cpu-int8-rowwise": VARIANTS["decoder"]["cpu-int8-rowwise"]}})
    code, stdout, stderr = _build(tmp_path, capsys, "--variants", "vision/cpu-int8", "decoder/cpu-int8",
                                  "decoder/cpu-int8-rowwise")
    assert code == 1 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith(
        "mmserve build: error: parity gate failed for decoder cpu-int8 (named in --variants): top1_agreement ")
    assert list(tmp_path.iterdir()) == []


def _spec(same_weights_as=None) -> VariantSpec:
    return VariantSpec("decoder", "int8", (CPU_EP,), lambda m: None, True, same_weights_as=same_weights_as)


KV_FAMILY = {"decoder": {"a-kv8": _spec("a"), "a": _spec(), "b": _spec()}}


def test_a_kv_variant_whose_sibling_is_rejected_is_rejected_too():
    gate = GateResult({"decoder": {"a-kv8": {"x": 1}, "a": {"x": 2}, "b": {"x": 3}}}, {"decoder": {"a": "x 2 > 1"}})
    assert settle(KV_FAMILY, gate) == {"decoder": {
        "a-kv8": "its float-cache sibling a was rejected (its cache is gated against it)", "a": "x 2 > 1"}}
    # its own failure, when it has one, is the reason given
    gate.failures["decoder"]["a-kv8"] = "kv 9 > 1"
    assert settle(KV_FAMILY, gate)["decoder"]["a-kv8"] == "kv 9 > 1"
    # named in --variants, the cascade fails the build like its own failure would
    with pytest.raises(ParityError, match=r"decoder a-kv8 \(named in --variants\)"):
        settle(KV_FAMILY, GateResult(gate.figures, {"decoder": {"a": "x 2 > 1"}}), {"decoder/a-kv8", "decoder/b"})


def test_a_passing_build_rejects_nothing():
    gate = GateResult({"decoder": {"a-kv8": {}, "a": {}, "b": {}}})
    assert settle(KV_FAMILY, gate, {"decoder/a"}) == {}


def test_a_manifest_written_before_rejected_existed_still_reads(one_rejected, tmp_path):
    out, manifest, _, _ = one_rejected
    data = json.loads((out / MANIFEST).read_text())
    for entry in data["graphs"].values():
        del entry["rejected"]
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    again = Manifest.read(tmp_path)
    assert all(g.rejected == {} for g in again.graphs.values())
    assert again.graphs["decoder"].variants == manifest.graphs["decoder"].variants
