"""Idefics3 / SmolVLM views against transformers 5.23's PIL image processor (the class AutoImageProcessor gives
without torchvision >= 0.27): the uint8 views, normalized as the vision graph folds it, equal its pixel_values
exactly, and its pixel_values turned back into uint8 equal the views."""

from __future__ import annotations

import numpy as np
import pytest

from mmcore.image_plan.idefics3 import plan
from serve_app.imaging.decode import to_rgb
from serve_app.imaging.idefics3_views import normalize, views
from tests.idefics3_cases import SHAPES, SMOLVLM_256M, TINY, hf_image_processor, sample_image


def _check(spec, images, smolvlm=False):
    out = hf_image_processor(spec, smolvlm=smolvlm)(images=[images])
    ours = np.concatenate([views(to_rgb(im), plan(spec, im.height, im.width)) for im in images])
    hf = out["pixel_values"][0]
    assert ours.dtype == np.uint8 and ours.shape == hf.shape
    assert np.array_equal(normalize(ours, spec), hf)
    std, mean = np.asarray(spec.image_std).reshape(3, 1, 1), np.asarray(spec.image_mean).reshape(3, 1, 1)
    assert np.array_equal(np.rint((hf * std + mean) / spec.rescale_factor).astype(np.uint8), ours)
    assert out["pixel_attention_mask"].all()


@pytest.mark.parametrize("height,width,mode", SHAPES)
def test_views_equal_the_image_processor(height, width, mode):
    _check(TINY, [sample_image(height, width, mode)])


def test_two_images_of_different_sizes_in_order():
    _check(TINY, [sample_image(50, 70), sample_image(3, 5, "RGBA"), sample_image(20, 2000, "L")])


@pytest.mark.parametrize("height,width", [(45, 67), (1, 1), (20000, 20)])
def test_views_without_splitting(height, width):
    _check(TINY.model_copy(update={"do_image_splitting": False}), [sample_image(height, width)])


def test_views_without_the_longest_edge_resize():
    _check(TINY.model_copy(update={"do_resize": False}), [sample_image(45, 130), sample_image(20, 20)])


@pytest.mark.parametrize("resample", ["bicubic", "bilinear", "nearest"])
def test_views_with_another_filter(resample):
    spec = TINY.model_copy(update={"resample": resample})
    out = hf_image_processor(spec)(images=[sample_image(50, 70)], resample={"bicubic": 3, "bilinear": 2,
                                                                            "nearest": 0}[resample])
    assert np.array_equal(normalize(views(sample_image(50, 70), plan(spec, 50, 70)), spec), out["pixel_values"][0])


@pytest.mark.parametrize("smolvlm", [False, True])
def test_smolvlm_256m_photo(smolvlm):
    _check(SMOLVLM_256M, [sample_image(480, 640)], smolvlm=smolvlm)


def test_wrong_mode_or_size_refused():
    p = plan(TINY, 50, 70)
    with pytest.raises(ValueError, match="RGB image"):
        views(sample_image(50, 70, "L"), p)
    with pytest.raises(ValueError, match="the plan is for 70x50"):
        views(sample_image(51, 70), p)


def test_torchvision_backend_gap():
    """transformers' torchvision backend (AutoImageProcessor's default where torchvision >= 0.27 imports) resizes
    with torch's uint8 Lanczos: within 3 uint8 levels of PIL's (measured: at most 3, on about 1% of values)."""
    pytest.importorskip("torchvision")
    from transformers.models.idefics3.image_processing_idefics3 import Idefics3ImageProcessor
    spec = SMOLVLM_256M
    for height, width in [(480, 640), (31, 97), (3, 5)]:
        img = sample_image(height, width)
        hf = Idefics3ImageProcessor(size={"longest_edge": spec.longest_edge},
                                    max_image_size={"longest_edge": spec.max_image_size})(images=[img])
        ours = normalize(views(img, plan(spec, height, width)), spec)
        gap = np.abs(hf["pixel_values"][0].numpy() - ours)
        assert gap.max() <= 3 * spec.rescale_factor / min(spec.image_std) + 1e-6
        assert (gap > 1e-6).mean() < 0.05
