"""The demo captioner's data: three seeded renderers sharing only the scene grammar, disjoint seed ranges, a tokenizer
and prompt layout identical to what serving builds, pixels resized as the preprocess stage resizes them."""

import collections
import random
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from graphs.demo.dataset import (IMAGE_SIZE, PROMPTS, TRAIN_SEEDS_END, VOCAB_SIZE, build_tokenizer, caption_ids,
                                 decode_caption, heldout_seeds, model_pixels, prompt_ids)
from graphs.demo.evaluate import names_every_shape, shapes_named
from graphs.demo.heldout_render import EVAL_SEED_START, eval_seeds, render_eval_seed
from graphs.demo.render import GRID, render_labelled, render_labelled_seed, render_seed
from graphs.demo.scenes import (COLORS, LAYOUT_WEIGHTS, NATURAL_MIX, SHAPES, TRAINING_MIX, all_captions,
                                sample_training_scene)
from graphs.demo.sdf_render import SEED_START, render_sdf_seed, sdf_seeds
from graphs.demo.train import ASSETS, DEFAULT_BATCH, DEFAULT_STEPS, training_seeds

RENDERERS = {"training": render_seed, "second": render_eval_seed, "third": render_sdf_seed}


@pytest.mark.parametrize("renderer", RENDERERS)
def test_a_seed_is_an_image(renderer):
    draw = RENDERERS[renderer]
    a, cap_a = draw(7)
    b, cap_b = draw(7)
    assert a.ndim == 3 and a.shape[2] == 3 and a.shape[0] == a.shape[1] and a.dtype == np.uint8
    assert np.array_equal(a, b) and cap_a == cap_b
    assert not np.array_equal(model_pixels(a), model_pixels(draw(8)[0]))


@pytest.mark.parametrize("renderer", RENDERERS)
def test_captions_come_from_the_grammar_and_cover_every_layout(renderer):
    caps = [RENDERERS[renderer](s)[1] for s in range(200)]
    assert set(caps) <= set(all_captions())
    assert any(" and " in c for c in caps) and any(c.startswith(("two ", "three ")) for c in caps)
    assert any(c.startswith(("a small", "a large")) for c in caps)


@pytest.mark.parametrize("renderer", RENDERERS)
def test_shapes_are_drawn_in_their_colour(renderer):
    pixels = next(model_pixels(p) for p, c in (RENDERERS[renderer](s) for s in range(300))
                  if c.startswith("a large red"))
    r, g, b = (pixels[i].astype(int) for i in range(3))
    # a large red shape, filled (> 5% of the image) or outlined (> 2%), in some shade of red: red well above both
    assert ((r > g + 50) & (r > b + 50)).sum() > 0.02 * IMAGE_SIZE ** 2


def _imports(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())


def test_the_second_renderer_shares_no_drawing_code():
    """Independence is structural: the evaluation renderer imports neither Pillow nor the training renderer."""
    mods = _imports("graphs.demo.heldout_render")
    assert "PIL" not in mods and "graphs.demo.render" not in mods


def test_the_third_renderer_shares_no_drawing_code():
    """The third renderer imports neither Pillow nor either other renderer (nor the training code)."""
    mods = _imports("graphs.demo.sdf_render")
    assert not mods & {"PIL", "graphs.demo.render", "graphs.demo.heldout_render", "graphs.demo.train"}


def test_training_patch_labels_mark_each_shape_in_its_kind_and_color():
    """The auxiliary targets: per 8x8 patch, background (0) or the covering shape's kind and color, and a patch's
    label agrees with the caption; the local boundary labels name only corners the caption's kinds have."""
    for seed in range(40):
        pixels, caption, kinds, colors, local, roles = render_labelled_seed(seed)
        assert kinds.shape == colors.shape == local.shape == (GRID * GRID,)
        assert (3 in local) <= ("square" in caption) and (4 in local) <= ("triangle" in caption)
        assert (1 in local) <= ("circle" in caption)
        assert np.array_equal(kinds == 0, colors == 0) and (kinds > 0).any()
        for k, c in set(zip(kinds[kinds > 0].tolist(), colors[colors > 0].tolist())):
            assert SHAPES[k - 1] in caption and list(COLORS)[c - 1] in caption
        assert np.array_equal(roles == 0, kinds == 0)
        parts = set(roles[roles > 0].tolist())
        if " and " in caption:  # a pair: its first shape is the left (top) one, and both are seen
            assert parts == {2, 3}
            axis = 1 if "on the left" in caption else 0  # column or row of each patch in the 8x8 grid
            where = np.stack(np.divmod(np.arange(roles.size), GRID))[axis]
            assert where[roles == 2].mean() < where[roles == 3].mean()
        else:
            assert parts == ({4} if caption.startswith(("two ", "three ")) else {1})


def _layout(scene) -> str:
    return "pair" if len(scene.shapes) == 2 and " and " in scene.caption else \
        "count" if scene.caption.startswith(("two ", "three ")) else "single"


@pytest.mark.parametrize("mix", [NATURAL_MIX, TRAINING_MIX], ids=["natural", "training"])
def test_scene_mixes_draw_their_layouts_and_one_colored_pairs(mix):
    """The training mix over-draws pairs and one-colored pairs of two kinds; the natural mix (the in-distribution
    evaluation's) is the grammar's: a uniform draw of two different looks, 1 pair in 7 one-colored."""
    n, layouts, same = 6000, collections.Counter(), 0
    for seed in range(n):
        scene = sample_training_scene(random.Random(seed), mix)
        layouts[_layout(scene)] += 1
        if _layout(scene) == "pair":
            a, b = scene.shapes
            assert (a.kind, a.color) != (b.kind, b.color)
            same += a.color == b.color
    for layout, weight in mix.layouts.items():
        assert abs(layouts[layout] / n - weight) < 0.025, (layout, layouts)
    expected = 2 / 14 if mix.pair_same_color is None else mix.pair_same_color  # 2 of the 14 other looks share a color
    assert abs(same / layouts["pair"] - expected) < 0.03


