"""ONNX Runtime profiling, switched on per stage through `user_config` for the next N session calls.

ORT decides at session creation whether a session profiles (`SessionOptions.enable_profiling`), and
`end_profiling()` writes the Chrome-trace JSON and stops for good. So switching on for N calls means: open a twin
of the stage's session with profiling on, run the next N calls on it, end its profiling (the trace file lands in
`dir`) and drop it; calls go back to the normal session. The stage keeps serving throughout.

    reconfigure(profile={calls: N, dir, label}) -> ProfilableSession.arm, in a worker thread -> twin session (profiling)
    next N run()/run_with_iobinding() calls -> twin;  call N ends -> twin.end_profiling() -> <dir>/<prefix>_<time>.json

A twin is ended only when no call runs on it: one switched off or replaced while a call is in flight on it (the
decoder's step thread, the vision stage's worker) is ended by that call as it returns, never under it.

IO bindings belong to the session that created them (ORT refuses to run another session's), so `io_binding()`
hands out a binding that records its bind calls and replays them onto the twin's own binding when the twin runs.
Buffers bound by pointer (the decoder's KV cache) are shared, so a profiled step updates the same cache.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnxruntime as ort

from mmcore.runtime.ort_session import session_options
from mmcore.runtime.profile_settings import ProfileSettings

log = logging.getLogger("ray.serve")


def replica_name() -> str:
    """The Serve replica id inside a replica (trace files from several replicas do not collide), else the pid."""
    serve = sys.modules.get("ray.serve")  # loaded in a replica; this Ray-free module never imports Ray itself
    if serve is not None:
        try:
            return serve.get_replica_context().replica_tag
        except Exception:  # noqa: BLE001 -- Ray loaded, but not inside a replica: tests, benchmarks
            pass
    return f"pid{os.getpid()}"


class _RecordedBinding:
    """An IOBinding for the normal session that can replay its bind calls onto a twin session's binding."""

    _REPLAYED = ("bind_input", "bind_output", "bind_cpu_input", "bind_ortvalue_input", "bind_ortvalue_output",
                 "clear_binding_inputs", "clear_binding_outputs")

    def __init__(self, base: ort.InferenceSession):
        self._calls: list[tuple[str, tuple, dict]] = []
        self._bindings: dict[int, ort.IOBinding] = {0: base.io_binding()}  # twin generation -> binding
        self.last: ort.IOBinding = self._bindings[0]

    def __getattr__(self, name: str):
        if name in self._REPLAYED:
            def call(*args, **kwargs):
                self._calls.append((name, args, kwargs))
                for binding in self._bindings.values():
                    getattr(binding, name)(*args, **kwargs)
            return call
        return getattr(self.last, name)  # get_outputs, copy_outputs_to_cpu, synchronize_*: the binding that ran

    def for_session(self, generation: int, session: ort.InferenceSession) -> ort.IOBinding:
        binding = self._bindings.get(generation)
        if binding is None:
            for old in [g for g in self._bindings if g not in (0, generation)]:
                del self._bindings[old]  # an ended twin's binding: its session is gone
            binding = session.io_binding()
            for name, args, kwargs in self._calls:
                getattr(binding, name)(*args, **kwargs)
            self._bindings[generation] = binding
        self.last = binding
        return binding


@dataclass(eq=False)
class _Twin:
    """A profiling twin and the calls it still takes; it is ended only once retired and no call runs on it."""

    session: ort.InferenceSession
    generation: int  # recorded bindings key their replays by it
    remaining: int  # calls it may still take
    running: int = 0  # calls in flight on it
    retired: bool = False  # takes no new call (its calls ran out, or arm replaced it)


