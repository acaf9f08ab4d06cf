"""The engine reports through a sink so it stays free of Ray; the Decoder stage passes one that exports Ray Serve
metrics, tests and benchmarks pass the null sink or a recorder."""

from __future__ import annotations

from typing import Protocol


class EngineMetrics(Protocol):
    def set_active(self, n: int) -> None: ...

    def set_queued(self, n: int) -> None: ...

    def observe_step(self, seconds: float, batch: int) -> None: ...

    def add_tokens(self, n: int) -> None: ...

    def observe_ttft(self, seconds: float) -> None: ...

    def observe_itl(self, seconds: float) -> None: ...

    def observe_queue_wait(self, seconds: float) -> None: ...


class NullMetrics:
    def set_active(self, n: int) -> None:
        pass

    def set_queued(self, n: int) -> None:
        pass

    def observe_step(self, seconds: float, batch: int) -> None:
        pass

    def add_tokens(self, n: int) -> None:
        pass

    def observe_ttft(self, seconds: float) -> None:
        pass

    def observe_itl(self, seconds: float) -> None:
        pass

    def observe_queue_wait(self, seconds: float) -> None:
        pass
