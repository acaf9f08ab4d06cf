"""An ORT profile of decode steps at one batch size over full-length contexts, per operator type (bench_engine's
--profile-batch part; also runnable alone):

    python benchmarks/bench_profile.py --artifacts DIR --variant cpu-int8-kv8 --batch 32 --context 608

One slot is prefilled with a seeded `context`-position prompt and copied into every slot (runner.move), then
`steps` decode steps run over all `batch` rows at once with profiling on; the trace is summarized with
serve_app/observability/profile_summary.py and the median step wall time printed beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from graphs.manifest import Manifest
from serve_app.observability.profile_summary import format_table, load_events, summarize
from serve_app.runtime.kv_runner import OrtDecoderRunner
from serve_app.runtime.ort_session import cpu_session


def profile_decode(artifacts: str | Path, variant: str, batch: int, context: int, threads: int = 1,
                   steps: int = 5, top: int = 8) -> str:
    root = Path(artifacts)
    m = Manifest.read(root)
    v = m.graphs["decoder"].variants[variant]
    table = np.load(root / m.decoder.embeddings.name, mmap_mode="r")  # (V,D)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        sess = cpu_session(str(root / v.file), threads, profile_prefix=str(Path(tmp) / variant))
        runner = OrtDecoderRunner(sess, m.decoder, batch, context + steps + 1, cache=v.kv_cache)
        runner.prefill(0, rng.standard_normal((context, m.decoder.hidden_size)).astype(np.float32) * 0.02)
        for slot in range(1, batch):
            runner.move(0, slot, context)
        walls = []
        for i in range(steps):
            embeds = np.asarray(table[rng.integers(0, len(table), batch)], np.float32)  # (B,D)
            t0 = time.perf_counter()
            runner.decode(batch, embeds, np.full(batch, context + i))
            walls.append(time.perf_counter() - t0)
        trace = sess.end_profiling()
        events = load_events(trace)
    # the first model run is the prefill: keep the decode steps only
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    first_decode = runs[1]["ts"] if len(runs) > 1 else 0
    summary = summarize([e for e in events if e.get("ts", 0) >= first_decode])
    head = (f"profile {variant}: {steps} decode steps at batch {batch}, {context}-position contexts, {threads} "
            f"thread(s): median step {1e3 * float(np.median(walls)):.1f} ms wall = "
            f"{batch / float(np.median(walls)):.0f} tok/s")
    return head + "\n" + format_table(summary, top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", required=True)
    p.add_argument("--variant", default="cpu-int8")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--context", type=int, required=True, help="positions cached per row before the steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    print(profile_decode(args.artifacts, args.variant, args.batch, args.context, args.threads, args.steps))


if __name__ == "__main__":
    main()