def test_the_default_mix_is_the_natural_one():
    assert NATURAL_MIX.layouts == LAYOUT_WEIGHTS
    for seed in range(50):
        assert sample_training_scene(random.Random(seed)) == sample_training_scene(random.Random(seed), NATURAL_MIX)
        assert render_labelled_seed(seed, NATURAL_MIX)[1] == render_seed(seed)[1]
    assert any(sample_training_scene(random.Random(s), TRAINING_MIX) != sample_training_scene(random.Random(s))
               for s in range(20))


def _hollow(pixels: np.ndarray, shape) -> bool:
    """Whether a large shape's centre shows the background (low chroma) rather than its color: an outline."""
    rgb = model_pixels(pixels).astype(int)
    x, y = int(shape.cx * IMAGE_SIZE), int(shape.cy * IMAGE_SIZE)
    centre = rgb[:, y - 1:y + 2, x - 1:x + 2].reshape(3, -1).mean(1)
    return centre.max() - centre.min() < 45  # shapes' shades have a chroma of at least ~84, backgrounds ~30


@pytest.mark.parametrize("mix", [NATURAL_MIX, TRAINING_MIX, replace(NATURAL_MIX, outlined=0.0),
                                 replace(NATURAL_MIX, outlined=1.0)], ids=["natural", "training", "never", "always"])
def test_shapes_are_outlined_as_often_as_the_mix_says(mix):
    """Read from the pixels: the centre of a large single shape is hollow in about `mix.outlined` of the images."""
    hollow = []
    for seed in range(3000):
        rng = random.Random(seed)
        scene = sample_training_scene(rng, mix)
        if len(scene.shapes) == 1 and scene.shapes[0].radius > 0.22:  # large: the centre is inside any outline
            hollow.append(_hollow(render_labelled(scene, rng, mix.outlined)[0], scene.shapes[0]))
    assert len(hollow) > 150
    assert abs(np.mean(hollow) - mix.outlined) < 0.08, (np.mean(hollow), len(hollow))


def test_seed_ranges_are_disjoint():
    assert max(training_seeds(DEFAULT_STEPS - 1, DEFAULT_BATCH)) < TRAIN_SEEDS_END == min(heldout_seeds(200))
    assert max(heldout_seeds(10_000)) < EVAL_SEED_START == min(eval_seeds(200))
    assert max(eval_seeds(10_000)) < SEED_START == min(sdf_seeds(200))
    with pytest.raises(ValueError, match="held-out"):
        training_seeds(TRAIN_SEEDS_END // DEFAULT_BATCH, DEFAULT_BATCH)


def test_every_caption_tokenizes_round_trip_in_whole_words():
    tok = build_tokenizer()
    assert tok.get_vocab_size() == VOCAB_SIZE
    for cap in all_captions():
        ids = caption_ids(tok, cap)
        assert decode_caption(tok, ids) == cap and len(ids) == len(cap.split()) + 1  # one token per word + end


def test_the_shipped_tokenizer_is_the_one_training_builds_and_transformers_agrees():
    from transformers import AutoTokenizer

    assert (ASSETS / "tokenizer.json").read_text() == build_tokenizer().to_str(pretty=True)
    hf = AutoTokenizer.from_pretrained(ASSETS)
    tok = build_tokenizer()
    for text in all_captions()[::7] + list(PROMPTS):
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False).ids


def test_prompt_ids_are_what_serving_builds_from_the_checkpoint():
    from graphs.families.llava.checkpoint import read_checkpoint
    from mmcore.manifest import PromptSpec
    from serve_app.api.prompt import ImageSlot, PromptRenderer
    from serve_app.api.protocol import ChatMessage

    ck, tok = read_checkpoint(ASSETS), build_tokenizer()
    spec = PromptSpec(chat_template=ck.chat_template, image_token="<image>", image_features=ck.vision.features_per_image)
    for prompt in PROMPTS:
        msg = ChatMessage.model_validate({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}, {"type": "text", "text": prompt}]})
        served = []
        for piece in PromptRenderer(spec, tok).pieces([msg], 1):
            served += [ck.image_token_id] * spec.image_features if isinstance(piece, ImageSlot) else piece
        assert served == prompt_ids(tok, prompt)


@pytest.mark.parametrize("seed", range(6))
def test_model_pixels_are_the_preprocess_stage_resize(seed):
    from serve_app.imaging.resize import resize_shortest_edge

    for draw in RENDERERS.values():
        rgb, _ = draw(seed)
        assert np.array_equal(model_pixels(rgb), resize_shortest_edge(Image.fromarray(rgb), IMAGE_SIZE, IMAGE_SIZE))


def test_names_every_shape_reads_color_and_kind_only():
    truth = "a red circle on the left and a blue square on the right"
    assert shapes_named("three green triangles") == [("green", "triangle")]
    assert names_every_shape("a blue square at the top and a red circle at the bottom", truth)
    assert not names_every_shape("a red circle on the left and a blue triangle on the right", truth)
    assert not names_every_shape("a large red circle on the left", truth)
    assert names_every_shape("a large red circle in the center", "a small red circle on the left")
    assert not names_every_shape("a large purple circle in the center", "a small red circle on the left")
    assert names_every_shape("two blue squares", "three blue squares")
