"""Watching where and when ONNX Runtime sessions are built, and calling a stage's reconfigure the way a replica does
without its thread pool: for the tests that a live profiling switch never builds a session on the event loop."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import onnxruntime as ort


class Build:
    """Where and when one session was built."""

    def __init__(self):
        try:
            asyncio.get_running_loop()
            self.on_event_loop = True
        except RuntimeError:
            self.on_event_loop = False
        self.thread = threading.current_thread().name
        self.started = time.perf_counter()
        self.ended: float | None = None


def watch_session_builds(monkeypatch) -> list[Build]:
    """Every InferenceSession built from now on (a real one), with where and when."""
    seen, real_class = [], ort.InferenceSession

    def watched(*args, **kwargs):
        seen.append(Build())
        session = real_class(*args, **kwargs)
        seen[-1].ended = time.perf_counter()
        return session

    monkeypatch.setattr(ort, "InferenceSession", watched)
    return seen


async def reconfigure_as_serve(stage, user_config: dict) -> None:
    """How a replica calls reconfigure when it does not hand sync methods to a thread pool
    (RAY_SERVE_RUN_SYNC_IN_THREADPOOL=0): straight on its event loop, awaiting the result if it is awaitable."""
    result = stage.reconfigure(user_config)
    if inspect.isawaitable(result):
        await result


def ticks_during(ticks: list[float], build: Build) -> list[float]:
    """The heartbeat ticks the event loop ran while `build` was under way."""
    return [t for t in ticks if build.started < t < build.ended]


class Heartbeat:
    """`async with Heartbeat() as beat`: a task ticking on the event loop every millisecond meanwhile, standing in
    for everything else a replica's loop serves; `beat.ticks` are the times it ran."""

    def __init__(self):
        self.ticks: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def _beat(self) -> None:
        while not self._stop.is_set():
            self.ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    async def __aenter__(self) -> "Heartbeat":
        self._task = asyncio.create_task(self._beat())
        await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await self._task
