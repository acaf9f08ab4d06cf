"""The step loop: a dedicated thread that admits, prefills, decodes and retires, step after step.

Why a thread of its own rather than an asyncio task handing each ORT call to an executor: a step then costs no
thread round trip and never waits for the event loop. The loop thread meanwhile turns the previous step's tokens
into text and chunks (ORT releases the GIL while the graph runs, so the two overlap).

Ownership: this thread alone touches the runner, the active list and each sequence's engine-side fields (length,
generated, last_token, finished). Streams talk to it only through the scheduler's locked waiting queue, the
`cancelled` flag and `wake()`; it talks back by publishing one StepReport per phase of a step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from serve_app.engine.prefill import Prefiller
from serve_app.engine.runner import StepRunner
from serve_app.engine.penalties import TokenLogprobs
from serve_app.engine.sampling import next_tokens
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import Sequence


@dataclass
class StepReport:
    # (seq, token, finish reason, its logprobs when asked for)
    tokens: list[tuple[Sequence, int, str | None, TokenLogprobs | None]] = field(default_factory=list)
    failed: list[tuple[Sequence, BaseException]] = field(default_factory=list)
    step_s: float | None = None  # set for a decode step
    batch: int = 0
    active: int = 0
    queued: int = 0
    queue_waits_s: list[float] = field(default_factory=list)  # per admitted sequence: submitted -> prefill start


class StepLoop:
    def __init__(self, runner: StepRunner, embeddings: np.ndarray, eos_ids: frozenset[int], scheduler: Scheduler,
                 publish: Callable[[StepReport], None]):
        self.runner = runner
        self.embeddings = embeddings  # (V,D)
        self.eos_ids = eos_ids
        self.scheduler = scheduler
        self.prefiller = Prefiller(runner, embeddings, scheduler)
        self.publish = publish
        self.steps = 0  # decode steps so far
        self._wake = threading.Event()
        self._stop = False
        self._recheck_s: float | None = None  # run_to_completion: when a partial batch may start
        self._thread = threading.Thread(target=self._run, name="decoder-steps", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop:
            self._wake.clear()  # before looking for work: a wake() after this point is not lost
            try:
                busy = self._step()
            except Exception as e:  # noqa: BLE001 -- a bug outside a guarded graph call must not hang every stream
                self._fail_everything(e)
                continue
            if not busy:
                self._wake.wait(self._recheck_s)

    def _fail_everything(self, error: BaseException, unpublished: StepReport | None = None) -> None:
        """Fail every sequence in flight and start over with empty slots: the cache bookkeeping cannot be trusted.
        In flight: the active ones, and every one taken from the queue and not yet active (being prepared or
        prefilled, or staged), wherever the step died; `unpublished` holds failures the dying step had already
        recorded (a staged prompt whose chunk failed is in neither list) and must still deliver."""
        sched, report = self.scheduler, StepReport()
        failed = dict(unpublished.failed) if unpublished is not None else {}  # seq -> its own error, kept
        for seq in list(sched.active) + sched.take_in_transit():
            seq.finished = "error"
            failed.setdefault(seq, error)
        report.failed = list(failed.items())
        sched.active.clear()
        self.prefiller.rows.clear()
        self.publish(report)

    def _step(self) -> bool:
        """One round: retire, prefill arrivals (within the budget), decode. False when there was nothing to do."""
        sched = self.scheduler
        retired = sched.retire_done()
        prefilled = StepReport()
        try:
            busy = self._prefill_phase(prefilled)
        except Exception as e:  # noqa: BLE001 -- as in _run, plus the failures this phase recorded before it died
            self._fail_everything(e, prefilled)
            return True
        if not busy:
            if retired:  # the last sequences left: report the empty batch, or the gauges keep the busy counts
                self.publish(StepReport(queued=len(sched.waiting)))
            return False
        carried = []  # queue waits of this step's admissions ride on the decode report (the first tokens' report)
        if prefilled.failed:
            self.publish(prefilled)
            sched.retire_done()
        else:
            carried = prefilled.queue_waits_s
        if sched.active:
            report = self._guarded(self._decode, list(sched.active))
            report.queue_waits_s.extend(carried)
            self.publish(report)
        elif carried:
            self.publish(prefilled)
        return True

    def _prefill_phase(self, report: StepReport) -> bool:
        """Prefill what may start now, within the step's budget: prompts whose positions before the last are cached
        end this phase active, and the decode call that follows gives their first token. False when nothing is
        running or may start."""
        sched = self.scheduler
        if sched.config.scheduling == "run_to_completion":
            batch, self._recheck_s = sched.take_full_batch()
            rows = [row for row in (self.prefiller.prepare(seq, report) for seq in batch) if row is not None]
            self.prefiller.admit(rows, report)
        else:
            self._recheck_s = None
            self.prefiller.step(self.prefill_budget(), report)
        if not sched.active and not report.failed and not self.prefiller.rows:
            return False
        report.active, report.queued = len(sched.active), len(sched.waiting)
        return True

    def prefill_budget(self) -> int:
        """Prompt positions this step: one budget shared with the decode rows, never under a quarter of it (so
        prompts keep moving while decode rows alone would fill it)."""
        budget = self.scheduler.config.prefill_token_budget
        return max(budget - len(self.scheduler.active), budget // 4, 1)

    def _guarded(self, phase, seqs: list[Sequence]) -> StepReport:
        """A failing graph call fails the sequences it served, not the loop: the others keep running."""
        report = StepReport()
        try:
            phase(seqs, report)
        except Exception as e:  # noqa: BLE001 -- handed to the streams, which raise it to their callers
            report.failed = [(s, e) for s in seqs]
            for s in seqs:
                s.finished = "error"
        report.active, report.queued = len(self.scheduler.active), len(self.scheduler.waiting)
        return report

    def _decode(self, seqs: list[Sequence], report: StepReport) -> None:
        if len(seqs) == 1 and seqs[0].first_logits is not None:  # a lone prompt prefilled whole: no decode call
            seq = seqs[0]
            logits, seq.first_logits = seq.first_logits[None], None
            tokens, logprobs = self._choose(logits, seqs)
            self._record(seq, int(tokens[0]), logprobs[0], report)
            return
        t0 = time.perf_counter()
        n = len(seqs)
        last = np.fromiter((max(s.last_token, 0) for s in seqs), np.int64, n)
        embeds = self.embeddings[last]  # (n,D)
        for i, s in enumerate(seqs):
            if s.next_embed is not None:  # a prompt's last position: this step samples its first token
                embeds[i], s.next_embed = s.next_embed, None
        lengths = np.fromiter((s.length for s in seqs), np.int32, n)
        logits = self.runner.decode(n, embeds, lengths)  # (n,V)
        tokens, logprobs = self._choose(logits, seqs)
        self.steps += 1
        for seq, tok, lp in zip(seqs, tokens.tolist(), logprobs):
            seq.length += 1
            self._record(seq, tok, lp, report)
        report.step_s, report.batch = time.perf_counter() - t0, n

    def _choose(self, logits: np.ndarray, seqs: list[Sequence]):
        """-> the next token of each sequence (n,) and its logprobs entry (or None)."""
        end_ids = [frozenset() if s.request.ignore_eos else self.eos_ids for s in seqs]
        return next_tokens(logits, [s.params for s in seqs], [s.rng for s in seqs], [s.history for s in seqs],
                           end_ids)

    def _record(self, seq: Sequence, token: int, logprobs: TokenLogprobs | None, report: StepReport) -> None:
        seq.generated += 1
        seq.last_token = token
        seq.history.add(token)
        req = seq.request
        if (token in self.eos_ids and not req.ignore_eos) or token in seq.params.stop_token_ids:
            seq.finished = "stop"
        elif seq.generated >= req.max_tokens or seq.length >= self.runner.max_context:
            seq.finished = "length"
        report.tokens.append((seq, token, seq.finished, logprobs))