class ProfilableSession:
    """Stands in for an InferenceSession; `arm(settings)` routes the next `settings.calls` calls to a profiling
    twin. Thread-safe: `arm` runs in reconfigure (a worker thread: it builds a session, seconds on a large graph, so
    never on a replica's event loop), calls run in the stage's worker or step thread. A twin's `end_profiling()`
    runs only once no call is in flight on it: ending a session while another thread runs it races ORT's profiler,
    so a twin retired mid-call is ended by that call when it returns."""

    def __init__(self, session: ort.InferenceSession, model_path: str | Path, threads: int, stage: str,
                 source: Callable[[], str | bytes] | None = None):
        self.base = session
        self.model_path = str(model_path)
        # what the twin opens: the file, unless the base session runs it re-encoded (int8_kernels)
        self._source = source or (lambda: self.model_path)
        self.threads = threads
        self.stage = stage
        self.traces: list[str] = []  # trace files written by this replica, oldest first
        self._lock = threading.Lock()  # guards _twin and every twin's counts
        self._arming = threading.Lock()  # one arm at a time: reconfigures may overlap
        self._twin: _Twin | None = None
        self._generation = 0  # bumps with every twin, so recorded bindings know which twin they were made for
        self._armed_with: ProfileSettings | None = None

    def __getattr__(self, name: str):  # get_inputs, get_providers, ...: the normal session's
        return getattr(self.base, name)

    @property
    def profiling(self) -> bool:
        return self._twin is not None

    def arm(self, settings: ProfileSettings) -> None:
        """Profile the next `settings.calls` calls. The same settings again do nothing: reconfigure passes the whole
        user_config on every change, and only a changed `profile` block means "profile again". Blocks while the
        twin is built: call it off the event loop."""
        with self._arming:
            if settings == self._armed_with:
                return
            self._armed_with = settings
            session = self._open_twin(settings) if settings.calls > 0 else None
            with self._lock:
                previous = self._twin
                if session is not None:
                    self._generation += 1
                    self._twin = _Twin(session, self._generation, settings.calls)
                else:
                    self._twin = None
                end_previous = previous is not None and self._retire(previous)
            if end_previous:
                self._finish(previous.session)  # switched off or re-armed early: keep what it recorded

    @staticmethod
    def _retire(twin: _Twin) -> bool:
        """Under the lock: the twin takes no more calls; -> whether it may be ended now (nothing runs on it)."""
        twin.retired = True
        return twin.running == 0

    def _open_twin(self, settings: ProfileSettings) -> ort.InferenceSession:
        Path(settings.dir).mkdir(parents=True, exist_ok=True)
        options = session_options(self.threads)
        options.enable_profiling = True
        label = f"-{settings.label}" if settings.label else ""
        options.profile_file_prefix = str(Path(settings.dir) / f"{self.stage}-{replica_name()}{label}")
        providers = list(zip(self.base.get_providers(), [self.base.get_provider_options()[p]
                                                         for p in self.base.get_providers()]))
        log.info("%s: ORT profiling on for the next %d calls -> %s", self.stage, settings.calls, settings.dir)
        return ort.InferenceSession(self._source(), options, providers=providers)

    def _take(self) -> _Twin | None:
        """The twin this call runs on (None: the normal session), counted as running on it until _release."""
        with self._lock:
            twin = self._twin
            if twin is None:
                return None
            twin.remaining -= 1
            twin.running += 1
            if twin.remaining == 0:  # this call is its last: the next ones go back to the normal session
                self._twin = None
                twin.retired = True
            return twin

    def _release(self, twin: _Twin | None) -> None:
        if twin is None:
            return
        with self._lock:
            twin.running -= 1
            end = twin.retired and twin.running == 0
        if end:  # exactly one thread sees this: running reaches 0 once, after retirement
            self._finish(twin.session)

    def _finish(self, twin: ort.InferenceSession) -> None:
        path = twin.end_profiling()
        if path:
            self.traces.append(path)
            log.info("%s: ORT profile written to %s", self.stage, path)

    def run(self, output_names, input_feed, run_options=None):
        twin = self._take()
        try:
            return (self.base if twin is None else twin.session).run(output_names, input_feed, run_options)
        finally:
            self._release(twin)

    def io_binding(self) -> _RecordedBinding:
        return _RecordedBinding(self.base)

    def run_with_iobinding(self, binding: _RecordedBinding, run_options=None) -> None:
        twin = self._take()
        try:
            if twin is None:
                self.base.run_with_iobinding(binding.for_session(0, self.base), run_options)
            else:
                twin.session.run_with_iobinding(binding.for_session(twin.generation, twin.session), run_options)
        finally:
            self._release(twin)
