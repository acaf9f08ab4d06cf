"""Per-sequence sampling over one batch of logits.

Greedy rows take the argmax together; sampled rows are processed together too, but each draws exactly one uniform
number per token from its own numpy Generator, and every other operation works within a row (max, exp, a sort of
that row's values, running sums), so a seeded request produces the same tokens whatever else shares the batch
(provided the graph gives the row the same logits, which the fp32 decoder does).

    probs = exp((logits - max) / T)                               unnormalized, per row
    top_p < 1: sort the row's values (vectorized, no argsort), find where their running mass reaches p, and zero
               every token below that value
    token = the first index whose running mass exceeds u * (kept mass), u ~ U[0,1) from the row's Generator
    Running masses are found in two levels (block sums, then inside one block): numpy's full cumsum is slow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 64  # inverse-CDF block width: 8k logits -> 128 block sums


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    seed: int | None = None  # None = fresh OS entropy

    def __post_init__(self):
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def make_rng(self) -> np.random.Generator:
        # numpy seeds only with non-negative ints; clients may send any integer (OpenAI's seed is signed)
        return np.random.default_rng(None if self.seed is None else self.seed % 2**64)


def sample_batch(logits: np.ndarray, params: list[SamplingParams], rngs: list[np.random.Generator]) -> np.ndarray:
    """logits (n,V), one params and rng per row -> token ids (n,) int64."""
    tokens = np.argmax(logits, axis=1)  # (n,) greedy for every row; sampled rows overwrite theirs
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return tokens
    inv_temps = np.array([1.0 / params[i].temperature for i in rows], np.float32)[:, None]  # (k,1)
    z = logits[rows]  # (k,V) a copy: worked on in place below
    z -= z.max(axis=1, keepdims=True)
    z *= inv_temps
    np.maximum(z, -80.0, out=z)  # exp would give denormals below ~-87, which are slow and weigh nothing
    probs = np.exp(z, out=z)  # (k,V) unnormalized
    u = np.array([rngs[i].random() for i in rows])  # (k,) one draw per row per token, whatever the batch
    top_p = np.array([params[i].top_p for i in rows])  # (k,)
    cut = top_p < 1.0
    if cut.any():
        probs[cut] = _nucleus(probs[cut], top_p[cut])
    tokens[rows] = _first_index(probs, u * probs.sum(axis=1), strictly_above=True)
    return tokens


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
