"""Opening ONNX Runtime sessions for a stage: which EP actually loaded decides which graph variant runs.

ORT falls back to the CPU EP silently (onnxruntime-gpu on a host without CUDA libraries logs an error and runs on
CPU), so the caller must read `session.get_providers()` rather than trust what it asked for.

The variant file depends on the EP, and the EP is known only after a session exists. `open_stage_session` resolves
that by trying the stage's providers in order: for provider i it opens the variant built for provider i with
providers[i:] registered (later EPs take the nodes an earlier one cannot run), then checks which EP really came up.
A miss costs one extra session creation, and only on a misconfigured node.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import onnxruntime as ort

from mmcore.manifest import GraphEntry, Variant
from mmcore.runtime.int8_kernels import U8U8, Int8Choice, choose_encoding, graph_source, split_forced
from mmcore.runtime.providers import BatchProfile, ProviderSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedSession:
    session: ort.InferenceSession
    provider: str  # the EP that runs the graph's nodes: the first of session.get_providers()
    variant: str | None = None  # manifest variant name, when opened through open_stage_session
    fallbacks: tuple[str, ...] = field(default=())  # why each better provider was passed over, best first
    int8: Int8Choice | None = None  # an int8 variant on the CPU EP: the weight encoding it runs (int8_kernels)
    source: Callable[[], str | bytes] | None = None  # what a second session of the same graph opens (profiling)


class ProviderUnavailable(RuntimeError):
    """A strict stage's preferred EP did not load (or no listed EP loaded at all)."""


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


def cpu_session(path_or_bytes, threads: int = 1, profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU-EP session with the serving stages' options: what the parity gate, the benchmarks and tests run."""
    so = session_options(threads)
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def cpu_graph(path: str | Path, variant: Variant, forced: str | None = None,
              stage: str = "stage") -> tuple[str | bytes, Int8Choice | None, Callable[[], str | bytes]]:
    """The CPU EP's session source for `variant`: the file, or for an int8 variant on a CPU with an exact u8s8
    kernel its weights re-encoded (int8_kernels); -> (source, the encoding chosen or None, a way to make it again)."""
    if variant.precision != "int8":
        return str(path), None, lambda: str(path)
    diff = variant.parity.get("u8s8_max_abs_diff")  # graphs/signed_check.py, where the build's CPU could run it
    if forced is None and isinstance(diff, (int, float)) and diff > 0:
        choice = Int8Choice(U8U8, f"the build measured u8s8 outputs {diff:g} off the u8u8 ones")
    else:
        choice = choose_encoding(forced=forced)
    start = time.perf_counter()
    known = True if "u8s8_checked" in variant.parity else None  # the build's check ran: it has u8u8 weights
    source, has_u8u8 = graph_source(path, choice, known)
    if not has_u8u8:  # MatMulNBits variants: the CPU's u8s8/u8u8 choice does not apply
        return str(path), None, lambda: str(path)
    log.info("%s: int8 weights as %s (%.0f ms at load)", stage, choice.describe(), (time.perf_counter() - start) * 1000)
    return source, choice, lambda: graph_source(path, choice, True)[0]


def open_session(path: str, providers: list, threads: int = 1) -> OpenedSession:
    """`providers` is ORT's list form: names, or (name, options) tuples, best first."""
    available = set(ort.get_available_providers())
    wanted = [p for p in providers if (p[0] if isinstance(p, tuple) else p) in available] or ["CPUExecutionProvider"]
    sess = ort.InferenceSession(path, session_options(threads), providers=wanted)
    return OpenedSession(sess, sess.get_providers()[0])


@dataclass
class _Attempt:
    """One try: open `spec`'s variant with providers[i:]; `reason` says why it did not give `spec`."""
    spec: ProviderSpec
    opened: OpenedSession | None = None
    reason: str | None = None


def open_stage_session(artifact_dir: str | Path, graph: GraphEntry, providers: Sequence[ProviderSpec], *,
                       strict: bool = False, threads: int = 1, profile: BatchProfile | None = None,
                       prefer: list[str] | None = None, stage: str = "stage",
                       session_factory: Callable = ort.InferenceSession,
                       available: Callable[[], list[str]] = ort.get_available_providers) -> OpenedSession:
    """Open `graph` on the first of `providers` that really loads, with the variant built for it.

    strict: the first provider must load, or this raises ProviderUnavailable naming it; otherwise each miss is
    logged as a warning and the next provider is tried. `session_factory` and `available` are ORT's unless a test
    stands in for a GPU that is not there.
    """
    if not providers:
        raise ValueError(f"{stage}: empty provider list")
    passed_over: list[str] = []
    names, forced = split_forced(prefer)  # "cpu-int8@u8u8": a variant and the int8 encoding it must run
    for i, spec in enumerate(providers):
        attempt = _try_provider(artifact_dir, graph, providers[i:], threads, profile, names, forced,
                                session_factory, set(available()), stage)
        if attempt.opened is not None:
            opened = attempt.opened
            return OpenedSession(opened.session, opened.provider, opened.variant, tuple(passed_over), opened.int8,
                                 opened.source)
        message = f"{stage}: {spec.name} did not load: {attempt.reason}"
        if strict:
            raise ProviderUnavailable(f"{message} (strict mode: refusing to fall back to "
                                      f"{[p.name for p in providers[i + 1:]] or 'nothing'})")
        log.warning("%s; falling back to the next provider", message)
        passed_over.append(message)
    raise ProviderUnavailable(f"{stage}: no provider loaded: " + "; ".join(passed_over))


def _try_provider(artifact_dir, graph: GraphEntry, specs: Sequence[ProviderSpec], threads: int,
                  profile: BatchProfile | None, prefer, forced: dict[str, str], session_factory,
                  available: set[str], stage: str) -> _Attempt:
    spec = specs[0]
    attempt = _Attempt(spec)
    if spec.name not in available:
        attempt.reason = (f"not in this onnxruntime build (available: {sorted(available)}); GPU nodes need "
                          f"onnxruntime-gpu and its CUDA/cuDNN/TensorRT libraries")
        return attempt
    try:
        variant_name, variant = graph.variant_for(spec.name, prefer)
    except LookupError as e:
        attempt.reason = str(e)
        return attempt
    path = str(Path(artifact_dir) / variant.file)
    entries = [s.ort_entry(profile) for s in specs if s.name in available]
    source, int8, again = path, None, lambda: path
    if spec.name == "CPUExecutionProvider":
        source, int8, again = cpu_graph(path, variant, forced.get(variant_name), stage)
    try:
        sess = session_factory(source, session_options(threads), providers=entries)
    except Exception as e:  # noqa: BLE001 -- a failing EP (driver, engine build) is a fallback reason, not a crash
        attempt.reason = f"session creation failed: {type(e).__name__}: {e}"
        return attempt
    active = sess.get_providers()[0]
    if active != spec.name:
        # ORT's silent fallback: it registered a later EP (usually CPU) and logged the failure only to stderr.
        attempt.reason = f"ONNX Runtime fell back to {active} (session providers: {sess.get_providers()})"
        return attempt
    attempt.opened = OpenedSession(sess, active, variant_name, int8=int8, source=again)
    return attempt
