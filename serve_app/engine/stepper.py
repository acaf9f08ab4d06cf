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

from serve_app.engine.runner import StepRunner
from serve_app.engine.sampling import sample_batch
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import Sequence


@dataclass
class StepReport:
    tokens: list[tuple[Sequence, int, str | None]] = field(default_factory=list)  # (seq, token, finish reason)
    failed: list[tuple[Sequence, BaseException]] = field(default_factory=list)
    step_s: float | None = None  # set for a decode step
    batch: int = 0
    active: int = 0
    queued: int = 0


class StepLoop:
    def __init__(self, runner: StepRunner, embeddings: np.ndarray, eos_id: int, scheduler: Scheduler,
                 publish: Callable[[StepReport], None]):
        self.runner = runner
        self.embeddings = embeddings  # (V,D)
        self.eos_id = eos_id
        self.scheduler = scheduler
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
            if not self._step():
                self._wake.wait(self._recheck_s)

    def _step(self) -> bool:
        """One round: retire, admit, decode. False when there was nothing to do."""
        sched = self.scheduler
        sched.retire_done()
        admitted, self._recheck_s = sched.take_admissions()
        if not sched.active and not admitted:
            return False
        if admitted:
            self.publish(self._guarded(self._admit, admitted))
            sched.retire_done()
        if sched.active:
            self.publish(self._guarded(self._decode, list(sched.active)))
        return True

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

    def _admit(self, seqs: list[Sequence], report: StepReport) -> None:
        for seq in seqs:
            if seq.done:
                continue  # cancelled while it waited
            slot = len(self.scheduler.active)
            self.scheduler.active.append(seq)  # first: a failed prefill is retired like any other sequence
            req = seq.request
            embeds = self.embeddings[np.asarray(req.prompt_ids, dtype=np.int64)]  # (S_text,D)
            if req.image_features is not None:
                embeds = np.concatenate([np.asarray(req.image_features, np.float32), embeds])  # (S,D)
            logits = self.runner.prefill(slot, embeds)  # (V,)
            seq.length = embeds.shape[0]
            self._record(seq, int(sample_batch(logits[None], [seq.params], [seq.rng])[0]), report)

    def _decode(self, seqs: list[Sequence], report: StepReport) -> None:
        t0 = time.perf_counter()
        n = len(seqs)
        last = np.fromiter((s.last_token for s in seqs), np.int64, n)
        lengths = np.fromiter((s.length for s in seqs), np.int32, n)
        logits = self.runner.decode(n, self.embeddings[last], lengths)  # (n,V)
        tokens = sample_batch(logits, [s.params for s in seqs], [s.rng for s in seqs]).tolist()
        self.steps += 1
        for seq, tok in zip(seqs, tokens):
            seq.length += 1
            self._record(seq, tok, report)
        report.step_s, report.batch = time.perf_counter() - t0, n

    def _record(self, seq: Sequence, token: int, report: StepReport) -> None:
        seq.generated += 1
        seq.last_token = token
        req = seq.request
        if token == self.eos_id and not req.ignore_eos:
            seq.finished = "stop"
        elif seq.generated >= req.max_tokens or seq.length >= self.runner.max_context:
            seq.finished = "length"
        report.tokens.append((seq, token, seq.finished))
