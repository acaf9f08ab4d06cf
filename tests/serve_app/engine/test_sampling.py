"""Sampling: the right distribution, top-p cuts the tail, and a row's draw ignores the rest of the batch."""

import numpy as np
import pytest

from serve_app.engine.sampling import BLOCK, SamplingParams, sample_batch

PROBS = np.array([0.5, 0.25, 0.15, 0.07, 0.03])


def draws(logits_row: np.ndarray, params: SamplingParams, n: int = 20000) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.array([sample_batch(logits_row[None], [params], [rng])[0] for _ in range(n)])


# one partial block; and several blocks plus a remainder, with the mass spread over them
@pytest.mark.parametrize("vocab,ids", [(5, [0, 1, 2, 3, 4]), (3 * BLOCK + 7, [3 * BLOCK + 6, 7, 2 * BLOCK + 3, 0, BLOCK])])
def test_temperature_one_samples_the_softmax(vocab, ids):
    logits = np.full(vocab, -1e4, np.float32)
    logits[ids] = np.log(PROBS)
    picked = draws(logits, SamplingParams(1.0))
    freq = np.array([(picked == i).mean() for i in ids])
    assert np.abs(freq - PROBS).max() < 0.015
    assert np.isin(picked, ids).all()


def test_temperature_sharpens_and_top_p_cuts_the_tail():
    logits = np.log(PROBS).astype(np.float32)
    cold = draws(logits, SamplingParams(0.5), 5000)
    expected = PROBS ** 2 / (PROBS ** 2).sum()
    assert abs((cold == 0).mean() - expected[0]) < 0.03
    nucleus = draws(logits, SamplingParams(1.0, top_p=0.8), 5000)  # 0.5 + 0.25 < 0.8 <= 0.5 + 0.25 + 0.15
    assert set(np.unique(nucleus)) == {0, 1, 2}
    kept = PROBS[:3] / PROBS[:3].sum()
    assert abs((nucleus == 0).mean() - kept[0]) < 0.03


def test_top_p_on_a_nearly_flat_row_keeps_exactly_its_nucleus():
    vocab = 1000
    logits = (-1e-3 * np.arange(vocab)).astype(np.float32)  # nearly uniform, most likely first
    probs = np.exp(logits.astype(np.float64))
    nucleus_size = int(np.searchsorted(np.cumsum(probs) / probs.sum(), 0.9)) + 1
    picked = draws(logits, SamplingParams(1.0, top_p=0.9), 5000)
    assert picked.max() == nucleus_size - 1  # the whole nucleus is reachable, nothing past it
    assert len(np.unique(picked)) > 0.9 * nucleus_size


def test_top_p_keeps_tokens_tied_with_the_last_one_in():
    logits = np.zeros(10, np.float32)  # all tied: no way to rank them, so none is cut
    picked = draws(logits, SamplingParams(1.0, top_p=0.5), 3000)
    assert set(np.unique(picked)) == set(range(10))


def test_a_rows_token_does_not_depend_on_the_other_rows():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((8, 1000)).astype(np.float32) * 4
    params = [SamplingParams(0.9, 0.95, seed=5), SamplingParams(0.0), SamplingParams(1.3, 1.0, seed=6)] + \
             [SamplingParams(1.0, 0.7, seed=i) for i in range(5)]
    batch = sample_batch(logits, params, [p.make_rng() for p in params])
    for i, p in enumerate(params):
        alone = sample_batch(logits[i:i + 1], [p], [p.make_rng()])[0]
        assert alone == batch[i]
    assert batch[1] == logits[1].argmax()


def test_any_integer_seeds_a_reproducible_stream():
    for seed in (-1, 2**70, 0):
        a, b = SamplingParams(1.0, seed=seed).make_rng(), SamplingParams(1.0, seed=seed).make_rng()
        assert a.random() == b.random()
    assert SamplingParams(seed=-1).make_rng().random() != SamplingParams(seed=1).make_rng().random()
