"""mmserve against the server a user writes first, on the same load, in one run (prints figures; not a test).

    python benchmarks/bench_vs_naive.py --artifacts DIR          (DIR: mmserve build --preset reference --out DIR)
    python benchmarks/bench_vs_naive.py --artifacts DIR --profile OUT   (py-spy every process under the 16-client
                                                                         load instead; figures then carry its cost)

One local Ray cluster; first mmserve (configs/local.yaml's deployments and options, the model replaced by DIR), then
the naive server (benchmarks/naive_server.py: one deployment, the PyTorch reference eagerly, one request at a
time), each at every --concurrency in turn. Load: closed-loop clients, each request an image (224px noise PNG, a new
one every request: no vision cache hits) + a ~30-token prompt -> exactly --tokens tokens (ignore_eos), greedy,
streamed. Per server and load: completed requests/s and tokens/s inside the window, time to first token p50/p99
(requests sent inside the window), and CPU seconds over the window of each Ray Serve process (replicas by deployment,
the HTTP proxy, the controller) and of this client, from psutil. Ratios mmserve / naive come last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml

from bench_http import body, image_url, one_stream, png_data_url, resolve_model, wait_models

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = ROOT / "configs" / "local.yaml"


def start_cluster() -> str:
    """Local Ray + Serve on loopback -> base URL."""
    import socket

    import ray
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("RAY_worker_niceness", "0")  # as bench_http: both servers at this process's priority
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def deploy_mmserve(artifacts: str, overrides: dict) -> None:
    """configs/local.yaml's application as `serve deploy` would deploy it, serving `artifacts`."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    (app,) = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"]
    app["args"]["model"] = {"artifacts_dir": artifacts}
    for stage, fields in overrides.items():
        app["args"].setdefault(stage, {}).update(fields)
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}), _blocking=True)


def deploy_naive(artifacts: str, threads: int) -> None:
    import ray.cloudpickle
    from ray import serve

    import naive_server

    ray.cloudpickle.register_pickle_by_value(naive_server)  # the replicas do not have benchmarks/ on their path
    serve.run(naive_server.NaiveServer.options(ray_actor_options={"num_cpus": threads}).bind(artifacts, threads),
              name="naive", route_prefix="/")


def serve_processes() -> dict[str, psutil.Process]:
    """label -> process: every live Serve replica (by deployment), the proxy, the controller, and this client."""
    from ray._private import state

    found: dict[str, psutil.Process] = {"client (this process)": psutil.Process()}
    count: Counter = Counter()
    for actor in state.actors().values():
        name, pid = actor["Name"], actor["Pid"]
        if actor["State"] != "ALIVE" or not pid:
            continue
        if name.startswith("SERVE_REPLICA::"):
            label = name.split("#")[1]
        elif name.startswith("SERVE_PROXY_ACTOR"):
            label = "Serve proxy"
        elif name.startswith("SERVE_CONTROLLER_ACTOR"):
            label = "Serve controller"
        else:
            continue
        count[label] += 1
        found[label if count[label] == 1 else f"{label}#{count[label]}"] = psutil.Process(pid)
    return found


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for label, p in procs.items():
        try:
            t = p.cpu_times()
            out[label] = t.user + t.system
        except psutil.NoSuchProcess:
            out[label] = float("nan")
    return out


class Images:
    """A new image per request: a noise PNG whose first pixels spell the request's number (unique content hash).
    `sizes`: (width, height) of each image in turn (default: `size` x `size` for all)."""

    def __init__(self, count: int, size: int = 224, sizes: list[tuple[int, int]] | None = None):
        self.next = 0
        rng = np.random.default_rng(7)
        self.pixels = [rng.integers(0, 256, (h, w, 3), np.uint8) for w, h in sizes or [(size, size)]]  # (H,W,3)
        self.urls = [self._url(i) for i in range(count)] if count else [image_url(seed=7)]

    def _url(self, i: int) -> str:
        px = self.pixels[i % len(self.pixels)].copy()
        px[0, :4, 0] = np.frombuffer(i.to_bytes(4, "little"), np.uint8)
        return png_data_url(px, compress_level=1)  # fast to make: noise does not compress anyway

    def take(self) -> str:
        url = self.urls[self.next % len(self.urls)]
        self.next += 1
        return url


