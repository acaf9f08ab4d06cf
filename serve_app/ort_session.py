"""Opening ONNX Runtime sessions for a stage: which EP actually loaded decides which graph variant runs.

ORT falls back to the CPU EP silently (onnxruntime-gpu on a host without CUDA libraries logs an error and runs on
CPU), so the caller must read `session.get_providers()` rather than trust what it asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort


@dataclass(frozen=True)
class OpenedSession:
    session: ort.InferenceSession
    provider: str  # the EP that runs the graph's nodes: the first of session.get_providers()


def session_options(threads: int, profile_dir: str | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    # Replicas share cores with each other: one pool sized to the replica's num_cpus, and no spinning, which would
    # burn a core another replica needs.
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = profile_dir.rstrip("/") + "/ort"
    return so


def open_session(path: str, providers: list, threads: int = 1) -> OpenedSession:
    """`providers` is ORT's list form: names, or (name, options) tuples, best first."""
    available = set(ort.get_available_providers())
    wanted = [p for p in providers if (p[0] if isinstance(p, tuple) else p) in available] or ["CPUExecutionProvider"]
    sess = ort.InferenceSession(path, session_options(threads), providers=wanted)
    return OpenedSession(sess, sess.get_providers()[0])
