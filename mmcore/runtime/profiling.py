"""ONNX Runtime profiling, switched on per stage through `user_config` for the next N session calls.

ORT decides at session creation whether a session profiles (`SessionOptions.enable_profiling`), and
`end_profiling()` writes the Chrome-trace JSON and stops for good. So switching on for N calls means: open a twin
of the stage's session with profiling on, run the next N calls on it, end its profiling (the trace file lands in
`dir`) and drop it; calls go back to the normal session. The stage keeps serving throughout.

    reconfigure(profile={calls: N, dir, label}) -> ProfilableSession.arm -> twin session (profiling)
    next N run()/run_with_iobinding() calls -> twin;  call N ends -> twin.end_profiling() -> <dir>/<prefix>_<time>.json

IO bindings belong to the session that created them (ORT refuses to run another session's), so `io_binding()`
hands out a binding that records its bind calls and replays them onto the twin's own binding when the twin runs.
Buffers bound by pointer (the decoder's KV cache) are shared, so a profiled step updates the same cache.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

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


class ProfilableSession:
    """Stands in for an InferenceSession; `arm(settings)` routes the next `settings.calls` calls to a profiling
    twin. Thread-safe: `arm` runs in reconfigure, calls run in the stage's worker thread."""

    def __init__(self, session: ort.InferenceSession, model_path: str | Path, threads: int, stage: str):
        self.base = session
        self.model_path = str(model_path)
        self.threads = threads
        self.stage = stage
        self.traces: list[str] = []  # trace files written by this replica, oldest first
        self._lock = threading.Lock()
        self._twin: ort.InferenceSession | None = None
        self._generation = 0  # bumps with every twin, so recorded bindings know which twin they were made for
        self._remaining = 0
        self._armed_with: ProfileSettings | None = None

    def __getattr__(self, name: str):  # get_inputs, get_providers, ...: the normal session's
        return getattr(self.base, name)

    @property
    def profiling(self) -> bool:
        return self._twin is not None

    def arm(self, settings: ProfileSettings) -> None:
        """Profile the next `settings.calls` calls. The same settings again do nothing: reconfigure passes the whole
        user_config on every change, and only a changed `profile` block means "profile again"."""
        if settings == self._armed_with:
            return
        self._armed_with = settings
        twin = self._open_twin(settings) if settings.calls > 0 else None
        with self._lock:
            previous, self._twin, self._remaining = self._twin, twin, settings.calls
            self._generation += 1
        if previous is not None:
            self._finish(previous)  # switched off or re-armed before its calls ran out: keep what it recorded

    def _open_twin(self, settings: ProfileSettings) -> ort.InferenceSession:
        Path(settings.dir).mkdir(parents=True, exist_ok=True)
        options = session_options(self.threads)
        options.enable_profiling = True
        label = f"-{settings.label}" if settings.label else ""
        options.profile_file_prefix = str(Path(settings.dir) / f"{self.stage}-{replica_name()}{label}")
        providers = list(zip(self.base.get_providers(), [self.base.get_provider_options()[p]
                                                         for p in self.base.get_providers()]))
        log.info("%s: ORT profiling on for the next %d calls -> %s", self.stage, settings.calls, settings.dir)
        return ort.InferenceSession(self.model_path, options, providers=providers)

    def _take(self) -> tuple[ort.InferenceSession, int, bool]:
        """-> (session for this call, its generation, whether this call is the twin's last)."""
        with self._lock:
            if self._twin is None:
                return self.base, 0, False
            self._remaining -= 1
            return self._twin, self._generation, self._remaining == 0

    def _release(self, session: ort.InferenceSession, last: bool) -> None:
        if not last:
            return
        with self._lock:
            if self._twin is session:
                self._twin = None
        self._finish(session)

    def _finish(self, twin: ort.InferenceSession) -> None:
        path = twin.end_profiling()
        if path:
            self.traces.append(path)
            log.info("%s: ORT profile written to %s", self.stage, path)

    def run(self, output_names, input_feed, run_options=None):
        session, _, last = self._take()
        try:
            return session.run(output_names, input_feed, run_options)
        finally:
            self._release(session, last)

    def io_binding(self) -> _RecordedBinding:
        return _RecordedBinding(self.base)

    def run_with_iobinding(self, binding: _RecordedBinding, run_options=None) -> None:
        session, generation, last = self._take()
        try:
            session.run_with_iobinding(binding.for_session(generation, session), run_options)
        finally:
            self._release(session, last)