async def load(url: str, model: str, concurrency: int, tokens: int, ramp_s: float, duration_s: float,
               images: Images, on_window=None) -> dict:
    """Closed-loop clients; figures over the window. `on_window(start, end)` runs while the window is open."""
    seen = {"chunks": 0, "gaps": [], "usage_tokens": 0, "usage_chunks": 0, "ttft": [], "finished": []}
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        warm = dict(seen, gaps=[], ttft=[], finished=[])
        await one_stream(client, url, body(model, 4, images.take()), (0.0, float("inf")), warm)
        now = time.perf_counter()
        window = (now + ramp_s, now + ramp_s + duration_s)

        async def client_loop():  # a request sent inside the window runs to its end: its TTFT counts
            while time.perf_counter() < window[1]:
                await one_stream(client, url, body(model, tokens, images.take()), window, seen, drain=True)

        probe = [asyncio.create_task(on_window(*window))] if on_window else []
        await asyncio.gather(*(client_loop() for _ in range(concurrency)), *probe)
    done = [t for t in seen["finished"] if window[0] <= t <= window[1]]
    ttft = np.array([s for sent, s in seen["ttft"] if window[0] <= sent <= window[1]] or [np.nan]) * 1e3
    per_chunk = seen["usage_tokens"] / max(seen["usage_chunks"], 1)
    return {"req_s": len(done) / duration_s, "tok_s": seen["chunks"] * per_chunk / duration_s,
            "ttft_p50": np.percentile(ttft, 50), "ttft_p99": np.percentile(ttft, 99), "per_chunk": per_chunk,
            "requests": len(done), "service_s": duration_s / max(len(done), 1)}


async def measured(url: str, model: str, c: int, args, ramp_s: float, images: Images,
                   profile_dir: Path | None) -> dict:
    procs = serve_processes()
    figures: dict = {}

    async def in_window(start: float, end: float):
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before = cpu_seconds(procs)
        spies = [spy(p.pid, label, end - start, profile_dir) for label, p in procs.items()
                 if profile_dir is not None and not label.startswith("client")]
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        after = cpu_seconds(procs)
        figures["cpu"] = {k: after[k] - before[k] for k in procs}
        for s in spies:
            await asyncio.to_thread(s.wait)

    figures.update(await load(url, model, c, args.tokens, ramp_s, args.duration_s, images, in_window))
    return figures


def spy(pid: int, label: str, seconds: float, out: Path) -> subprocess.Popen:
    name = label.replace(" ", "_").replace("#", "_")
    return subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "50",
                             "--nonblocking", "-f", "raw", "-o", str(out / f"{name}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_summary(path: Path, top: int = 12) -> str:
    """Collapsed stacks -> the functions with the largest inclusive share of samples."""
    total, inclusive = 0, defaultdict(int)
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        total += int(n)
        for frame in set(stack.split(";")):
            inclusive[frame] += int(n)
    rows = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"      {100 * n / max(total, 1):5.1f}%  {frame[:150]}" for frame, n in rows)


def report(name: str, c: int, f: dict) -> None:
    print(f"{name:<8} x{c:<3} {f['req_s']:6.2f} req/s  {f['tok_s']:7.0f} tok/s  TTFT p50 {f['ttft_p50']:7.1f} ms  "
          f"p99 {f['ttft_p99']:7.1f} ms  ({f['requests']} requests, {f['per_chunk']:.2f} tok/chunk)")
    cpu = f.get("cpu", {})
    total = sum(v for k, v in cpu.items() if not k.startswith("client"))
    print(f"    CPU s over the window: server total {total:.1f} ({1e3 * total / max(f['requests'], 1):.1f} ms/request)"
          "; " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))


