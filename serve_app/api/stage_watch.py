"""Which stage deployments have no running replica, known without a call to them.

When a node is lost, calls routed to its stage wait in Serve's router for a replica that cannot be placed until
the node returns: an image request would hang until stage_timeout_s. The ingress instead reads this watch before
calling a stage and fails fast with 503 (`vision_unavailable`). A background thread asks the controller
(serve.status) every `period_s`; the answer is at most that old.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from serve_app.api.periodic import PeriodicThread

log = logging.getLogger("ray.serve")


class StageWatch(PeriodicThread):
    """Lifecycle: start() -> a daemon thread refreshes `missing()` every period_s -> stop() (or process exit)."""

    def __init__(self, probe: Callable[[], list[str]], period_s: float = 1.0):
        super().__init__("mmserve-stage-watch", period_s)
        self._probe = probe
        self._missing: frozenset[str] = frozenset()

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

    def tick(self) -> None:
        self.refresh()
