"""A numpy stand-in for the decoder graph, for fast engine tests.

It keeps a real per-slot cache (slots, max_context, D) of the embeddings it was given, and its logits depend on the
whole cached row, in order: a scheduling bug that binds the wrong rows, loses a prefix when compacting, or writes a
token at the wrong position changes the tokens, and the reference below (the same function on one sequence, no
cache) tells.
"""

from __future__ import annotations

import time

import numpy as np

from graphs.families.own.tokenizer import EOS, build_tokenizer, token_id

VOCAB, WIDTH = 512, 16


def make_tokenizer():
    return build_tokenizer(VOCAB)


def make_embeddings(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((VOCAB, WIDTH)).astype(np.float32)  # (V,D)


def eos_id(tok) -> int:
    return token_id(tok, EOS)


class FakeModel:
    """logits = tanh(sum_t E[t] * cos(0.37 t)) @ W: depends on every position and its order."""

    def __init__(self, seed: int = 2):
        self.w = np.random.default_rng(seed).standard_normal((WIDTH, VOCAB)).astype(np.float32) * 3  # (D,V)

    def logits(self, seq_embeds: np.ndarray) -> np.ndarray:
        """seq_embeds (L,D) -> (V,)"""
        t = np.arange(seq_embeds.shape[0], dtype=np.float32)
        h = np.tanh((seq_embeds * np.cos(0.37 * t)[:, None]).sum(0))  # (D,)
        return h @ self.w

    def greedy(self, embeds: np.ndarray, table: np.ndarray, max_new: int, eos: int | None) -> list[int]:
        """The single-sequence reference: recompute from scratch at every token."""
        seq, out = embeds, []
        for _ in range(max_new):
            tok = int(np.argmax(self.logits(seq)))
            out.append(tok)
            if tok == eos:
                break
            seq = np.concatenate([seq, table[tok][None]])
        return out


class FakeRunner:
    def __init__(self, model: FakeModel, slots: int, max_context: int, fail_on_batch: int | None = None,
                 step_delay_s: float = 0.0):
        self.model, self.slots, self.max_context, self.vocab_size = model, slots, max_context, VOCAB
        self.cache = np.full((slots + 1, max_context, WIDTH), np.nan, np.float32)  # NaN: unwritten rows show
        self.prefill_calls: list[tuple[int, list[int], list[int]]] = []  # (first slot, starts, positions)
        self.calls: list[tuple[str, int]] = []  # ("prefill", positions) / ("decode", batch), in call order
        self.batch_sizes: list[int] = []
        self.fail_on_batch = fail_on_batch  # raise in a decode call of this batch size: error-path tests
        self.step_delay_s = step_delay_s  # a decode call this long, GIL released, like ORT's
        self.prefill_delay_s = 0.0  # a prefill call this long (tests that must see a prompt while it is staged)

    def prefill_rows(self, lo: int, chunks: list[np.ndarray], starts: list[int]) -> np.ndarray:
        """The real runner's contract, enforced: fresh rows only when several (ORT's CPU GroupQueryAttention refuses
        a batch of chunks over a cached past), and each row writes S = the longest chunk's positions, padding
        included, as the real graph does: a row read past its own length would show the padding."""
        s = max(c.shape[0] for c in chunks)
        if len(chunks) > 1 and any(starts):
            raise RuntimeError("batch_size must be 1 when sequence_length > 1 and past context is given")
        if max(starts) + s > self.max_context:
            raise ValueError("a ragged prefill past the cache's end")
        self.prefill_calls.append((lo, list(starts), [c.shape[0] for c in chunks]))
        self.calls.append(("prefill", sum(c.shape[0] for c in chunks)))
        if self.prefill_delay_s:
            time.sleep(self.prefill_delay_s)
        for i, (chunk, start) in enumerate(zip(chunks, starts)):
            slot = lo + i
            if start == 0:
                self.cache[slot] = np.nan
            self.cache[slot, start:start + chunk.shape[0]] = chunk
            self.cache[slot, start + chunk.shape[0]:start + s] = chunk[-1] * 7  # padding: garbage past its length
        # as the graph's head: column S-1 of every row, the padding's logits for a shorter row
        return np.stack([self.model.logits(self.cache[lo + i, :start + s]) for i, start in enumerate(starts)])

    def decode(self, n: int, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if n == self.fail_on_batch:
            raise RuntimeError("injected graph failure")
        self.batch_sizes.append(n)
        self.calls.append(("decode", n))
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        out = np.empty((n, VOCAB), np.float32)
        for i in range(n):
            self.cache[i, lengths[i]] = embeds[i]
            out[i] = self.model.logits(self.cache[i, :lengths[i] + 1])
        return out

    def move(self, src: int, dst: int, length: int) -> None:
        self.cache[dst] = np.nan
        self.cache[dst, :length] = self.cache[src, :length]
