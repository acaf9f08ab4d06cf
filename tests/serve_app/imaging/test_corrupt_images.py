"""Corrupt images through the preprocess library function, fuzzed: whatever Pillow makes of truncated, bit-flipped
or header-forged PNG/JPEG/WebP/GIF bytes, the outcome is a decoded image or InvalidImage (HTTP 400), never another
exception (a 500). Derandomized and bounded, so it runs in seconds and fails the same way every time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from serve_app.contract import InvalidImage
from serve_app.imaging.pipeline import preprocess_image
from serve_app.stages.options import PreprocessOptions
from tests.fake_manifest import vision_spec
from tests.serve_app.corrupt_images import FORGED_EXIF, REAL, corrupt_images
from tests.serve_app.image_samples import data_url

OPTS = PreprocessOptions(max_image_pixels=4_000_000)
PARAM = "messages.0.content.0.image_url"
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def outcome(raw: bytes) -> str:
    """'decoded' or the InvalidImage code; any other exception fails the test."""
    try:
        out = preprocess_image(data_url(raw), vision_spec(16), OPTS, PARAM)
    except InvalidImage as e:
        assert e.param == PARAM and e.status == 400 and e.message
        return e.code
    assert out.views.shape == (1, 3, 16, 16) and out.views.dtype == np.uint8
    return "decoded"


@FUZZ
@given(raw=corrupt_images())
def test_corrupt_images_decode_or_are_invalid(raw):
    outcome(raw)


@pytest.mark.parametrize("raised", sorted(FORGED_EXIF))
def test_forged_exif_is_an_invalid_image(raised):
    assert outcome(FORGED_EXIF[raised]) == "invalid_image"


@pytest.mark.parametrize("name", sorted(REAL))
def test_the_uncorrupted_samples_decode_or_are_refused_by_format(name):
    assert outcome(REAL[name]) == ("unsupported_image_format" if name == "gif" else "decoded")


def test_memory_error_and_an_api_error_keep_their_meaning():
    from serve_app.imaging.pillow_errors import pillow_reading

    with pytest.raises(InvalidImage) as e, pillow_reading(PARAM):
        raise IndexError()
    assert e.value.code == "invalid_image" and e.value.param == PARAM and "IndexError" in e.value.message
    with pytest.raises(MemoryError), pillow_reading(PARAM):
        raise MemoryError()
    refused = InvalidImage("too many pixels", PARAM, "image_too_many_pixels")
    with pytest.raises(InvalidImage) as e, pillow_reading(PARAM):
        raise refused
    assert e.value is refused
