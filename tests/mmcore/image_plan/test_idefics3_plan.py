"""The Idefics3 / SmolVLM plan against transformers 5.23 itself: the crop grid and view count its image processor
makes, the input_ids its processor gives for prompts with one and two images, and the feature rows a tiny random
model's connector produces (the rows the <image> tokens must match)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (Idefics3ForConditionalGeneration, Idefics3Processor, PreTrainedTokenizerFast,
                          SmolVLMForConditionalGeneration)
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE, get_image_prompt_string

from mmcore.image_plan.idefics3 import Features, Idefics3PlanSpec, Text, plan
from tests.idefics3_cases import (SHAPES, SMOLVLM_256M, TINY, hf_image_processor, sample_image, tiny_config,
                                  tiny_tokenizer)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer) -> Idefics3Processor:
    return Idefics3Processor(image_processor=hf_image_processor(TINY), tokenizer=tokenizer,
                             image_seq_len=TINY.image_seq_len, chat_template=DEFAULT_CHAT_TEMPLATE)


@pytest.mark.parametrize("height,width,mode", SHAPES)
def test_grid_and_views_equal_the_image_processor(height, width, mode):
    out = hf_image_processor(TINY)(images=[sample_image(height, width, mode)], return_row_col_info=True)
    p = plan(TINY, height, width)
    assert (p.rows, p.cols) == (out["rows"][0][0], out["cols"][0][0])
    assert p.num_views == out["pixel_values"].shape[1]
    assert out["pixel_attention_mask"].all()  # every view is M x M: no pixel of any view is padding


def test_grid_equals_the_image_processor_on_many_sizes():
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in rng.integers(1, 400, 2)) for _ in range(60)]
    images = [sample_image(h, w) for h, w in sizes]
    out = hf_image_processor(TINY)(images=[[im] for im in images], return_row_col_info=True, do_pad=False)
    for (h, w), rows, cols, pv in zip(sizes, out["rows"], out["cols"], out["pixel_values"]):
        p = plan(TINY, h, w)
        assert (p.rows, p.cols, p.num_views) == (rows[0], cols[0], len(pv)), (h, w)


@pytest.mark.parametrize("height,width,smolvlm", [(480, 640, True), (768, 1024, False), (1080, 1920, False),
                                                  (2000, 37, False), (512, 512, True), (513, 300, False)])
def test_smolvlm_256m_grid(height, width, smolvlm):
    out = hf_image_processor(SMOLVLM_256M, smolvlm=smolvlm)(images=[sample_image(height, width)],
                                                             return_row_col_info=True)
    p = plan(SMOLVLM_256M, height, width)
    assert (p.rows, p.cols, p.num_views) == (out["rows"][0][0], out["cols"][0][0], out["pixel_values"].shape[1])
    assert p.num_rows == SMOLVLM_256M.image_seq_len * p.num_views


def test_no_splitting_is_one_view():
    spec = TINY.model_copy(update={"do_image_splitting": False})
    out = hf_image_processor(spec)(images=[sample_image(45, 67)], return_row_col_info=True)
    p = plan(spec, 45, 67)
    assert (p.rows, p.cols, p.num_views) == (0, 0, 1) == (out["rows"][0][0], out["cols"][0][0],
                                                          out["pixel_values"].shape[1])


def _ids_from_pieces(tokenizer, text: str, plans, spec: Idefics3PlanSpec) -> list[int]:
    """The ingress's way: the text between placeholders and each text piece tokenized on its own, each feature slot
    `rows` image-token ids."""
    image_id = tokenizer.convert_tokens_to_ids(spec.image_token)
    segments = text.split(spec.image_token)
    ids = tokenizer(segments[0], add_special_tokens=False)["input_ids"]
    for p, after in zip(plans, segments[1:]):
        for piece in p.pieces:
            ids += ([image_id] * piece.rows if isinstance(piece, Features)
                    else tokenizer(piece.text, add_special_tokens=False)["input_ids"])
        ids += tokenizer(after, add_special_tokens=False)["input_ids"]
    return ids


@pytest.mark.parametrize("sizes", [[(50, 70)], [(1, 1)], [(20, 2000)], [(45, 67)], [(70, 50), (3, 5)],
                                   [(32, 32), (97, 31)]])
def test_input_ids_equal_the_processor(processor, tokenizer, sizes):
    content = []
    for k in range(len(sizes)):
        content += [{"type": "image"}, {"type": "text", "text": f"what is in picture {k}?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    images = [sample_image(h, w) for h, w in sizes]
    expected = processor(text=text, images=images)["input_ids"][0]
    plans = [plan(TINY, h, w) for h, w in sizes]
    assert _ids_from_pieces(tokenizer, text, plans, TINY) == expected
    # and the whole text, each placeholder replaced by the plan's expansion, tokenized at once
    segments = text.split(TINY.image_token)
    whole = segments[0] + "".join(p.expansion(TINY.image_token) + after for p, after in zip(plans, segments[1:]))
    assert tokenizer(whole, add_special_tokens=False)["input_ids"] == expected
    image_id = tokenizer.convert_tokens_to_ids(TINY.image_token)
    assert expected.count(image_id) == sum(p.num_rows for p in plans)


@pytest.mark.parametrize("rows,cols", [(0, 0), (1, 3), (3, 1), (2, 3), (7, 2)])
def test_expansion_equals_smolvlm_prompt_string(rows, cols):
    """SmolVLMProcessor's own function (SmolVLMProcessor itself needs num2words and torchvision to construct)."""
    h, w = (1, 1) if not rows else (rows * 32, cols * 32)
    spec = TINY.model_copy(update={"longest_edge": max(rows, cols, 1) * 32})
    p = plan(spec, h, w)
    assert (p.rows, p.cols) == (rows, cols)
    assert p.expansion("<image>") == get_image_prompt_string(rows, cols, spec.image_seq_len,
                                                             "<fake_token_around_image>", "<image>", "<global-img>")


