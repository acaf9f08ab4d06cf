"""A daemon thread that does one thing every `period_s` until stopped: the ingress's stage watch and heap trimmer."""

from __future__ import annotations

import threading


class PeriodicThread:
    """Lifecycle: start() -> tick() every period_s on a daemon thread -> stop() (or process exit). stop() waits for a
    tick in flight (a controller call, a heap walk) to end, so nothing runs on after the replica let go of it."""

    def __init__(self, name: str, period_s: float):
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.tick()
