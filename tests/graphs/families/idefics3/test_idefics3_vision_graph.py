"""The Idefics3 vision graphs against transformers on the HF processor's own views: every view the processor cuts
is S x S with an all-ones pixel mask (so the graph needs none), and every variant's per-view features match
get_image_features on the processor's pixel_values, for one image and for a batch of images whose view counts
differ. The pixel shuffle alone is compared with Idefics3Connector.pixel_shuffle (pure data movement: bit-equal),
and the positions with what transformers' embeddings add on a grid where its bucketing is not the identity."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from graphs.families.llava import parity

SHAPES = [(50, 90), (90, 50), (20, 20), (33, 130), (200, 61)]  # wide, tall, one view, odd, tall odd
BOUNDS = {"fp32": ("max_abs", parity.FP32_REL), "fp16": ("cosine", parity.FP16_MIN_COSINE),
          "int8": ("cosine", parity.QUANT_MIN_COSINE)}


def _image(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _views(processor, images):
    """The processor's views as raw uint8 pixels (its resizes and crops, no rescale/normalize), real views only,
    and its model inputs for the same images."""
    raw = processor.image_processor(images, do_rescale=False, do_normalize=False, return_tensors="np")
    model_in = processor.image_processor(images, return_tensors="pt")
    mask = raw["pixel_attention_mask"].reshape(-1, *raw["pixel_values"].shape[-2:])
    pixels = raw["pixel_values"].reshape(-1, *raw["pixel_values"].shape[-3:])
    real = mask.any(axis=(1, 2))  # whole padding views (images with fewer views) are all-zero masks
    assert mask[real].all(), "a real view is padded: the graph would need a mask"
    assert np.array_equal(pixels, np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255
    return pixels[real].astype(np.uint8), model_in


@pytest.fixture(scope="module")
def hf(built):
    ck, _, _ = built["tiny"]
    model = AutoModelForImageTextToText.from_pretrained(ck, dtype=torch.float32, attn_implementation="eager").eval()
    return AutoProcessor.from_pretrained(ck), model


def _check(got: np.ndarray, want: np.ndarray, precision: str) -> None:
    kind, bound = BOUNDS[precision]
    if kind == "max_abs":
        assert np.abs(got - want).max() <= bound * max(1.0, np.abs(want).max())
    else:
        assert parity.cosine(got, want) >= bound


@pytest.mark.parametrize("shapes", [[s] for s in SHAPES] + [SHAPES[:3]],
                         ids=lambda s: "+".join(f"{h}x{w}" for h, w in s))
def test_every_variant_matches_transformers_per_view(built, hf, shapes):
    processor, model = hf
    _, out, manifest = built["tiny"]
    side, rows = manifest.vision.image_size, manifest.vision.features_per_image
    images = [_image(h, w, i) for i, (h, w) in enumerate(shapes)]
    pixels, model_in = _views(processor, [images])  # one sample holding every image: views of all in one batch
    assert pixels.shape[1:] == (3, side, side)
    with torch.no_grad():
        want = model.get_image_features(**model_in).pooler_output[0].numpy()  # (views * rows, Dt)
    assert want.shape[0] == len(pixels) * rows
    for name, variant in manifest.graphs["vision"].variants.items():
        session = ort.InferenceSession(str(out / variant.file), providers=["CPUExecutionProvider"])
        got = session.run(None, {"pixels": pixels})[0]
        assert got.shape == (len(pixels), rows, manifest.vision.feature_dim)
        _check(got.reshape(want.shape), want, variant.precision)


def test_a_grid_hf_buckets_unevenly(tmp_path):
    """25 patches a side: transformers' positions repeat and skip rows there; the graph adds the same rows."""
    from graphs.families.base import Source
    from graphs.families.idefics3.family import FAMILY
    from graphs.families.idefics3.reference import Reference, position_ids
    from graphs.families.idefics3.synthetic import SPECS, Spec, write_checkpoint
    from graphs.families.idefics3.vision_graph import build_vision

    tiny = SPECS["tiny"]
    spec = Spec(vision={**tiny.vision, "image_size": 50, "patch_size": 2}, text=tiny.text, scale_factor=5,
                processor={**tiny.processor, "max_image_size": {"longest_edge": 50}})
    ck_dir = write_checkpoint(tmp_path / "grid25", spec)
    model = FAMILY.load(Source(ck_dir.name, directory=ck_dir))
    assert not np.array_equal(position_ids(model.ck), np.arange(625))  # the case this test is for
    figures = parity.vision_figures(Reference(model.ck),
                                    build_vision(model.ck, model.weights, "portable").SerializeToString())
    assert figures["feature_max_abs_err"] <= parity.FP32_REL * figures["feature_scale"]


@pytest.mark.parametrize("scale", [2, 4])
def test_pixel_shuffle_is_hfs(scale):
    from graphs.emit.onnx_ops import GraphBuilder
    from graphs.families.idefics3.checkpoint import Idefics3Vision
    from graphs.families.idefics3.vision_graph import _pixel_shuffle
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    v = Idefics3Vision(kind="siglip", hidden=6, intermediate=1, layers=1, heads=1, image_size=8 * 3, patch_size=3,
                       act="gelu", eps=1e-6, feature_layers=(1,), drop_cls=False, scale_factor=scale)
    g = GraphBuilder("shuffle", np.float32)
    g.input("x", np.float32, ["views", 64, 6])
    g.node("Identity", [_pixel_shuffle(g, "x", type("Ck", (), {"vision": v})())], "out", outputs=["y"])
    g.output("y", np.float32, ["views", 64 // scale ** 2, 6 * scale ** 2])
    x = np.random.default_rng(0).standard_normal((3, 64, 6)).astype(np.float32)
    got = ort.InferenceSession(g.model(contrib=False).SerializeToString()).run(None, {"x": x})[0]
    want = Idefics3Connector.pixel_shuffle(None, torch.from_numpy(x), scale).numpy()
    assert np.array_equal(got, want)
