"""The anyres planner against transformers: image tokens against the HF processors' input_ids, views against the
model's image_size_to_num_patches, `assemble` against the model's pack_image_features."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcore.image_plan import AnyresPlanSpec, assemble, plan
from mmcore.image_plan.anyres import bilinear
from tests.hf_anyres import (NEXT, NEXT_336, ONEVISION, ONEVISION_384, hf_num_views, image_tokens, pack, processor,
                             random_image)

CASES = [NEXT, ONEVISION]
ALL_CASES = [NEXT, ONEVISION, NEXT_336, ONEVISION_384]
# (height, width): tiny, odd, photo-sized both ways, extreme both ways, square, exact pinpoints
SHAPES = [(1, 1), (3, 5), (5, 3), (1, 7), (3000, 4000), (4000, 3000), (20, 20000), (20000, 20), (31, 97), (97, 31),
          (333, 777), (480, 640), (32, 32), (64, 96), (1000, 10), (10, 1000), (257, 129)]


def _hf_degenerate(case, height: int, width: int, hf_count: int) -> bool:
    """HF plans an image whose unpadded map is empty: its count is then the base view plus, for a map of no columns,
    one newline row per map row (a map of no rows has no newline either)."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    side = case.view_size // case.patch_size
    rows, cols = get_anyres_image_grid_shape((height, width), [list(p) for p in case.pinpoints], case.view_size)
    return hf_count in (side * side + rows * side, side * side)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("height,width", SHAPES)
def test_image_tokens_equal_processor_input_ids(case, height, width):
    hf = image_tokens(case, [random_image(height, width)])
    try:
        p = plan(case.spec, height, width)
    except ValueError as err:
        assert "too narrow" in str(err) and _hf_degenerate(case, height, width, hf)
        return
    assert p.num_rows == hf
    assert p.num_views == hf_num_views(case, height, width)


@pytest.mark.parametrize("case", [NEXT_336, ONEVISION_384], ids=lambda c: c.name)
@pytest.mark.parametrize("height,width", [(3000, 4000), (60, 2000)])
def test_image_tokens_at_real_size(case, height, width):
    assert plan(case.spec, height, width).num_rows == image_tokens(case, [random_image(height, width)])


def test_shapes_cover_degenerate_and_downsampled():
    """The shape list reaches both refusals and OneVision's shrink, so the test above checks each path."""
    refused = [(h, w) for h, w in SHAPES if _plans(NEXT, h, w) is None]
    shrunk = [(h, w) for h, w in SHAPES if (p := _plans(ONEVISION, h, w)) is not None and p.downsampled]
    assert refused and shrunk


def _plans(case, height, width):
    try:
        return plan(case.spec, height, width)
    except ValueError:
        return None


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (3000, 4000), (4000, 3000), (31, 97), (480, 640),
                                          (257, 129), (300, 2000), (2000, 300)])
def test_assemble_equals_pack_image_features(case, height, width):
    p = plan(case.spec, height, width)
    rng = np.random.default_rng(height * 31 + width)
    d = 8
    feats = rng.standard_normal((p.num_views, p.side * p.side, d)).astype(np.float32)
    newline = rng.standard_normal(d).astype(np.float32)
    ours, theirs = assemble(p, feats, newline), pack(case, feats, height, width, newline)
    assert ours.shape == theirs.shape == (p.num_rows, d) and ours.dtype == np.float32
    if p.downsampled:  # bilinear interpolation: torch sums in float32, we in float64: an ulp or two of N(0, 1) inputs
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    else:  # pure data movement
        np.testing.assert_array_equal(ours, theirs)


