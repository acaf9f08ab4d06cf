"""top_k, min_p, top_p, temperature, the penalties, min_tokens and logprobs: each against transformers' own logits
processor on the same logits where it has one, and the batch invariance and seeding the engine promises."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.engine.penalties import TokenHistory, adjust_row, row_logprobs
from serve_app.engine.sampling import SamplingParams, cut_probs, next_tokens

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")

V = 300


def logits(seed: int, n: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, V)) * 3).astype(np.float32)  # (n,V)


def kept_by_us(row: np.ndarray, p: SamplingParams) -> np.ndarray:
    """The tokens sampling may draw from: probs as sample_batch makes them, then the cuts."""
    probs = np.exp((row - row.max()) / p.temperature)[None].astype(np.float32)
    cut_probs(probs, [p])
    return probs[0] > 0


def kept_by_transformers(row: np.ndarray, p: SamplingParams) -> np.ndarray:
    """generate()'s warpers in its order: temperature, top-k, top-p, min-p."""
    warpers = [lp.TemperatureLogitsWarper(p.temperature)]
    if p.top_k:
        warpers.append(lp.TopKLogitsWarper(p.top_k))
    if p.top_p < 1:
        warpers.append(lp.TopPLogitsWarper(p.top_p))
    if p.min_p:
        warpers.append(lp.MinPLogitsWarper(p.min_p))
    scores, ids = torch.tensor(row[None]), torch.zeros((1, 1), dtype=torch.long)
    for w in warpers:
        scores = w(ids, scores)
    return torch.isfinite(scores[0]).numpy()


@pytest.mark.parametrize("params", [
    SamplingParams(1.0, top_k=1), SamplingParams(0.7, top_k=5), SamplingParams(1.3, top_k=40),
    SamplingParams(1.0, min_p=0.05), SamplingParams(0.5, min_p=0.3), SamplingParams(1.0, top_p=0.6),
    SamplingParams(0.8, top_p=0.9, top_k=20), SamplingParams(1.0, top_p=0.95, min_p=0.02),
    SamplingParams(1.2, top_k=50, top_p=0.8, min_p=0.1)])
@pytest.mark.parametrize("seed", range(5))
def test_cuts_keep_what_transformers_warpers_keep(params, seed):
    row = logits(seed)[0]
    ours, theirs = kept_by_us(row, params), kept_by_transformers(row, params)
    assert ours.sum() >= 1 and np.array_equal(ours, theirs)


def test_top_k_keeps_ties_with_the_kth_value_as_transformers_does():
    row = np.array([3.0, 2.0, 2.0, 2.0, 1.0] + [0.0] * (V - 5), np.float32)
    p = SamplingParams(1.0, top_k=2)
    assert kept_by_us(row, p).sum() == 4 and np.array_equal(kept_by_us(row, p), kept_by_transformers(row, p))


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_equals_transformers_over_prompt_and_output(penalty):
    row = logits(11)[0]
    prompt, output = [3, 7, 7, 250, 9], [9, 40, 40, 41]
    history = TokenHistory.of_prompt(prompt)
    for t in output:
        history.add(t)
    ours = row.copy()
    assert adjust_row(ours, SamplingParams(repetition_penalty=penalty), history, frozenset()) is None
    theirs = lp.RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prompt + output]), torch.tensor(row[None]))
    np.testing.assert_array_equal(ours, theirs[0].numpy())


def test_presence_and_frequency_penalties_count_output_tokens_only():
    row = np.zeros(V, np.float32)
    history = TokenHistory.of_prompt([5, 6])
    for t in (1, 2, 2, 2):
        history.add(t)
    adjust_row(row, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), history, frozenset())
    assert row[1] == pytest.approx(-0.75) and row[2] == pytest.approx(-1.25)  # 0.5 + 0.25 * count
    assert not row[5] and not row[6] and np.count_nonzero(row) == 2  # prompt tokens are not penalized


def test_min_tokens_bans_eos_and_stop_token_ids_until_reached_as_transformers():
    row = logits(3)[0]
    eos, stop = 17, 23
    p = SamplingParams(0.0, min_tokens=2, stop_token_ids=(stop,))
    history = TokenHistory.of_prompt([1, 2, 3])
    ours = row.copy()
    assert sorted(adjust_row(ours, p, history, frozenset({eos}))) == [eos, stop]
    proc = lp.MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=3, min_new_tokens=2, eos_token_id=[eos, stop])
    np.testing.assert_array_equal(ours, proc(torch.tensor([[1, 2, 3]]), torch.tensor(row[None]))[0].numpy())
    history.add(4)
    history.add(5)
    untouched = row.copy()
    assert adjust_row(untouched, p, history, frozenset({eos})) is None and np.array_equal(untouched, row)


def test_min_tokens_ban_holds_for_sampled_rows_too():
    row = np.full((1, V), -5.0, np.float32)
    row[0, 17] = 10.0  # eos: almost all the mass
    p = SamplingParams(1.0, seed=0, min_tokens=5)
    rng = p.make_rng()
    toks = [int(next_tokens(row, [p], [rng], [TokenHistory()], [frozenset({17})])[0][0]) for _ in range(300)]
    assert 17 not in toks


