"""CPU per image of carrying one vision block from the vision replica to the decoder's through the ingress, alone
(no model, no HTTP): the transport the ingress's `image_features` uses against the one it replaced (prints figures;
not a test).

    python benchmarks/bench_feature_path.py [--rows 196 --dim 384] [--images 300] [--clients 8]

Three deployments stand in for the stages, each in its own process as Serve places them: a vision replica that
returns a fresh (rows, dim) float32 block per call, an ingress replica that gets it to the decoder replica, which
fetches it and answers its row count. Two ways:
  forward       the ingress awaits `encode` (the block deserialized in the ingress) and passes the array inside
                the decoder call's argument (pickled again into the object store)
  by-reference  serve_app.api.chat.encode_by_reference: the ingress awaits the block's shape, the first object of
                the streaming `encode_for_decoder`, and passes the second object's ObjectRef in a FeatureRef; the
                decoder fetches it (serve_app.contract.resolve_features)
Per way: CPU seconds of each replica's process over --images calls (--clients at a time) / --images, and the wall
time per image. Each way runs twice, alternating, after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import numpy as np
import psutil
import ray
from ray import serve

from serve_app.api.chat import encode_by_reference
from serve_app.contract import DecodeRequest, FeatureSegment, resolve_features

WAYS = ("forward", "by-reference")


@serve.deployment(max_ongoing_requests=32)
class Vision:
    def __init__(self, rows: int, dim: int):
        self.block = np.ones((rows, dim), np.float32)

    async def encode(self, image, model_key=None) -> np.ndarray:
        return self.block.copy()  # a new array per call, as the session's output is

    async def encode_for_decoder(self, image, model_key=None):
        block = await self.encode(image, model_key)
        yield block.shape
        yield block

    def pid(self) -> int:
        return os.getpid()


@serve.deployment(max_ongoing_requests=64)
class Decoder:
    async def generate(self, request: DecodeRequest) -> int:
        request = await resolve_features(request)
        return sum(len(s) for s in request.segments)

    def pid(self) -> int:
        return os.getpid()


@serve.deployment(max_ongoing_requests=64)
class Ingress:
    def __init__(self, vision, decoder):
        self.vision, self.decoder = vision, decoder

    async def one(self, way: str) -> int:
        if way == "forward":
            segment = FeatureSegment(await self.vision.encode.remote(None))
        else:
            segment = await encode_by_reference(self.vision, None, None)
        return await self.decoder.generate.remote(DecodeRequest("r", [segment], max_tokens=1))

    def pid(self) -> int:
        return os.getpid()


async def measure(args) -> None:
    ingress = serve.run(Ingress.bind(Vision.bind(args.rows, args.dim), Decoder.bind()), name="feature-path",
                        route_prefix=None)
    procs = {name: psutil.Process(await serve.get_deployment_handle(name, "feature-path").pid.remote())
             for name in ("Ingress", "Vision", "Decoder")}

    def cpu() -> dict[str, float]:
        return {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}

    async def calls(way: str, n: int) -> None:
        gate = asyncio.Semaphore(args.clients)

        async def one():
            async with gate:
                assert await ingress.one.remote(way) == args.rows
        await asyncio.gather(*(one() for _ in range(n)))

    for way in WAYS:
        await calls(way, 2 * args.clients)  # warm-up: routers, plasma, code paths
    for _ in range(2):
        for way in WAYS:
            before, start = cpu(), time.perf_counter()
            await calls(way, args.images)
            after, wall = cpu(), time.perf_counter() - start
            per = "  ".join(f"{k} {1e3 * (after[k] - before[k]) / args.images:5.2f}" for k in procs)
            print(f"{args.rows}x{args.dim} {way:<12}  CPU ms/image: {per}   wall {1e3 * wall / args.images:5.2f} ms",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=196, help="feature rows per image (reference preset: 196)")
    p.add_argument("--dim", type=int, default=384, help="feature width (reference preset: 384; Qwen2-0.5B: 896)")
    p.add_argument("--images", type=int, default=300, help="calls per measurement")
    p.add_argument("--clients", type=int, default=8, help="calls in flight")
    args = p.parse_args()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        asyncio.run(measure(args))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