@pytest.mark.parametrize("smolvlm", [False, True])
def test_feature_rows_equal_the_models_connector(processor, tokenizer, smolvlm):
    """The processor's <image> tokens, the plan's rows and the connector's output rows agree; the model's own
    merge (which checks tokens == features) accepts the prompt."""
    sizes = [(50, 70), (3, 5), (20, 2000)]
    image_id = tokenizer.convert_tokens_to_ids(TINY.image_token)
    torch.manual_seed(0)
    cls = SmolVLMForConditionalGeneration if smolvlm else Idefics3ForConditionalGeneration
    model = cls(tiny_config(TINY, image_id, len(tokenizer), smolvlm=smolvlm)).eval()
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}] * len(sizes) + [{"type": "text", "text": "hi"}]}],
        add_generation_prompt=True)
    inputs = processor(text=text, images=[sample_image(h, w) for h, w in sizes], return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"])
        model(**inputs)
    plans = [plan(TINY, h, w) for h, w in sizes]
    assert features.pooler_output[0].shape[0] == sum(p.num_rows for p in plans)
    assert features.last_hidden_state.shape[:2] == (sum(p.num_views for p in plans),
                                                     (TINY.image_size // TINY.patch_size) ** 2)
    assert model.model.connector(features.last_hidden_state).shape[1] == TINY.rows_per_view


def test_pieces_merge_text_between_slots():
    p = plan(TINY, 64, 96)
    assert [type(x) for x in p.pieces] == [Text, Features] * 7 + [Text]
    assert p.pieces[6].text == "\n<fake_token_around_image><row_2_col_1>"
    assert p.pieces[12].text == "\n\n<fake_token_around_image><global-img>"
    assert [x.view for x in p.pieces if isinstance(x, Features)] == list(range(7))


def test_max_views_is_the_most_the_processor_makes():
    out = hf_image_processor(TINY)(images=[[sample_image(1, 1)], [sample_image(300, 290)]], return_row_col_info=True)
    assert TINY.max_views == out["pixel_values"].shape[1] == 10
    assert TINY.model_copy(update={"do_image_splitting": False}).max_views == 1
    assert TINY.model_copy(update={"do_resize": False}).max_views is None
    assert SMOLVLM_256M.max_views == 17
    # an odd longest edge that is a multiple of an odd M: a square image's short side is rounded up past it
    odd = Idefics3PlanSpec(longest_edge=99, max_image_size=33, image_size=33, patch_size=11, scale_factor=3,
                           image_seq_len=1)
    out = hf_image_processor(odd)(images=[sample_image(1, 1)], return_row_col_info=True)
    assert (out["rows"][0][0], out["cols"][0][0]) == (4, 4) == (plan(odd, 1, 1).rows, plan(odd, 1, 1).cols)
    assert odd.max_views == out["pixel_values"].shape[1] == 17


def test_max_tiles_refuses_by_name_and_count():
    assert plan(TINY, 50, 70, max_tiles=10).num_views == 10
    with pytest.raises(ValueError, match=r"becomes 10 views \(3x3 crops \+ 1 global\); the limit max_tiles is 9"):
        plan(TINY, 50, 70, max_tiles=9)
    with pytest.raises(ValueError, match="20000x20 becomes 4 views .* max_tiles is 3"):
        plan(TINY, 20, 20000, max_tiles=3)


@pytest.mark.parametrize("height,width", [(0, 5), (5, 0), (-1, 3)])
def test_degenerate_sizes_refused(height, width):
    with pytest.raises(ValueError, match="at least 1 pixel"):
        plan(TINY, height, width)


@pytest.mark.parametrize("change,message", [
    ({"image_seq_len": 16}, "image_seq_len 16 != the connector's rows per view .* = 4"),
    ({"max_image_size": 64}, "max_image_size.longest_edge 64 != vision_config.image_size 32"),
    ({"scale_factor": 3, "image_seq_len": 1}, "4 patches a side is not divisible by scale_factor 3"),
    ({"longest_edge": None}, "size.longest_edge is required"),
])
def test_inconsistent_checkpoint_refused(change, message):
    with pytest.raises(ValueError, match=message):
        Idefics3PlanSpec(**(TINY.model_dump() | change))
