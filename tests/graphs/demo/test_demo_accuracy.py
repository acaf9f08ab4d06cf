"""The shipped demo captioner (an HF LLaVA checkpoint) really sees: on images from the second and third, independent
renderers it names every shape's color and kind, in transformers and in the CPU graph variants its build serves; and its
build through the LLaVA family is parity-gated with int8/int4 top-1 agreement actually gated."""

import json

import pytest

from graphs.demo.evaluate import (EVAL_FILE, onnx_captions, reference_captions, load_reference, second_renderer,
                                  shape_accuracy, third_renderer)
from graphs.demo.train import ASSETS
from graphs.families.llava.checkpoint import read_checkpoint

# What the shipped weights meet in the recorded 400-image evaluation (eval.json): second renderer 100%, third 99.75%,
# in distribution 96.5% (transformers; served cpu-int8: 100 / 99.75 / 96.75%), 0.92% of captions at risk. Issue 25's
# targets (99%, 99%, 98%, <= 1% at risk) are met but in distribution (docs/demo.md); these floors keep the shipped
# model from sliding back towards the ones it replaced (99.5% / 97.5% / 91.75% on today's in-distribution set, 1.75%
# at risk; before those 95.75% / 91.0%, and 96.0% / 63.75%).
RECORDED_MIN = {"second_renderer_names_every_shape": 0.99, "third_renderer_names_every_shape": 0.99,
                "in_distribution_exact_match": 0.96}
MAX_AT_RISK = 0.01  # the margin criterion itself (graphs/demo/evaluate.py); recorded 0.92%
# A re-measurement on a sample: N images per renderer scored against its floor. At the recorded rates (100%, 99.75%)
# a 60-image sample falls below 95% (P(X <= 56)) with probability ~2e-5 or less, while a model that had not
# learned shapes (the old demo's 33% on foreign drawings) passes with probability ~0.
N = 60
SAMPLE_MIN = {"second": 0.95, "third": 0.95}


@pytest.fixture(scope="module", params=["second", "third"])
def sample(request):
    images, truth = {"second": second_renderer, "third": third_renderer}[request.param](N)
    return images, truth, SAMPLE_MIN[request.param]


def test_the_shipped_checkpoint_is_a_small_llava_one():
    files = {p.name for p in ASSETS.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "preprocessor_config.json", EVAL_FILE} <= files
    assert sum(p.stat().st_size for p in ASSETS.iterdir()) <= 8 * 2**20
    cfg = json.loads((ASSETS / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert cfg["vision_config"]["model_type"] == "clip_vision_model" and cfg["text_config"]["model_type"] == "llama"
    ck = read_checkpoint(ASSETS)
    assert ck.text.kv_heads < ck.text.heads


@pytest.mark.parametrize("run", ["transformers", "onnx cpu-int8"])  # the last: the default served variants
def test_recorded_figures_hold_the_shipped_level(run):
    report = json.loads((ASSETS / EVAL_FILE).read_text())
    figures = report[run]
    assert figures["images_per_set"] >= 400
    for key, floor in RECORDED_MIN.items():
        assert figures[key] >= floor - 0.01 * (run != "transformers"), (key, figures[key])  # served: 1 point less
    assert report["margin"]["at_risk"] <= MAX_AT_RISK, report["margin"]


def test_transformers_captions_second_renderer_images(sample):
    images, truth, floor = sample
    model, tok = load_reference(ASSETS)
    got = reference_captions(model, tok, images)
    assert shape_accuracy(got, truth) >= floor, [(g, t) for g, t in zip(got, truth)][:8]


@pytest.mark.parametrize("variant, decoder", [("cpu-fp32", "cpu-fp32"),
                                              ("cpu-int8", "cpu-int8")])  # the last: what a CPU replica serves
def test_graph_variant_captions_second_renderer_images(demo_artifacts, sample, variant, decoder):
    images, truth, floor = sample
    got = onnx_captions(demo_artifacts, variant, images, decoder_variant=decoder)
    assert shape_accuracy(got, truth) >= floor, [(g, t) for g, t in zip(got, truth)][:8]


def test_quantized_decoders_are_top1_gated_on_the_trained_model(demo_artifacts):
    """Random weights leave too few decisive contexts to gate top-1 (issue 13); the trained model has them."""
    from mmcore.manifest import Manifest

    man = Manifest.read(demo_artifacts)
    assert man.family == "llava" and man.preset == "demo"
    for name in ("cpu-int8", "cpu-int4"):
        parity = man.graphs["decoder"].variants[name].parity
        assert parity["top1_gated"] and parity["top1_agreement"] >= 0.9, (name, parity)
