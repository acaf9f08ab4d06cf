"""Which stage deployments have no running replica, known without a call to them.

When a node is lost, calls routed to its stage wait in Serve's router for a replica that cannot be placed until
the node returns: an image request would hang until stage_timeout_s. The ingress instead reads this watch before
calling a stage and fails fast with 503 (`vision_unavailable`). A background thread asks the controller
(serve.status) every `period_s`; the answer is at most that old. `/ready` refreshes it too, so once the ingress has
said ready, an image request right after is not refused on the answer of a probe that ran before the vision
replicas were up. And an answer naming a stage is looked at again before a request is refused on it (`recheck`): a
client that sends its first image the moment `serve run` / `serve deploy` returns (the replicas up a moment before)
is served, not refused on the last tick's probe. A stage really lost costs one probe per `RECHECK_AGE_S` at most.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

from serve_app.api.periodic import PeriodicThread

log = logging.getLogger("ray.serve")

RECHECK_AGE_S = 0.25  # an answer naming a lost stage is trusted without a new probe for this long


class StageWatch(PeriodicThread):
    """Lifecycle: start() -> a daemon thread refreshes `missing()` every period_s -> stop() (or process exit)."""

    def __init__(self, probe: Callable[[], list[str]], period_s: float = 1.0):
        super().__init__("mmserve-stage-watch", period_s)
        self._probe = probe
        self._missing: frozenset[str] = frozenset()
        self._started = itertools.count(1)  # each probe's start order: a later start saw a later controller state
        self._answer_of = 0  # start order of the probe whose answer `_missing` holds
        self._answered_from = 0.0  # when (time.monotonic) that probe started
        self._lock = threading.Lock()

    def missing(self) -> frozenset[str]:
        return self._missing

    def refresh(self) -> frozenset[str]:
        """Probe now (the thread's tick, or /ready from another thread) and keep the answer unless a probe that
        started later has answered already: a slow probe from before a replica came up must not undo a newer one."""
        with self._lock:
            order, began = next(self._started), time.monotonic()
        try:
            missing = frozenset(self._probe())
        except Exception as e:  # noqa: BLE001 -- the controller restarting: keep the last answer
            log.warning("mmserve: stage status unknown (%s: %s)", type(e).__name__, e)
            return self._missing
        with self._lock:
            if order < self._answer_of:
                return missing
            if missing != self._missing:
                log.warning("mmserve: stages without a running replica: %s", ", ".join(sorted(missing)) or "none")
            self._missing, self._answer_of, self._answered_from = missing, order, began
        return missing

    def recheck(self, max_age_s: float = RECHECK_AGE_S) -> frozenset[str]:
        """`missing()`, probed again first when it names a stage and its probe started over max_age_s ago: the
        second look a refusal takes (blocking: run it off the event loop)."""
        if self._missing and time.monotonic() - self._answered_from > max_age_s:
            return self.refresh()
        return self._missing

    def tick(self) -> None:
        self.refresh()
