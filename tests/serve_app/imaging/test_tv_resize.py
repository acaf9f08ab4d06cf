"""tv_resize against torch: torch.nn.functional.interpolate(antialias=True) on uint8, which is what torchvision's
resize (and so transformers' torchvision-backend image processors) runs for a uint8 bicubic resize on CPU."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from serve_app.imaging.tv_resize import resize_uint8


def _torch(chw: np.ndarray, height: int, width: int, kind: str) -> np.ndarray:
    import torch

    return torch.nn.functional.interpolate(torch.from_numpy(chw)[None], size=[height, width], mode=kind,
                                           antialias=True)[0].numpy()


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["bicubic", "bilinear"])
@pytest.mark.parametrize("src,dst", [((40, 50), (20, 25)), ((480, 640), (336, 448)), ((3, 5), (336, 560)),
                                     ((1, 1), (32, 32)), ((1200, 1600), (336, 336)), ((97, 31), (96, 31)),
                                     ((20, 2000), (32, 96)), ((2000, 20), (1008, 11)), ((7, 7), (7, 7)),
                                     ((384, 384), (383, 385))])
def test_equals_torch_uint8_antialias(kind, src, dst):
    img = _image(*src)
    out = resize_uint8(img, *dst, kind)
    assert out.dtype == np.uint8 and out.shape == (3, *dst)
    np.testing.assert_array_equal(out, _torch(img, *dst, kind))


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), oh=st.integers(1, 300), ow=st.integers(1, 300),
       kind=st.sampled_from(["bicubic", "bilinear"]))
def test_equals_torch_for_any_sizes(h, w, oh, ow, kind):
    # torch's uint8 kernel fails an internal assert on a 1x1 output from more than one row; no plan resizes to 1x1
    assume((oh, ow) != (1, 1))
    img = _image(h, w, seed=h * 301 + w)
    np.testing.assert_array_equal(resize_uint8(img, oh, ow, kind), _torch(img, oh, ow, kind))


def test_refuses_nearest():
    with pytest.raises(ValueError, match="'nearest' is not reproduced"):
        resize_uint8(_image(4, 4), 2, 2, "nearest")
