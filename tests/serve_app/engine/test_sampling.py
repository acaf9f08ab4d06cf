"""Sampling: the right distribution, top-p cuts the tail, and a row's draw ignores the rest of the batch."""

import numpy as np
import pytest

from serve_app.engine.sampling import BLOCK, TOP_K, SamplingParams, sample_batch

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


def test_top_p_on_a_flat_row_reaches_past_the_partial_sort():
    vocab = 4 * TOP_K
    logits = np.zeros(vocab, np.float32)  # uniform: the nucleus of 0.9 holds 90% of the ids
    picked = draws(logits, SamplingParams(1.0, top_p=0.9), 3000)
    assert len(np.unique(picked)) > TOP_K  # not limited to the candidates
    assert picked.max() < int(0.9 * vocab) + 1  # ties keep the lower ids: the top 10% of ids are cut


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
