"""Summarize an ONNX Runtime profile (the Chrome-trace JSON a stage writes when profiling is on) by operator type.

    python -m serve_app.observability.profile_summary TRACE.json [--top N] [--json]

Prints, per operator type (and the EP that ran it): node runs, total and mean kernel time and the share of all kernel
time, heaviest first; then the model runs and their mean wall time. The whole trace is also viewable in
chrome://tracing or https://ui.perfetto.dev.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class OpStats:
    op_type: str
    provider: str
    calls: int = 0
    total_us: int = 0

    @property
    def mean_us(self) -> float:
        return self.total_us / self.calls if self.calls else 0.0


@dataclass
class TraceSummary:
    model_runs: int
    model_run_us: int  # wall time of all model runs
    kernel_us: int  # sum of node kernel times
    ops: list[OpStats]  # heaviest first


def load_events(path: str | Path) -> list[dict]:
    """ORT writes a JSON list of trace events; Chrome's object form ({"traceEvents": [...]}) is accepted too."""
    try:
        text = Path(path).read_text()
        if not text:  # ORT creates the file when profiling starts and writes it when profiling ends
            raise ValueError(f"{path}: empty; is profiling still on for that stage?")
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON trace ({e})") from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ValueError(f"{path}: expected a list of trace events")
    return events


def summarize(events: list[dict]) -> TraceSummary:
    ops: dict[tuple[str, str], OpStats] = {}
    runs = run_us = 0
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs += 1
            run_us += int(e.get("dur", 0))
        elif e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            args = e.get("args", {})
            key = (args.get("op_name", "?"), args.get("provider", "?"))
            stats = ops.setdefault(key, OpStats(*key))
            stats.calls += 1
            stats.total_us += int(e.get("dur", 0))
    ordered = sorted(ops.values(), key=lambda s: (-s.total_us, s.op_type))
    return TraceSummary(runs, run_us, sum(s.total_us for s in ordered), ordered)


def format_table(summary: TraceSummary, top: int | None = None) -> str:
    lines = [f"{'op type':<28} {'provider':<28} {'calls':>7} {'total ms':>10} {'mean us':>9} {'share':>7}"]
    for s in summary.ops[:top]:
        share = 100.0 * s.total_us / summary.kernel_us if summary.kernel_us else 0.0
        lines.append(f"{s.op_type:<28} {s.provider:<28} {s.calls:>7} {s.total_us / 1e3:>10.3f} "
                     f"{s.mean_us:>9.1f} {share:>6.1f}%")
    mean_run = summary.model_run_us / summary.model_runs / 1e3 if summary.model_runs else 0.0
    lines.append(f"kernel time {summary.kernel_us / 1e3:.3f} ms over {summary.model_runs} model runs "
                 f"(mean run {mean_run:.3f} ms wall)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.observability.profile_summary", description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="ORT profile JSON written by a stage")
    parser.add_argument("--top", type=int, default=None, help="show only the N heaviest operator types")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        summary = summarize(load_events(args.trace))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**asdict(summary), "ops": [asdict(s) | {"mean_us": s.mean_us} for s in summary.ops]}))
    else:
        print(format_table(summary, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
