"""Decode steps over full-length contexts at a few batch sizes, and an ORT profile of the largest, per operator type
(bench_engine's --profile-batch part; also runnable alone, several variants side by side):

    python benchmarks/bench_profile.py --artifacts DIR --variants cpu-int8 cpu-int8-kv8 --batches 1 8 32 --context 608

Per variant, one slot is prefilled with a seeded `context`-position prompt and copied into every slot
(runner.move); then in alternating rounds (each variant at each batch size, then again) one decode step runs over
that many rows at once, profiling on. The median step wall time gives the steady-state decode rate (batch / step:
an engine's ceiling at that concurrency, prefills excluded), and the largest batch's steps are summarized with
serve_app/observability/profile_summary.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mmcore.manifest import Manifest
from serve_app.observability.profile_summary import format_table, load_events, summarize
from mmcore.runtime.kv_runner import OrtDecoderRunner
from mmcore.runtime.ort_session import cpu_session


class DecodeBench:
    """One variant's session (profiling on) and runner, every slot holding the same seeded `context` positions."""

    def __init__(self, artifacts: str | Path, variant: str, slots: int, context: int, threads: int, tmp: str):
        root = Path(artifacts)
        m = Manifest.read(root)
        v = m.graphs["decoder"].variants[variant]
        self.table = np.load(root / m.decoder.embeddings.name, mmap_mode="r")  # (V,D)
        self.rng, self.context, self.step_ts = np.random.default_rng(0), context, {}
        self.sess = cpu_session(str(root / v.file), threads, profile_prefix=str(Path(tmp) / variant))
        self.runner = OrtDecoderRunner(self.sess, m.decoder, slots, context + 2, cache=v.kv_cache)
        self.runner.prefill(0, self.rng.standard_normal((context, m.decoder.hidden_size)).astype(np.float32) * 0.02)
        for slot in range(1, slots):
            self.runner.move(0, slot, context)

    def step(self, batch: int) -> float:
        """One decode step over `batch` rows at position `context` (rewritten each time) -> wall seconds."""
        embeds = np.asarray(self.table[self.rng.integers(0, len(self.table), batch)], np.float32)  # (b,D)
        t0 = time.perf_counter()
        self.runner.decode(batch, embeds, np.full(batch, self.context))
        return time.perf_counter() - t0

    def profile(self, batch_runs: list[int], top: int) -> str:
        """The profile table of the model runs whose ordinal (0 = the prefill) is in `batch_runs`."""
        events = load_events(self.sess.end_profiling())
        runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                      key=lambda e: e["ts"])
        spans = [(runs[i]["ts"], runs[i]["ts"] + runs[i]["dur"]) for i in batch_runs]
        kept = [e for e in events if any(a <= e.get("ts", -1) <= b for a, b in spans)]
        return format_table(summarize(kept), top)


def decode_steps(artifacts: str | Path, variants: list[str], batches: list[int], context: int, threads: int = 1,
                 rounds: int = 3, top: int = 8) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """Alternating rounds (every variant at every batch, then again), so machine load falls on all alike ->
    (variant -> batch -> median step seconds, variant -> profile table of its steps at the largest batch)."""
    with tempfile.TemporaryDirectory() as tmp:
        benches = {v: DecodeBench(artifacts, v, max(batches), context, threads, tmp) for v in variants}
        walls = {v: {b: [] for b in batches} for v in variants}
        ordinal = {v: 0 for v in variants}  # model runs so far (the prefill is run 0)
        profiled = {v: [] for v in variants}
        for _ in range(rounds):
            for v, bench in benches.items():
                for b in batches:
                    walls[v][b].append(bench.step(b))
                    ordinal[v] += 1
                    if b == max(batches):
                        profiled[v].append(ordinal[v])
        tables = {v: bench.profile(profiled[v], top) for v, bench in benches.items()}
    return {v: {b: float(np.median(t)) for b, t in w.items()} for v, w in walls.items()}, tables


def profile_decode(artifacts: str | Path, variant: str, batch: int, context: int, threads: int = 1,
                   steps: int = 5) -> str:
    walls, tables = decode_steps(artifacts, [variant], [batch], context, threads, steps)
    w = walls[variant][batch]
    return (f"profile {variant}: {steps} decode steps at batch {batch}, {context}-position contexts, {threads} "
            f"thread(s): median step {1e3 * w:.1f} ms wall = {batch / w:.0f} tok/s\n{tables[variant]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", required=True)
    p.add_argument("--variants", nargs="+", default=["cpu-int8"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="ascending; the last is profiled")
    p.add_argument("--context", type=int, required=True, help="positions cached per row before the steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds: steps per variant and batch")
    args = p.parse_args()
    batches = sorted(args.batches)
    rates, tables = decode_steps(args.artifacts, args.variants, batches, args.context, args.threads, args.rounds)
    print(f"decode steps over {args.context}-position contexts, {args.threads} thread(s), median of {args.rounds} "
          f"alternating rounds")
    print(f"{'batch':<8}" + "".join(f"{v + ' ms':>20}{'tok/s':>8}" for v in args.variants))
    for b in batches:
        print(f"{b:<8}" + "".join(f"{1e3 * rates[v][b]:>20.1f}{b / rates[v][b]:>8.0f}" for v in args.variants))
    for variant in args.variants:
        print(f"\nprofile {variant}, batch {batches[-1]} ({args.rounds} steps):\n{tables[variant]}")

if __name__ == "__main__":
    main()
