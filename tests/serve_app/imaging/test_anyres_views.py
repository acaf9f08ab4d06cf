"""Anyres views against transformers' PIL-backend image processors: our uint8 views are the processor's pixel_values
before rescale and normalize, to the pixel, for RGB, grayscale and RGBA images of every aspect."""

from __future__ import annotations

import numpy as np
import pytest

from mmcore.image_plan import plan
from serve_app.imaging.anyres_views import anyres_views
from serve_app.imaging.decode import to_rgb
from tests.hf_anyres import NEXT, NEXT_336, ONEVISION, ONEVISION_384, image_processor, mean_std, random_image

# (height, width, mode): tiny, odd, photo-sized both ways, extreme, square, grayscale and RGBA among them
SHAPES = [(1, 1, "RGB"), (3, 5, "L"), (5, 3, "RGBA"), (3, 11, "RGB"), (3000, 4000, "RGB"), (4000, 3000, "RGBA"),
          (31, 97, "L"), (97, 31, "RGB"), (333, 777, "RGBA"), (480, 640, "L"), (32, 32, "RGB"), (64, 96, "RGB"),
          (257, 129, "RGB"), (300, 2000, "L")]


def _hf_pixels(case, images, nested=False, backend="pil") -> np.ndarray:
    out = image_processor(case, backend)(images=[images] if nested else images, return_tensors="np")
    return out["pixel_values"]


def _uint8(case, pixel_values: np.ndarray) -> np.ndarray:
    """Undo the processor's rescale + normalize: its pixels were uint8 before, so this rounds back exactly."""
    mean, std = (np.array(v, np.float64)[:, None, None] for v in mean_std(case))
    return np.rint((pixel_values.astype(np.float64) * std + mean) * 255).astype(np.uint8)


def _normalize(case, views: np.ndarray) -> np.ndarray:
    """What the vision graph computes from uint8 (normalization folded in), in float32."""
    mean, std = (np.array(v, np.float32)[:, None, None] for v in mean_std(case))
    return (views.astype(np.float32) / np.float32(255) - mean) / std


def _check(case, views: np.ndarray, pixel_values: np.ndarray):
    assert views.dtype == np.uint8 and views.shape == pixel_values.shape
    np.testing.assert_array_equal(views, _uint8(case, pixel_values))
    np.testing.assert_allclose(_normalize(case, views), pixel_values, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", [NEXT, ONEVISION], ids=lambda c: c.name)
@pytest.mark.parametrize("height,width,mode", SHAPES)
def test_views_equal_processor_pixels(case, height, width, mode):
    img = random_image(height, width, mode)
    p = plan(case.spec, height, width)
    _check(case, anyres_views(to_rgb(img), p), _hf_pixels(case, [img])[0])


@pytest.mark.parametrize("case", [NEXT_336, ONEVISION_384], ids=lambda c: c.name)
def test_views_at_real_size(case):
    img = random_image(1200, 1600, "RGB")
    p = plan(case.spec, 1200, 1600)
    _check(case, anyres_views(img, p), _hf_pixels(case, [img])[0])


def test_onevision_multi_image_views():
    """Several images in one conversation: each is padded square with the mean colour and resized, no tiles."""
    images = [random_image(480, 640, "RGB"), random_image(97, 31, "RGBA"), random_image(40, 40, "L")]
    pixels = _hf_pixels(ONEVISION, images, nested=True)  # (images, 1, 3, S, S)
    for img, pv in zip(images, pixels):
        p = plan(ONEVISION.spec, img.height, img.width, images_in_prompt=len(images))
        _check(ONEVISION, anyres_views(to_rgb(img), p), pv[:1])


@pytest.mark.parametrize("case", [NEXT, ONEVISION, NEXT_336, ONEVISION_384], ids=lambda c: c.name)
def test_views_equal_torchvision_backend_pixels(case):
    """The torchvision-backend classes (AutoImageProcessor's default where torchvision is installed)."""
    pytest.importorskip("torchvision", reason="transformers' torchvision-backend processors need torchvision")
    shapes = SHAPES if case.view_size < 100 else [(1200, 1600, "RGB"), (3, 5, "RGBA")]
    for height, width, mode in shapes:
        img = random_image(height, width, mode)
        p = plan(case.spec_with("torchvision"), height, width)
        _check(case, anyres_views(to_rgb(img), p), _hf_pixels(case, [img], backend="torchvision")[0])
    if case.anyres_max is not None:
        images = [random_image(480, 640, "RGB"), random_image(97, 31, "L")]
        for img, pv in zip(images, _hf_pixels(case, images, nested=True, backend="torchvision")):
            p = plan(case.spec_with("torchvision"), img.height, img.width, images_in_prompt=2)
            _check(case, anyres_views(to_rgb(img), p), pv[:1])


def test_refuses_an_image_that_is_not_the_plans():
    p = plan(NEXT.spec, 30, 40)
    with pytest.raises(ValueError, match="the plan is for RGB 40x30"):
        anyres_views(random_image(40, 30), p)
    with pytest.raises(ValueError, match="the plan is for RGB 40x30"):
        anyres_views(random_image(30, 40, "L"), p)