async def run_server(name: str, url: str, args, images: Images) -> dict[int, dict]:
    await wait_models(url)
    model = await resolve_model(url)
    if args.idle_s > 0:  # what the processes cost with no request at all: pollers, metrics, health checks
        procs = serve_processes()
        before = cpu_seconds(procs)
        await asyncio.sleep(args.idle_s)
        after = cpu_seconds(procs)
        print(f"{name:<8} idle {args.idle_s:.0f} s, CPU s: " +
              ", ".join(f"{k} {after[k] - before[k]:.2f}" for k in procs if not k.startswith("client")))
    results: dict[int, dict] = {}
    for c in sorted(args.concurrency) if name == "naive" else args.concurrency:
        # one request at a time: c clients reach steady state after c requests' service time (x1 measures it)
        ramp_s = args.ramp_s + (c * results[1]["service_s"] if name == "naive" and 1 in results else 0.0)
        profile_dir = None
        if args.profile and c == max(args.concurrency):
            profile_dir = Path(args.profile) / name
            profile_dir.mkdir(parents=True, exist_ok=True)
        results[c] = await measured(url, model, c, args, ramp_s, images, profile_dir)
        report(name, c, results[c])
        if profile_dir is not None:
            for path in sorted(profile_dir.glob("*.txt")):
                print(f"    profile {path.stem}:\n{profile_summary(path)}")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", required=True, help="artifact directory of the reference preset")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 1])
    p.add_argument("--tokens", type=int, default=32, help="completion tokens per request (ignore_eos)")
    p.add_argument("--duration-s", type=float, default=15.0, help="measurement window per load")
    p.add_argument("--ramp-s", type=float, default=3.0, help="load before the window opens")
    p.add_argument("--images", type=int, default=1500, help="distinct images generated up front; more requests "
                                                             "than this wrap around (and would hit the cache)")
    p.add_argument("--idle-s", type=float, default=10.0, help="CPU of every process with no load, first (0: skip)")
    p.add_argument("--naive-threads", type=int, default=1, help="torch threads (and num_cpus) of the naive server; "
                                                                "1: what Ray gives a deployment that sets none")
    p.add_argument("--servers", nargs="+", default=["mmserve", "naive"], choices=["mmserve", "naive"])
    p.add_argument("--profile", default=None, help="folder: py-spy every process under the largest load")
    p.add_argument("--set", nargs=3, action="append", default=[], metavar=("STAGE", "FIELD", "JSON"),
                   help="override one of local.yaml's args for mmserve, e.g. --set decoder stream_interval_s 0.05")
    args = p.parse_args()
    import json

    from ray import serve

    overrides: dict = defaultdict(dict)
    for stage, field, value in args.set:
        overrides[stage][field] = json.loads(value)
    t0 = time.perf_counter()
    images = Images(args.images)
    print(f"{args.images} images generated in {time.perf_counter() - t0:.1f} s; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.tokens} tokens per request, "
          f"{args.duration_s:.0f} s window after {args.ramp_s:.0f} s ramp")
    url = start_cluster()
    results = {}
    try:
        for name in args.servers:
            deploy_mmserve(args.artifacts, overrides) if name == "mmserve" else \
                deploy_naive(args.artifacts, args.naive_threads)
            results[name] = asyncio.run(run_server(name, url, args, images))
            serve.delete("mmserve" if name == "mmserve" else "naive")
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    if images.next > args.images:
        print(f"note: {images.next} requests over {args.images} images: some were vision cache hits")
    if len(results) == 2:
        for c in args.concurrency:
            m, n = results["mmserve"][c], results["naive"][c]
            print(f"mmserve x{c}: {m['req_s']:.2f} req/s, TTFT p50 {m['ttft_p50']:.0f} ms | naive: {n['req_s']:.2f} "
                  f"req/s, TTFT p50 {n['ttft_p50']:.0f} ms")
            print(f"mmserve / naive x{c}: req/s {m['req_s'] / max(n['req_s'], 1e-9):.2f}x, TTFT p50 "
                  f"{m['ttft_p50'] / n['ttft_p50']:.2f}x; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
