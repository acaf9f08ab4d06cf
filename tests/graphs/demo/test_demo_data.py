"""The labelled-image generator: seeded, captions from the grammar, disjoint splits."""

import numpy as np
import pytest

from graphs.families.own.config import get_preset
from graphs.demo.dataset import HELDOUT_START, PROMPTS, caption_ids, decode_caption, demo_tokenizer, heldout_seeds
from graphs.demo.render import render_seed
from graphs.demo.scenes import all_captions
from graphs.demo.train import DEFAULT_BATCH, DEFAULT_STEPS, training_seeds

SIZE = get_preset("demo").vision.image_size


def test_a_seed_is_an_image():
    a, cap_a = render_seed(7, SIZE)
    b, cap_b = render_seed(7, SIZE)
    assert a.shape == (3, SIZE, SIZE) and a.dtype == np.uint8
    assert np.array_equal(a, b) and cap_a == cap_b
    assert not np.array_equal(a, render_seed(8, SIZE)[0])


def test_captions_come_from_the_grammar_and_cover_every_layout():
    grammar = set(all_captions())
    caps = [render_seed(s, SIZE)[1] for s in range(300)]
    assert set(caps) <= grammar
    assert any(" and " in c for c in caps)  # pairs
    assert any(c.startswith(("two ", "three ")) for c in caps)  # counts
    assert any(c.startswith(("a small", "a large")) for c in caps)  # singles


def test_shapes_are_drawn_in_their_colour():
    pixels, caption = next((p, c) for p, c in (render_seed(s, SIZE) for s in range(100)) if c.startswith("a large red"))
    r, g, b = (pixels[i].astype(int) for i in range(3))
    assert ((r > 170) & (g < 90) & (b < 90)).sum() > 0.05 * SIZE * SIZE  # a large red shape covers >5% of the canvas


def test_training_and_heldout_seeds_are_disjoint():
    last_step = training_seeds(DEFAULT_STEPS - 1, DEFAULT_BATCH)
    assert max(last_step) < HELDOUT_START == min(heldout_seeds(200))
    with pytest.raises(ValueError, match="held-out"):
        training_seeds(HELDOUT_START // DEFAULT_BATCH, DEFAULT_BATCH)


def test_every_caption_tokenizes_round_trip_and_short():
    tok = demo_tokenizer(get_preset("demo").decoder.vocab_size)
    assert tok.get_vocab_size() == get_preset("demo").decoder.vocab_size
    for cap in all_captions():
        ids = caption_ids(tok, cap)
        assert decode_caption(tok, ids) == cap
        assert len(ids) <= 16  # words are whole tokens: merges were learned from the grammar
    assert all(len(tok.encode(p).ids) <= 8 for p in PROMPTS)
