"""Slot bookkeeping: which sequences hold cache rows, which wait, who is admitted next.

The waiting queue is shared with the streams' event loop (enqueue, drop) and guarded by a lock; the active list
belongs to the step thread alone. Active sequences stay compacted in slots 0..n-1 (`active[i]` owns slot i), so a
decode step binds cache[0:n]. When a sequence retires, the last active one moves into its slot: one copy of that row's cached prefix, once per
retirement, instead of binding a sparse set of rows at every step.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from serve_app.engine.config import EngineConfig
from serve_app.engine.runner import StepRunner
from serve_app.engine.sequence import Sequence
from serve_app.contract import Overloaded


class Scheduler:
    def __init__(self, runner: StepRunner, config: EngineConfig):
        self.runner = runner
        self.config = config
        self.active: list[Sequence] = []  # active[i] owns cache slot i
        self.waiting: deque[Sequence] = deque()
        # Taken from `waiting`, not yet active (being prepared, prefilled or staged): each holds a slot. Kept as the
        # sequences themselves, not a count, so a failure anywhere between pop and activate can still fail them.
        self._in_transit: list[Sequence] = []
        self._lock = threading.Lock()  # guards `waiting` and `_in_transit`

    @property
    def in_transit(self) -> int:
        return len(self._in_transit)

    @property
    def free_slots(self) -> int:
        return self.runner.slots - len(self.active) - self.in_transit

    def enqueue(self, seq: Sequence) -> None:
        with self._lock:
            if len(self.waiting) >= self.free_slots + self.config.max_queue:
                raise Overloaded(f"decoder queue full ({len(self.active)} running, {len(self.waiting)} waiting)",
                                 retry_after_s=self.config.retry_after_s)
            self.waiting.append(seq)

    def drop_waiting(self, seq: Sequence) -> None:
        with self._lock:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass  # already taken for admission: the step thread skips or retires it

    def pop_waiting(self) -> Sequence | None:
        """The next live waiting sequence, if a slot is free for it; it holds the slot until activate/abandon."""
        with self._lock:
            while self.waiting and self.waiting[0].done:
                self.waiting.popleft()
            if not self.waiting or self.free_slots <= 0:
                return None
            seq = self.waiting.popleft()
            self._in_transit.append(seq)
            return seq

    def activate(self, seq: Sequence) -> int:
        """A popped sequence takes the next slot (its prompt is being or has been cached there); -> the slot."""
        with self._lock:
            self._in_transit.remove(seq)
            self.active.append(seq)
            return len(self.active) - 1

    def abandon(self, seq: Sequence) -> None:
        """A popped sequence that will never be active (cancelled or failed before activation) gives its slot back."""
        with self._lock:
            self._in_transit.remove(seq)

    def take_in_transit(self) -> list[Sequence]:
        """Every popped sequence not yet active, giving their slots back: the step loop fails them when a step dies."""
        with self._lock:
            taken, self._in_transit = self._in_transit, []
            return taken

    def retire_done(self) -> list[Sequence]:
        """Free the slots of finished and cancelled sequences, keeping the active ones compacted."""
        retired = []
        for i in range(len(self.active) - 1, -1, -1):  # from the end: every row after i is live already
            if self.active[i].done:
                retired.append(self.active[i])
                last = len(self.active) - 1
                if i != last:
                    moved = self.active[last]
                    self.runner.move(last, i, moved.length)
                    self.active[i] = moved
                self.active.pop()
        return retired

    def take_full_batch(self) -> tuple[list[Sequence], float | None]:
        """run_to_completion: a whole batch once the previous one has finished, and when to look again if some
        wait but the batch may not start yet."""
        with self._lock:
            while self.waiting and self.waiting[0].done:
                self.waiting.popleft()
            return self._take_full_batch()

    def _take_full_batch(self) -> tuple[list[Sequence], float | None]:
        if self.active or not self.waiting:
            return [], None
        waited = time.perf_counter() - self.waiting[0].submitted_at
        if len(self.waiting) < self.runner.slots and waited < self.config.batch_wait_s:
            return [], self.config.batch_wait_s - waited
        batch = [self.waiting.popleft() for _ in range(min(len(self.waiting), self.runner.slots))]
        self._in_transit.extend(batch)
        return batch, None