def test_onevision_multi_image_prompt():
    """Two images in one conversation (apply_chat_template nests them): no tiling, one padded view + newline each."""
    images = [random_image(3000, 4000), random_image(31, 97)]
    plans = [plan(ONEVISION.spec, im.height, im.width, images_in_prompt=2) for im in images]
    assert image_tokens(ONEVISION, images, nested=True) == sum(p.num_rows for p in plans)
    assert all(p.num_views == 1 and not p.tiled for p in plans)
    rng = np.random.default_rng(0)
    feats, newline = rng.standard_normal((1, 16, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    np.testing.assert_array_equal(assemble(plans[0], feats, newline), pack(ONEVISION, feats, 3000, 4000, newline))


def test_next_tiles_every_image_of_a_multi_image_prompt():
    images = [random_image(3000, 4000), random_image(31, 97)]
    plans = [plan(NEXT.spec, im.height, im.width, images_in_prompt=2) for im in images]
    assert image_tokens(NEXT, images, nested=True) == sum(p.num_rows for p in plans)
    assert all(p.tiled for p in plans)


@pytest.mark.parametrize("shape,size", [((36, 48), (21, 28)), ((13, 7), (5, 3)), ((5, 9), (11, 17)), ((2, 2), (1, 1)),
                                        ((72, 1), (8, 1)), ((40, 40), (40, 40)), ((216, 216), (130, 130)),
                                        ((3, 300), (1, 101))])
def test_bilinear_equals_torch_interpolate(shape, size):
    import torch

    fmap = np.random.default_rng(1).standard_normal((*shape, 6)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(fmap).permute(2, 0, 1)[None], list(size),
                                           mode="bilinear")[0].permute(1, 2, 0).numpy()
    got = bilinear(fmap, *size)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_spec_round_trips_through_json():
    """The spec is data a manifest can carry."""
    for case in ALL_CASES:
        assert AnyresPlanSpec.model_validate_json(case.spec.model_dump_json()) == case.spec


def test_view_counts():
    assert NEXT.spec.view_counts == (3, 4, 5) and NEXT.spec.max_grid_tiles == 4
    assert ONEVISION.spec.view_counts[:4] == (1, 2, 3, 4) and ONEVISION.spec.max_grid_tiles == 36


def test_max_tiles_refuses_with_the_count_and_the_limit():
    """max_tiles counts views (tiles + base), as the idefics3 plan does."""
    p = plan(ONEVISION.spec, 3000, 4000)
    assert plan(ONEVISION.spec, 3000, 4000, max_tiles=p.num_views).grid == p.grid
    with pytest.raises(ValueError, match=rf"becomes {p.num_views} views .* the limit max_tiles is {p.num_views - 1}"):
        plan(ONEVISION.spec, 3000, 4000, max_tiles=p.num_views - 1)


def test_refusals():
    with pytest.raises(ValueError, match="at least 1"):
        plan(NEXT.spec, 0, 5)
    with pytest.raises(ValueError, match="too narrow"):
        plan(NEXT.spec, 20000, 20)
    with pytest.raises(ValueError, match="images_in_prompt is 0"):
        plan(ONEVISION.spec, 20, 20, images_in_prompt=0)
    with pytest.raises(ValueError, match=r"pinpoint \(height 48, width 64\) is not a multiple of view_size 32"):
        AnyresPlanSpec(grid_pinpoints=[(32, 64), (48, 64)], view_size=32, patch_size=8)
    with pytest.raises(ValueError, match="do not fit the plan"):
        assemble(plan(NEXT.spec, 30, 40), np.zeros((2, 16, 4), np.float32), np.zeros(4, np.float32))


def _count_everywhere(case, height, width):
    hf = processor(case)._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0]
    p = _plans(case, height, width)
    if p is None:
        assert _hf_degenerate(case, height, width, hf)
        return
    assert p.num_rows == hf and p.num_views in case.spec.view_counts
    feats = np.zeros((p.num_views, p.side * p.side, 1), np.float32)
    assert len(pack(case, feats, height, width, np.zeros(1, np.float32))) == hf


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 6000), width=st.integers(1, 6000))
def test_rows_equal_processor_and_model_for_any_size(case, height, width):
    """Plan, processor (from sizes) and model (pack_image_features' output length) agree on every image size."""
    _count_everywhere(case, height, width)
