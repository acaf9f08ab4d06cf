"""The shipped demo captioner really sees: exact-match captions on held-out images, for the PyTorch reference and
for each CPU graph variant of its build (issue target: >= 95% on 200 images)."""

import pytest

from graphs.families.own.config import get_preset
from graphs.demo.evaluate import ASSETS, accuracy, heldout, onnx_captions, reference_captions
from graphs.families.own.tokenizer import load_tokenizer
from graphs.families.own.weights import load_model

TARGET = 0.95
N = 200


@pytest.fixture(scope="module")
def heldout_set():
    return heldout(N, get_preset("demo").vision.image_size)


def test_shipped_weights_fit_the_size_budget():
    assert (ASSETS / "model.safetensors").stat().st_size <= 20 * 2**20
    assert load_tokenizer(ASSETS / "tokenizer.json").get_vocab_size() == get_preset("demo").decoder.vocab_size


def test_reference_captions_heldout_images(heldout_set):
    images, truth = heldout_set
    model = load_model(get_preset("demo"), ASSETS / "model.safetensors")
    got = reference_captions(model, load_tokenizer(ASSETS / "tokenizer.json"), images)
    assert accuracy(got, truth) >= TARGET, [(g, t) for g, t in zip(got, truth) if g != t][:5]


@pytest.mark.parametrize("variant", ["cpu-fp32", "cpu-int8"])
def test_graph_variant_captions_heldout_images(demo_artifacts, heldout_set, variant):
    images, truth = heldout_set
    got = onnx_captions(demo_artifacts, variant, images)
    assert accuracy(got, truth) >= TARGET, [(g, t) for g, t in zip(got, truth) if g != t][:5]
