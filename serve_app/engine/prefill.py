"""Prompt prefill within one token budget per step, shared with the decode rows, with no head-of-line blocking.

A prompt of L positions is prefilled up to its last position (L-1 positions); the last one goes through the decode
call of the same step like any decode row, and that call's logits give its first token. So a prefill call never needs
a row's own logits, which lets several prompts of different lengths share one call (right-padded rows).

    waiting --pop--> its L-1 positions fit what is left of the step's budget? --yes--> whole: activated into the next
                                                                                      free slot, prefilled there
                                                                               --no---> staged: a row at the top of
                                                                                      the cache, one chunk per step
    whole prompts of a step: ONE ragged ORT call (a few when right-padding would waste more than it saves); a prompt
    that would be the step's only decode row is prefilled with its last position instead, and that call's logits
    give its first token (no decode call: a lone request's first token one decode step sooner)
    a staged prompt: one call per chunk; when only its last position is left, its cached prefix moves into the next
    free slot and it decodes from there

The budget per step is prefill_token_budget less the decode rows. The oldest staged prompt gets half of it first (it
always progresses), then arrivals that fit whole take theirs (a short prompt never waits behind a long one), then
the staged prompts take what is left, oldest first. Several prompts may be staged at once.

Why fresh prompts share a call and chunks do not: ORT's CPU GroupQueryAttention refuses a batch of more than one row
with more than one new position over a cached past ("batch_size must be 1 when sequence_length > 1 and past context
is given", ORT 1.31), so rows of one call either all start at 0 or the call has one row.

Staged rows live at the top of the cache: staged[j] owns row `slots - j` (the runner's cache has one row past the
decode slots). Every popped sequence holds a slot, so with n active and k staged, n + k <= slots and the staged rows
(slots - k + 1 .. slots) never meet the active ones (0..n-1) nor a whole prompt's slot (n..).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from serve_app.contract import TokenSegment
from serve_app.engine.runner import StepRunner
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import Sequence

# Padding is paid in full (a padded position costs what a real one does), and on CPU a call of a few dozen positions
# already runs its GEMMs near their best rate, so rows share a call only where that saves more than it pads: the
# padded call within 1/8 over its real positions, or small enough (<= 32 positions) that the call's fixed cost and
# the poor rate of tiny GEMMs outweigh it (reference preset: a position ~0.23 ms, bench_prefill.py).
PAD_WASTE = 0.125
PAD_FREE = 32


@dataclass(eq=False)
class PromptRow:
    seq: Sequence
    embeds: np.ndarray  # (L,D) the whole prompt

    @property
    def remaining(self) -> int:
        """Positions still to prefill before the last one (which the decode step takes)."""
        return self.embeds.shape[0] - 1 - self.seq.length


class Prefiller:
    def __init__(self, runner: StepRunner, embeddings: np.ndarray, scheduler: Scheduler):
        self.runner = runner
        self.embeddings = embeddings  # (V,D)
        self.scheduler = scheduler
        self.rows: list[PromptRow] = []  # staged, oldest first: rows[j] owns cache row slots - j

    @property
    def staged(self) -> list[Sequence]:
        return [r.seq for r in self.rows]

    def _slot(self, j: int) -> int:
        return self.runner.slots - j

    def prompt_embeds(self, seq: Sequence) -> np.ndarray:
        """The prompt's segments in order, each token embedded, each image block as is -> (S,D)."""
        parts = [self.embeddings[np.asarray(s.ids, dtype=np.int64)] if isinstance(s, TokenSegment)
                 else np.asarray(s.features, np.float32) for s in seq.request.segments]
        return np.concatenate(parts)

    def prepare(self, seq: Sequence, report) -> PromptRow | None:
        """A popped sequence's prompt row, or None when its embeddings cannot be built: then that sequence alone
        fails and gives its slot back, and the step goes on with the others (it is neither active nor staged yet,
        so nothing else would ever fail it and its stream would wait forever)."""
        report.queue_waits_s.append(time.perf_counter() - seq.submitted_at)
        try:
            return PromptRow(seq, self.prompt_embeds(seq))
        except Exception as e:  # noqa: BLE001 -- handed to the stream, which raises it to its caller
            self.scheduler.abandon(seq)
            fail(seq, PromptError(f"request {seq.request.request_id}: its prompt could not be prepared for "
                                  f"prefill: {type(e).__name__}: {e}"), report)
            return None

    def step(self, budget: int, report) -> None:
        """Spend up to `budget` prompt positions (see the module doc for who gets them); prompts whose positions
        before the last are cached end the step active, their last position pending (seq.next_embed)."""
        self._drop_cancelled()
        left, plan = budget, {}
        if self.rows:  # the oldest staged prompt always progresses
            oldest = self.rows[0]
            plan[oldest] = min(oldest.remaining, max(1, budget // 2))
            left -= plan[oldest]
        whole: list[PromptRow] = []
        while left > 0:
            seq = self.scheduler.pop_waiting()
            if seq is None:
                break
            row = self.prepare(seq, report)
            if row is None:
                continue
            if row.remaining <= left:
                whole.append(row)
                left -= row.remaining
            else:
                self.rows.append(row)  # the next row down; it gets what is left below
        for row in self.rows:  # what is left, oldest first
            extra = min(row.remaining - plan.get(row, 0), left)
            if extra > 0:
                plan[row] = plan.get(row, 0) + extra
                left -= extra
        self._chunks(plan, report)
        self.admit(whole, report)

    def admit(self, rows: list[PromptRow], report) -> None:
        """Prompts prefilled whole now: each activated into the next free slot (first: a failed prefill is retired
        like any other sequence), then prefilled together in as few ragged calls as padding allows."""
        rows = sorted(rows, key=lambda r: -r.remaining)  # slot order = length order: similar rows neighbour
        slots = [self.scheduler.activate(r.seq) for r in rows]
        if len(rows) == 1 and len(self.scheduler.active) == 1 and self.scheduler.config.lone_prompt_logits:
            self._alone(rows[0], slots[0], report)
            return
        for r in rows:
            r.seq.next_embed = r.embeds[-1]
        i = 0
        while i < len(rows) and rows[i].remaining > 0:
            j, s, real = i + 1, rows[i].remaining, rows[i].remaining
            while j < len(rows) and rows[j].remaining > 0:
                if (j - i + 1) * s > max(PAD_FREE, (1 + PAD_WASTE) * (real + rows[j].remaining)):
                    break
                real += rows[j].remaining
                j += 1
            self._ragged(rows[i:j], slots[i], report)
            i = j

    def _alone(self, row: PromptRow, slot: int, report) -> None:
        """A prompt that would be the step's only decode row: prefilled with its last position, in one call whose
        logits give its first token (seq.first_logits), so an idle engine answers a lone request without the decode
        call a shared step needs (about one decode step less to the first token)."""
        try:
            logits = self.runner.prefill_rows(slot, [row.embeds], [0])
        except Exception as e:  # noqa: BLE001 -- handed to the stream
            fail(row.seq, e, report)
            return
        row.seq.length, row.seq.first_logits = row.embeds.shape[0], logits[0]

    def _ragged(self, rows: list[PromptRow], lo: int, report) -> None:
        """One call for fresh rows in slots lo..; when it fails, each row alone, so one bad prompt fails alone."""
        try:
            self.runner.prefill_rows(lo, [r.embeds[:-1] for r in rows], [0] * len(rows))
        except Exception as e:  # noqa: BLE001 -- handed to the stream(s)
            if len(rows) == 1:
                fail(rows[0].seq, e, report)
                return
            for k, r in enumerate(rows):
                self._ragged([r], lo + k, report)
            return
        for r in rows:
            r.seq.length = r.embeds.shape[0] - 1

    def _chunks(self, plan: dict[PromptRow, int], report) -> None:
        """Each staged prompt's planned chunk, one call each (a chunk after a cached prefix is a batch of one);
        prompts left with only their last position move into the next free slot."""
        for row in list(self.rows):
            n = plan.get(row, 0)
            if n > 0:
                start, slot = row.seq.length, self._slot(self.rows.index(row))
                try:
                    self.runner.prefill_rows(slot, [row.embeds[start:start + n]], [start])
                except Exception as e:  # noqa: BLE001 -- handed to the stream
                    self._unstage(row)
                    self.scheduler.abandon(row.seq)
                    fail(row.seq, e, report)
                    continue
                row.seq.length = start + n
            if row.remaining == 0:
                dst = len(self.scheduler.active)  # free: the sequence has held a slot since pop_waiting
                self.runner.move(self._slot(self.rows.index(row)), dst, row.seq.length)
                self._unstage(row)
                self.scheduler.activate(row.seq)
                row.seq.next_embed = row.embeds[-1]

    def _drop_cancelled(self) -> None:
        for row in [r for r in self.rows if r.seq.done]:
            self._unstage(row)
            self.scheduler.abandon(row.seq)

    def _unstage(self, row: PromptRow) -> None:
        """Take a row out of the staging rows, shifting the younger ones up a row each so they stay in order."""
        j = self.rows.index(row)
        for k in range(j + 1, len(self.rows)):
            younger = self.rows[k]
            if younger.seq.length:
                self.runner.move(self._slot(k), self._slot(k - 1), younger.seq.length)
        del self.rows[j]


class PromptError(RuntimeError):
    """A sequence's prompt could not be turned into the embeddings its prefill needs."""


def fail(seq: Sequence, error: BaseException, report) -> None:
    seq.finished = "error"
    report.failed.append((seq, error))