def test_penalties_change_greedy_choice():
    row = np.zeros((1, V), np.float32)
    row[0, 4], row[0, 8] = 2.0, 1.5
    history = TokenHistory.of_prompt([4])
    plain, _ = next_tokens(row, [SamplingParams(0.0)], [None], [history], [frozenset()])
    penalized, _ = next_tokens(row, [SamplingParams(0.0, repetition_penalty=2.0)], [None], [history], [frozenset()])
    assert (plain[0], penalized[0]) == (4, 8) and row[0, 4] == 2.0  # the caller's logits are left alone


def test_logprobs_are_the_raw_log_softmax_with_the_most_likely_first():
    row = logits(5)[0]
    entry = row_logprobs(row, 12, 5)
    ref = torch.log_softmax(torch.tensor(row, dtype=torch.float64), -1).numpy()
    assert entry.token_id == 12 and entry.logprob == pytest.approx(ref[12], abs=1e-9)
    order = np.argsort(-ref)[:5]
    assert [t for t, _ in entry.top] == order.tolist()
    np.testing.assert_allclose([v for _, v in entry.top], ref[order], atol=1e-9)
    assert row_logprobs(row, 12, 0).top == []


def test_logprobs_ignore_penalties_and_temperature():
    row = logits(6)
    history = TokenHistory.of_prompt([0, 1, 2])
    p = SamplingParams(0.3, seed=1, repetition_penalty=1.7, top_k=3, logprobs=2)
    _, (entry,) = next_tokens(row.copy(), [p], [p.make_rng()], [history], [frozenset()])
    assert entry.top == row_logprobs(row[0], entry.token_id, 2).top


MIXED = [SamplingParams(0.9, 0.95, seed=5, top_k=30, repetition_penalty=1.2, logprobs=3),
         SamplingParams(0.0, repetition_penalty=1.5, presence_penalty=0.4),
         SamplingParams(1.3, 1.0, seed=6, min_p=0.1, frequency_penalty=0.8, min_tokens=4),
         SamplingParams(0.7, seed=7, top_k=5, top_p=0.8, min_p=0.05),
         SamplingParams(1.0, seed=8)]


def run(rows: list[int], steps: int = 12) -> dict[int, list[int]]:
    """Decode `rows` of MIXED together for `steps` steps on logits made from each row's own last token (as a model
    would): -> row -> its tokens."""
    params = [MIXED[i] for i in rows]
    rngs = [p.make_rng() for p in params]
    hist = [TokenHistory.of_prompt([i, i + 1, 2 * i]) for i in rows]
    last, out = list(rows), {i: [] for i in rows}
    for _ in range(steps):
        batch = np.stack([logits(1000 + t)[0] for t in last])
        toks, _ = next_tokens(batch, params, rngs, hist, [frozenset({0})] * len(rows))
        for k, (i, t) in enumerate(zip(rows, toks.tolist())):
            hist[k].add(t)
            out[i].append(t)
        last = toks.tolist()
    return out


def test_a_row_decodes_the_same_alone_and_in_any_mixed_batch():
    together = run(list(range(len(MIXED))))
    for i in range(len(MIXED)):
        assert run([i])[i] == together[i]
    assert run([4, 2, 0])[0] == together[0]


def test_seeded_rows_reproduce_and_seeds_differ():
    assert run([0, 2, 3]) == run([0, 2, 3])
    other = SamplingParams(0.9, 0.95, seed=99, top_k=30, repetition_penalty=1.2, logprobs=3)
    rows = [logits(50 + k) for k in range(20)]
    a = [int(next_tokens(r, [MIXED[0]], [rng], [TokenHistory()], [frozenset()])[0][0])
         for rng in [MIXED[0].make_rng()] for r in rows]
    b = [int(next_tokens(r, [other], [rng], [TokenHistory()], [frozenset()])[0][0])
         for rng in [other.make_rng()] for r in rows]
    assert a != b


def test_sampled_tokens_stay_inside_the_cut():
    row = logits(8)
    p = SamplingParams(1.5, seed=3, top_k=7, min_p=0.2)
    allowed = np.flatnonzero(kept_by_transformers(row[0], p))
    rng = p.make_rng()
    drawn = {int(next_tokens(row, [p], [rng], [TokenHistory()], [frozenset()])[0][0]) for _ in range(500)}
    assert drawn <= set(allowed.tolist()) and len(drawn) > 1


@pytest.mark.parametrize("field,value", [("top_k", -1), ("min_p", 1.5), ("repetition_penalty", 0.0),
                                         ("presence_penalty", 2.5), ("frequency_penalty", -3.0),
                                         ("min_tokens", -1), ("logprobs", 21)])
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


class ZeroDraw:
    """A Generator stand-in whose draw is 0.0: the edge where any token with weight, however small, is picked."""

    def random(self) -> float:
        return 0.0


def test_a_banned_token_weighs_exactly_nothing():
    row = logits(9)
    p = SamplingParams(1.0, min_tokens=1)
    tok, _ = next_tokens(row, [p], [ZeroDraw()], [TokenHistory()], [frozenset({0})])  # eos 0: the first index
    assert tok[0] != 0
