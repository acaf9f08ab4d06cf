"""Per-sequence sampling over one batch of logits.

Greedy rows take the argmax together; sampled rows are processed together too, but each draws exactly one uniform
number per token from its own numpy Generator, and every other operation works row by row (max, exp, cumsum, a
partial sort of that row alone), so a seeded request produces the same tokens whatever else shares the batch
(provided the graph gives the row the same logits, which the fp32 decoder does).

    probs = exp((logits - max) / T)                           unnormalized, per row
    top_p < 1: candidates = the row's TOP_K largest (argpartition); if they hold p of the mass, sort only them,
               else sort the whole row; keep the shortest prefix reaching p
    token = the first index whose cumulative mass exceeds u * (kept mass), u ~ U[0,1) from the row's Generator
            (top_p = 1: found in two levels, block sums then inside one block, since a full cumsum is slow)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP_K = 256  # candidates sorted for top-p; a peaked distribution's nucleus is almost always among them
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
        return np.random.default_rng(self.seed)


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
    full = [j for j, i in enumerate(rows) if params[i].top_p >= 1.0]
    if full:
        tokens[[rows[j] for j in full]] = _inverse_cdf(probs[full], u[full])
    for j, i in enumerate(rows):
        if params[i].top_p < 1.0:
            tokens[i] = _nucleus(probs[j], params[i].top_p, u[j])
    return tokens


def _inverse_cdf(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """probs (k,V) unnormalized, u (k,) -> (k,) the first index whose cumulative mass exceeds u * total.

    Two levels, because numpy's cumsum is scalar code (~0.2 ms over 8k entries here) while its sum is vectorized:
    sums of BLOCK-wide blocks, a cumsum over those few, then a cumsum inside the one block that holds the target."""
    k, v = probs.shape
    padded = np.zeros((k, -(-v // BLOCK) * BLOCK), np.float32)
    padded[:, :v] = probs
    blocks = padded.reshape(k, -1, BLOCK)  # (k,nb,BLOCK)
    block_cum = np.cumsum(blocks.sum(axis=2), axis=1)  # (k,nb)
    picked = np.empty(k, np.int64)
    for j in range(k):
        target = u[j] * block_cum[j, -1]
        b = min(int(np.searchsorted(block_cum[j], target, side="right")), block_cum.shape[1] - 1)
        before = block_cum[j, b - 1] if b > 0 else 0.0
        inside = np.cumsum(blocks[j, b]) + before  # (BLOCK,)
        picked[j] = b * BLOCK + int(np.searchsorted(inside, target, side="right"))
    return np.minimum(picked, v - 1)


def _nucleus(probs: np.ndarray, top_p: float, u: float) -> int:
    """probs (V,) unnormalized -> one token from the smallest set of most likely tokens holding top_p of the mass.
    Ties keep the lower id first, so the set is deterministic."""
    total = probs.sum()
    k = min(TOP_K, probs.shape[0])
    cand = np.argpartition(-probs, k - 1)[:k] if k < probs.shape[0] else np.arange(probs.shape[0])
    if probs[cand].sum() < top_p * total:
        cand = np.arange(probs.shape[0])  # a flat distribution: its nucleus reaches past the candidates
    order = cand[np.lexsort((cand, -probs[cand]))]  # by probability, descending; ties by id
    cum = np.cumsum(probs[order])
    keep = int(np.searchsorted(cum, top_p * total, side="left")) + 1  # shortest prefix reaching top_p
    kept = cum[:keep]
    return int(order[min(int(np.searchsorted(kept, u * kept[-1], side="right")), keep - 1)])
