"""Which stage deployments have no running replica, known without a call to them.

When a node is lost, calls routed to its stage wait in Serve's router for a replica that cannot be placed until
the node returns: an image request would hang until stage_timeout_s. The ingress instead reads this watch before
calling a stage and fails fast with 503 (`vision_unavailable`). A background thread asks the controller
(serve.status) every `period_s`; the answer is at most that old.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("ray.serve")


class StageWatch:
    """Lifecycle: start() -> a daemon thread refreshes `missing()` every period_s -> stop() (or process exit)."""

    def __init__(self, probe: Callable[[], list[str]], period_s: float = 1.0):
        self._probe, self._period_s = probe, period_s
        self._missing: frozenset[str] = frozenset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmserve-stage-watch", daemon=True)

    def start(self) -> StageWatch:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop and wait for the thread: a probe in flight (a controller call) ends first."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def running(self) -> bool:
        return self._thread.is_alive()

    def missing(self) -> frozenset[str]:
        return self._missing

    def refresh(self) -> frozenset[str]:
        try:
            missing = frozenset(self._probe())
        except Exception as e:  # noqa: BLE001 -- the controller restarting: keep the last answer
            log.warning("mmserve: stage status unknown (%s: %s)", type(e).__name__, e)
            return self._missing
        if missing != self._missing:
            log.warning("mmserve: stages without a running replica: %s", ", ".join(sorted(missing)) or "none")
        self._missing = missing
        return missing

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.refresh()
