"""Prompt prefill within a per-step budget of positions, so arrivals never stall the running streams for long.

    waiting --pop--> prompt fits the step's remaining budget? --yes--> prefill straight into slot n (next free)
                                                             --no---> staging row, one chunk per step
                                                                      (the row after the last slot); when the
                                                                      prompt is complete, its cached prefix moves
                                                                      into slot n
At most one sequence is staged at a time; it holds a decode slot from the moment it leaves the queue. Chunks continue the cache like a
decode step does (GroupQueryAttention with seqlens_k / total_sequence_length past the cached prefix), so a chunked
prompt caches exactly what a whole-prompt prefill would.
"""

from __future__ import annotations

import time

import numpy as np

from serve_app.engine.runner import StepRunner
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import Sequence
from serve_app.contract import TokenSegment

Prefilled = list[tuple[Sequence, np.ndarray]]  # sequences whose prompt is now cached, with last-position logits (V,)


class Prefiller:
    def __init__(self, runner: StepRunner, embeddings: np.ndarray, scheduler: Scheduler):
        self.runner = runner
        self.embeddings = embeddings  # (V,D)
        self.scheduler = scheduler
        self.staging_slot = runner.slots  # the runner's cache has one row past the decode slots
        self.staged: Sequence | None = None
        self._staged_embeds: np.ndarray | None = None  # (S,D) the staged prompt

    def prompt_embeds(self, seq: Sequence) -> np.ndarray:
        """The prompt's segments in order, each token embedded, each image block as is -> (S,D)."""
        parts = [self.embeddings[np.asarray(s.ids, dtype=np.int64)] if isinstance(s, TokenSegment)
                 else np.asarray(s.features, np.float32) for s in seq.request.segments]
        return np.concatenate(parts)

    def prepare(self, seq: Sequence, report) -> np.ndarray | None:
        """A popped sequence's prompt embeddings (S,D), or None when they cannot be built: then that sequence alone
        fails and gives its slot back, and the step goes on with the others (it is neither active nor staged yet,
        so nothing else would ever fail it and its stream would wait forever)."""
        try:
            return self.prompt_embeds(seq)
        except Exception as e:  # noqa: BLE001 -- handed to the stream, which raises it to its caller
            self.scheduler.abandon(seq)
            fail(seq, PromptError(f"request {seq.request.request_id}: its prompt could not be prepared for "
                                  f"prefill: {type(e).__name__}: {e}"), report)
            return None

    def step(self, budget: int, report) -> Prefilled:
        """Spend up to `budget` prompt positions: the staged prompt first, then arrivals in order."""
        done: Prefilled = []
        budget -= self._continue_staged(budget, done, report)
        while budget > 0:
            seq = self.scheduler.pop_waiting()
            if seq is None:
                break
            report.queue_waits_s.append(time.perf_counter() - seq.submitted_at)
            embeds = self.prepare(seq, report)
            if embeds is None:
                continue
            if embeds.shape[0] <= budget:
                budget -= embeds.shape[0]
                self.whole(seq, embeds, done, report)
            else:  # nothing is staged here: a staged prompt always takes the rest of the budget
                self.staged, self._staged_embeds = seq, embeds
                budget -= self._continue_staged(budget, done, report)
        return done

    def whole(self, seq: Sequence, embeds: np.ndarray, done: Prefilled, report) -> None:
        """The whole prompt straight into the next free slot."""
        slot = self.scheduler.activate(seq)  # first: a failed prefill is retired like any other sequence
        try:
            logits = self.runner.prefill(slot, embeds)  # (V,)
        except Exception as e:  # noqa: BLE001 -- handed to the stream
            fail(seq, e, report)
            return
        seq.length = embeds.shape[0]
        done.append((seq, logits))

    def _continue_staged(self, budget: int, done: Prefilled, report) -> int:
        """Prefill the staged prompt's next chunk; -> positions spent."""
        seq = self.staged
        if seq is None or budget <= 0:
            return 0
        if seq.done:  # cancelled while staged
            self.staged = None
            self.scheduler.abandon(seq)
            return 0
        embeds, start = self._staged_embeds, seq.length
        n = min(budget, embeds.shape[0] - start)
        try:
            logits = self.runner.prefill(self.staging_slot, embeds[start:start + n], start)  # (V,)
        except Exception as e:  # noqa: BLE001 -- handed to the stream
            self.staged = None
            self.scheduler.abandon(seq)
            fail(seq, e, report)
            return n
        seq.length = start + n
        if seq.length == embeds.shape[0]:
            slot = len(self.scheduler.active)  # free: the sequence has held a slot since pop_waiting
            self.runner.move(self.staging_slot, slot, seq.length)
            self.scheduler.activate(seq)
            self.staged = None
            done.append((seq, logits))
        return n


class PromptError(RuntimeError):
    """A sequence's prompt could not be turned into the embeddings its prefill needs."""


def fail(seq: Sequence, error: BaseException, report) -> None:
    seq.finished = "error"
    report.failed.append((seq, error))
