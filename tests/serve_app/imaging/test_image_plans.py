"""The preprocess stage's plan by the manifest's kind (serve_app/imaging/plans.py): an anyres image's views, rows and
the plan the vision stage assembles by; an Idefics3 image's views and layout (text around each view's rows); the
preprocess.max_tiles cap and images too thin for their plan refused as 400s naming the limit. The planners
themselves are checked against transformers in tests/mmcore/image_plan."""

from __future__ import annotations

import numpy as np
import pytest

from mmcore.image_plan import anyres, idefics3
from serve_app.contract import InvalidImage
from serve_app.imaging.anyres_views import anyres_views
from serve_app.imaging.idefics3_views import views as idefics3_views
from serve_app.imaging.plans import plan_image
from tests.fake_manifest import vision_spec
from tests.hf_anyres import NEXT, ONEVISION, random_image
from tests.idefics3_cases import TINY, sample_image

PARAM = "messages.0.content.0.image_url"


def with_plan(spec) -> object:
    return vision_spec(32, features=16).model_copy(update={"plan": spec.model_dump(mode="json")})


@pytest.mark.parametrize("case", [NEXT, ONEVISION], ids=lambda c: c.name)
@pytest.mark.parametrize("height,width,images", [(90, 30, 1), (28, 100, 1), (50, 50, 2)])
def test_an_anyres_image_is_its_plans_views_and_rows(case, height, width, images):
    img = random_image(height, width)
    planned = plan_image(img, with_plan(case.spec), PARAM, images_in_prompt=images)
    want = anyres.plan(case.spec, height, width, images_in_prompt=images)
    assert planned.assemble_with == want and planned.rows == want.num_rows and planned.layout == ()
    np.testing.assert_array_equal(planned.views, anyres_views(img, want))


def test_an_idefics3_image_is_its_views_and_the_text_around_each_views_rows():
    img = sample_image(70, 50)
    planned = plan_image(img, with_plan(TINY), PARAM)
    want = idefics3.plan(TINY, 70, 50)
    assert planned.assemble_with is None and planned.rows == want.num_rows
    assert "".join(x if isinstance(x, str) else TINY.image_token for x in planned.layout) == \
        "".join(p.text if isinstance(p, idefics3.Text) else TINY.image_token for p in want.pieces)
    assert sum(x for x in planned.layout if isinstance(x, int)) == planned.rows
    np.testing.assert_array_equal(planned.views, idefics3_views(img, want))


@pytest.mark.parametrize("spec,height,width", [(NEXT.spec, 300, 400), (TINY, 70, 50)], ids=["anyres", "idefics3"])
def test_an_image_of_more_views_than_max_tiles_is_refused_naming_the_limit(spec, height, width):
    vision = with_plan(spec)
    views = plan_image(random_image(height, width), vision, PARAM).views.shape[0]
    assert plan_image(random_image(height, width), vision, PARAM, max_tiles=views).views.shape[0] == views
    with pytest.raises(InvalidImage) as e:
        plan_image(random_image(height, width), vision, PARAM, max_tiles=views - 1)
    assert (e.value.code, e.value.param) == ("image_too_many_tiles", PARAM)
    assert f"becomes {views} views to encode; the limit is {views - 1} (preprocess.max_tiles)" in str(e.value)


def test_an_image_too_thin_for_its_grid_is_refused():
    with pytest.raises(InvalidImage) as e:
        plan_image(random_image(20, 20000), with_plan(NEXT.spec), PARAM)
    assert (e.value.code, e.value.param) == ("invalid_image_size", PARAM) and "20000x20 px" in str(e.value)


def test_the_cache_key_counts_the_plan_that_assembles_the_views():
    """The vision stage caches an image's assembled block by this key: for anyres the block depends on the plan (the
    unpad rows, from the image's size) as well as on the views, so the plan is hashed with them; without a plan
    the key is the views' sha256, as before."""
    import hashlib

    from PIL import Image

    from serve_app.imaging.pipeline import content_hash, preprocess_image
    from serve_app.stages.options import PreprocessOptions
    from tests.serve_app.image_samples import data_url, encode

    def preprocessed(vision, fmt: str = "PNG"):
        url = data_url(encode(Image.new("RGB", (90, 40), (200, 30, 30)), fmt), f"image/{fmt.lower()}")
        return preprocess_image(url, vision, PreprocessOptions(), PARAM)

    tiled = preprocessed(with_plan(NEXT.spec))
    plan = anyres.plan(NEXT.spec, 40, 90)
    assert tiled.content_hash == content_hash(tiled.views, plan.model_dump_json())
    other = plan.model_copy(update={"width": 91})  # another size's plan over the same views
    assert content_hash(tiled.views, other.model_dump_json()) != tiled.content_hash
    whole = preprocessed(vision_spec(32, features=16))
    assert whole.content_hash == hashlib.sha256(whole.views.tobytes()).hexdigest()
    assert preprocessed(with_plan(NEXT.spec)).content_hash == tiled.content_hash  # the same picture: one key
