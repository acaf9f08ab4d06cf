"""What a sequence's own tokens do to its next logits: penalties, min_tokens' ban on ending, and raw logprobs.

Every operation here works on one row with that row's own token history, so a row's result never depends on the
other rows of its batch. Applied to the raw logits before temperature and before the greedy argmax, in vLLM's
and transformers' order:

    repetition_penalty  (prompt + output tokens)  l < 0: l * p, else l / p     transformers RepetitionPenaltyLogitsProcessor
    frequency_penalty   (output tokens)           l -= f * count                OpenAI / vLLM
    presence_penalty    (output tokens)           l -= p * (count > 0)          OpenAI / vLLM
    min_tokens          until that many tokens:   eos ids and stop_token_ids -> -inf   transformers MinNewTokensLength

Image positions count as the image placeholder's id (DecodeRequest.image_token_id), as transformers' input_ids
hold it there.

Logprobs are the raw model's (log_softmax of the logits before any of the above, temperature included), as vLLM
returns them by default (its `logprobs_mode` "raw_logprobs").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class TokenHistory:
    """One sequence's token counts: the prompt's distinct ids (repetition penalty) and its output counts."""
    prompt_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (k,) distinct, sorted
    output: dict[int, int] = field(default_factory=dict)  # token id -> times generated
    generated: int = 0

    @classmethod
    def of_prompt(cls, ids) -> "TokenHistory":
        return cls(np.unique(np.asarray(ids, np.int64)))

    def add(self, token: int) -> None:
        self.output[token] = self.output.get(token, 0) + 1
        self.generated += 1

    def output_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids, counts) of the output tokens so far."""
        ids = np.fromiter(self.output.keys(), np.int64, len(self.output))
        return ids, np.fromiter(self.output.values(), np.float32, len(self.output))


def adjust_row(row: np.ndarray, params, history: TokenHistory, end_ids: frozenset[int]) -> np.ndarray | None:
    """Apply the penalties and min_tokens' ban to one row of logits (V,), in place; -> the banned ids, if any.
    `end_ids`: the eos ids that end this sequence (none when it ignores eos); min_tokens bans them and its
    stop_token_ids."""
    if params.repetition_penalty != 1.0:
        out_ids, _ = history.output_arrays()
        ids = np.union1d(history.prompt_ids, out_ids)
        values = row[ids]
        row[ids] = np.where(values < 0, values * params.repetition_penalty, values / params.repetition_penalty)
    if params.frequency_penalty or params.presence_penalty:
        ids, counts = history.output_arrays()
        row[ids] -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    if history.generated < params.min_tokens:
        banned = np.fromiter(end_ids | set(params.stop_token_ids), np.int64)
        banned = banned[(banned >= 0) & (banned < row.shape[0])]
        row[banned] = -np.inf
        return banned
    return None


def needs_adjusting(params, history: TokenHistory) -> bool:
    return (params.repetition_penalty != 1.0 or bool(params.frequency_penalty) or bool(params.presence_penalty)
            or history.generated < params.min_tokens)


@dataclass
class TokenLogprobs:
    """The chosen token's raw logprob and the `n` most likely tokens' (id, logprob), most likely first."""
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def row_logprobs(row: np.ndarray, token: int, n: int) -> TokenLogprobs:
    """row: raw logits (V,) of one sequence -> its logprobs entry for `token` with the top `n`."""
    x = row.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    top: list[tuple[int, float]] = []
    if n > 0:
        n = min(n, x.shape[0])
        idx = np.argpartition(-x, n - 1)[:n]
        idx = idx[np.lexsort((idx, -x[idx]))]  # most likely first; ties by id, so the order is deterministic
        top = [(int(i), float(x[i] - lse)) for i in idx]
    return TokenLogprobs(int(token), float(x[token] - lse), top)
