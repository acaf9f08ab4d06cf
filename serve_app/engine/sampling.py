"""Per-sequence sampling over one batch of logits.

Greedy rows take the argmax together; sampled rows each draw exactly one uniform number per token from their own
numpy Generator, so a seeded request produces the same tokens whatever else shares the batch (provided the graph
gives the row the same logits, which the fp32 decoder does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def sample_one(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """logits (V,) -> one token id, drawing one uniform from `rng`."""
    z = logits.astype(np.float64) / params.temperature  # float64: the cumulative sum below must reach 1.0
    z -= z.max()
    probs = np.exp(z)
    probs /= probs.sum()
    u = rng.random()
    if params.top_p >= 1.0:
        idx = int(np.searchsorted(np.cumsum(probs), u, side="right"))
        return min(idx, probs.shape[0] - 1)
    order = np.argsort(-probs, kind="stable")  # ties keep the lower id first: deterministic
    cum = np.cumsum(probs[order])
    keep = int(np.searchsorted(cum, params.top_p, side="left")) + 1  # smallest prefix reaching top_p
    kept = cum[:keep] / cum[keep - 1]
    return int(order[min(int(np.searchsorted(kept, u, side="right")), keep - 1)])


def sample_batch(logits: np.ndarray, params: list[SamplingParams], rngs: list[np.random.Generator]) -> np.ndarray:
    """logits (n,V), one params and rng per row -> token ids (n,) int64."""
    tokens = np.argmax(logits, axis=1)  # (n,) greedy for every row; sampled rows overwrite theirs
    for i, (p, rng) in enumerate(zip(params, rngs)):
        if not p.greedy:
            tokens[i] = sample_one(logits[i], p, rng)
    return tokens
