"""Per-sequence sampling over one batch of logits.

Greedy rows take the argmax together; sampled rows are processed together too, but each draws exactly one uniform
number per token from its own numpy Generator, and every other operation works within a row (max, exp, a sort of
that row's values, running sums), so a seeded request produces the same tokens whatever else shares the batch
(provided the graph gives the row the same logits, which the fp32 decoder does).

    logits    penalties and min_tokens' ban first (penalties.py), for greedy and sampled rows alike
    probs = exp((logits - max) / T)                               unnormalized, per row; the most likely is 1
    top_k > 0: zero every token below the row's k-th largest value (ties with it kept)
    top_p < 1: sort the row's values (vectorized, no argsort), find where their running mass reaches p, and zero
               every token below that value
    min_p > 0: zero every token whose probability is below min_p times the most likely one's
    token = the first index whose running mass exceeds u * (kept mass), u ~ U[0,1) from the row's Generator
    Running masses are found in two levels (block sums, then inside one block): numpy's full cumsum is slow.

The cuts run in transformers' order (TopK, TopP, MinP warpers, each seeing what the one before kept) and match its
warpers' masks; vLLM applies min_p before top-k/top-p, which only differs when min_p removes part of a nucleus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.engine.penalties import TokenHistory, TokenLogprobs, adjust_row, needs_adjusting, row_logprobs

BLOCK = 64  # inverse-CDF block width: 8k logits -> 128 block sums


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    seed: int | None = None  # None = fresh OS entropy
    top_k: int = 0  # keep the k most likely tokens (and ties with the k-th); 0 = all
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one
    repetition_penalty: float = 1.0  # over prompt + output tokens; 1 = off
    presence_penalty: float = 0.0  # over output tokens
    frequency_penalty: float = 0.0  # over output tokens, per occurrence
    min_tokens: int = 0  # eos and stop_token_ids banned until this many tokens are out
    stop_token_ids: tuple[int, ...] = ()  # end the sequence like eos
    logprobs: int | None = None  # None = no logprobs; n = the chosen token's and the n most likely tokens'

    def __post_init__(self):
        checks = (("temperature", self.temperature >= 0.0, ">= 0"), ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
                  ("top_k", self.top_k >= 0, ">= 0"), ("min_p", 0.0 <= self.min_p <= 1.0, "in [0, 1]"),
                  ("repetition_penalty", self.repetition_penalty > 0.0, "> 0"),
                  ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "in [-2, 2]"),
                  ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "in [-2, 2]"),
                  ("min_tokens", self.min_tokens >= 0, ">= 0"),
                  ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20, "in [0, 20]"))
        for name, ok, requirement in checks:
            if not ok:
                raise ValueError(f"{name} must be {requirement}, got {getattr(self, name)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def make_rng(self) -> np.random.Generator:
        # numpy seeds only with non-negative ints; clients may send any integer (OpenAI's seed is signed)
        return np.random.default_rng(None if self.seed is None else self.seed % 2**64)


def next_tokens(logits: np.ndarray, params: list[SamplingParams], rngs: list[np.random.Generator],
                histories: list[TokenHistory], end_ids: list[frozenset[int]]
                ) -> tuple[np.ndarray, list[TokenLogprobs | None]]:
    """logits (n,V) raw, per row its params, rng, token history and the eos ids that end it -> token ids (n,) and
    per row its logprobs entry (None where not asked for). The histories are not updated here."""
    raw = {i: logits[i].copy() for i, p in enumerate(params) if p.logprobs is not None}  # before any penalty
    adjusted = [i for i, (p, h) in enumerate(zip(params, histories)) if needs_adjusting(p, h)]
    banned: list[np.ndarray | None] = [None] * len(params)
    if adjusted:
        logits = logits.copy()  # the runner's output buffer stays as the graph wrote it
        for i in adjusted:
            banned[i] = adjust_row(logits[i], params[i], histories[i], end_ids[i])
    tokens = sample_batch(logits, params, rngs, banned)
    return tokens, [row_logprobs(raw[i], int(tokens[i]), params[i].logprobs) if i in raw else None
                    for i in range(len(params))]


def sample_batch(logits: np.ndarray, params: list[SamplingParams], rngs: list[np.random.Generator],
                 banned: list[np.ndarray | None] | None = None) -> np.ndarray:
    """logits (n,V), one params and rng per row -> token ids (n,) int64. `banned`: per row the ids whose logits are
    -inf (min_tokens), which must weigh exactly nothing."""
    tokens = np.argmax(logits, axis=1)  # (n,) greedy for every row; sampled rows overwrite theirs
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return tokens
    inv_temps = np.array([1.0 / params[i].temperature for i in rows], np.float32)[:, None]  # (k,1)
    z = logits[rows]  # (k,V) a copy: worked on in place below
    z -= z.max(axis=1, keepdims=True)
    z *= inv_temps
    np.maximum(z, -80.0, out=z)  # exp would give denormals below ~-87, which are slow and weigh nothing
    probs = np.exp(z, out=z)  # (k,V) unnormalized, the most likely token at 1
    for j, i in enumerate(rows):
        if banned is not None and banned[i] is not None:
            probs[j, banned[i]] = 0.0  # -inf was clamped to -80 above
    u = np.array([rngs[i].random() for i in rows])  # (k,) one draw per row per token, whatever the batch
    cut_probs(probs, [params[i] for i in rows])
    tokens[rows] = _first_index(probs, u * probs.sum(axis=1), strictly_above=True)
    return tokens


def cut_probs(probs: np.ndarray, params: list[SamplingParams]) -> None:
    """Zero, in place, what top_k, then top_p, then min_p leave out of each row of probs (k,V)."""
    top_k = np.array([p.top_k for p in params])  # (k,)
    limited = (top_k > 0) & (top_k < probs.shape[1])
    if limited.any():
        desc = np.sort(probs[limited], axis=1)[:, ::-1]  # (m,V)
        kth = desc[np.arange(len(desc)), top_k[limited] - 1][:, None]  # (m,1)
        probs[limited] = np.where(probs[limited] >= kth, probs[limited], np.float32(0.0))
    top_p = np.array([p.top_p for p in params])  # (k,)
    cut = top_p < 1.0
    if cut.any():
        probs[cut] = _nucleus(probs[cut], top_p[cut])
    min_p = np.array([p.min_p for p in params], np.float32)  # (k,)
    floor = min_p > 0.0
    if floor.any():  # relative to the most likely token, which every cut keeps at 1
        probs[floor] = np.where(probs[floor] >= min_p[floor][:, None], probs[floor], np.float32(0.0))


def _nucleus(probs: np.ndarray, top_p: np.ndarray) -> np.ndarray:
    """probs (k,V) unnormalized -> the same with every token outside the row's nucleus zeroed: the nucleus is the
    most likely tokens whose mass first reaches top_p, plus any tied with the least likely of them."""
    desc = np.sort(probs, axis=1)[:, ::-1]  # (k,V) values, descending (vectorized sort: no per-row argsort)
    last = _first_index(desc, top_p * probs.sum(axis=1), strictly_above=False)  # (k,)
    threshold = desc[np.arange(len(last)), last][:, None]  # (k,1)
    return np.where(probs >= threshold, probs, np.float32(0.0))


def _first_index(values: np.ndarray, targets: np.ndarray, strictly_above: bool) -> np.ndarray:
    """values (k,V) >= 0, targets (k,) -> (k,) per row the first index whose running sum exceeds (or, not
    strictly, reaches) the target; the last index if none does.

    Two levels, because numpy's cumsum is scalar code (~0.2 ms over 8k entries here) while its sum is vectorized:
    sums of BLOCK-wide blocks, a cumsum over those few, then a cumsum inside the one block that holds the target."""
    k, v = values.shape
    before_target = np.less_equal if strictly_above else np.less  # running sums still short of the target
    padded = np.zeros((k, -(-v // BLOCK) * BLOCK), np.float32)
    padded[:, :v] = values
    blocks = padded.reshape(k, -1, BLOCK)  # (k,nb,BLOCK)
    block_cum = np.cumsum(blocks.sum(axis=2), axis=1)  # (k,nb)
    t = targets.astype(np.float32)[:, None]  # (k,1)
    b = np.minimum(before_target(block_cum, t).sum(axis=1), block_cum.shape[1] - 1)  # (k,) the block holding it
    rows = np.arange(k)
    start = np.where(b > 0, block_cum[rows, b - 1], 0.0).astype(np.float32)[:, None]  # (k,1) mass before it
    inside = np.cumsum(blocks[rows, b], axis=1) + start  # (k,BLOCK)
    return np.minimum(b * BLOCK + before_target(inside, t).sum(axis=1), v - 1)
