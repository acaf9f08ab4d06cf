"""Images at their own resolution (issue 24) at real dims: what a tiling model costs per image on this CPU (prints
figures; not a test).

    python benchmarks/bench_tiling.py                                  (both models, parts a b c; --work reused)
    python benchmarks/bench_tiling.py --models smolvlm-256m --parts a b
    python benchmarks/bench_tiling.py --models smolvlm-256m --parts c --concurrency 1 --duration-s 45

Models: random weights at real dims, written by the project's synthetic checkpoint code with save_pretrained into
--work (reused when present): `onevision-0.5b` (LLaVA-OneVision-0.5B's shape: SigLIP-so400m/14 at 384, every grid
up to 6x6 tiles, anyres_max_9, Qwen2-0.5B; graphs.families.llava_next.synthetic.BENCHMARK_SPECS) and `smolvlm-256m`
(SmolVLM-256M's: SigLIP-base/16 at 512, pixel shuffle 4, 64 rows per view, crops of 512 of an image resized to a
2048 longest edge; graphs.families.idefics3.synthetic.SPECS). `onevision-tiny` / `smolvlm-tiny` are the tests'
tiny checkpoints, for trying the script in seconds. Artifacts: `graphs.cli build --hf` with only the variants
configs/local.yaml picks on a CPU (cpu-int8) and their fp32 gate partners.

(a) image tokens per request for one image of each --sizes (WxH), from the planner the preprocess stage runs
    (mmcore.image_plan, on the spec the build writes into the manifest, read from the checkpoint: no build needed),
    against transformers' processor loaded from the checkpoint (its count of image tokens in input_ids for a
    prompt of that one image); views = what gets encoded.
(b) vision ms through the session the vision stage opens with configs/local.yaml's vision options (the variant and
    int8 encoding it picks on this CPU): a batch of 1 view and of 8 views (ms per call and per view), and one
    --sizes[0] image as the stage runs it alone (its views in batches of max_batch_size, then anyres's unpad +
    newline assembly). Median of repeated calls over --seconds (best beside it; the cores are shared).
(c) served: configs/local.yaml's deployments with the model replaced by the artifacts (bench_vs_naive.deploy_mmserve),
    closed-loop streamed clients (bench_vs_vllm.load: window opens once every client has finished a request) at
    each --concurrency, images cycling through --load-sizes, new pixels every request (the vision cache never hits),
    ~30-token prompt, exactly --tokens tokens (ignore_eos, greedy): completed req/s, TTFT p50/p99, CPU s per process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from bench_graphs import timed  # noqa: E402
from bench_vs_naive import LOCAL_CONFIG, Images, deploy_mmserve, start_cluster  # noqa: E402
from bench_vs_vllm import build_artifacts, load, mmserve_processes, report  # noqa: E402
from bench_http import resolve_model, wait_models  # noqa: E402

# name -> (family, spec name): real dims first; the tiny ones are the tests' checkpoints
MODELS = {"onevision-0.5b": ("llava_next", "onevision-0.5b"), "smolvlm-256m": ("idefics3", "smolvlm-256m"),
          "onevision-tiny": ("llava_next", "onevision-siglip-qwen2"), "smolvlm-tiny": ("idefics3", "tiny-smolvlm")}
VARIANTS = ["vision/cpu-int8", "vision/cpu-fp32", "decoder/cpu-int8", "decoder/cpu-fp32"]


def size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def ensure_checkpoint(work: Path, model: str) -> Path:
    """The random checkpoint, written once (into a side folder renamed at the end: a cut write is never reused)."""
    ckpt = work / f"{model}-checkpoint"
    if (ckpt / "config.json").is_file():
        return ckpt
    family, spec = MODELS[model]
    partial = work / f"{model}-checkpoint.partial"
    shutil.rmtree(partial, ignore_errors=True)
    print(f"writing random checkpoint {model} -> {ckpt}", flush=True)
    t = time.perf_counter()
    if family == "llava_next":
        from graphs.families.llava.synthetic import write_checkpoint
        from graphs.families.llava_next.synthetic import BENCHMARK_SPECS, SPECS
        write_checkpoint(partial, {**SPECS, **BENCHMARK_SPECS}[spec])
    else:
        from graphs.families.idefics3.synthetic import SPECS, write_checkpoint
        write_checkpoint(partial, SPECS[spec])
    partial.rename(ckpt)
    print(f"  written in {time.perf_counter() - t:.0f} s", flush=True)
    return ckpt


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def hf_processor(model: str, ckpt: Path):
    """transformers' processor as the checkpoint ships it (no download), and its image token's id."""
    if MODELS[model][0] == "llava_next":
        from transformers import LlavaOnevisionProcessor

        from graphs.families.llava.synthetic import images_only
        proc = images_only(LlavaOnevisionProcessor).from_pretrained(str(ckpt))
    else:
        from transformers import Idefics3Processor
        proc = Idefics3Processor.from_pretrained(str(ckpt))
    return proc, proc.tokenizer.convert_tokens_to_ids(str(proc.image_token))


def planner(model: str, ckpt: Path):
    """(width, height) -> (views, image tokens): the planner the preprocess stage runs, on the spec the build writes
    into the manifest (read here from the checkpoint's own files, so this part needs no build)."""
    if MODELS[model][0] == "llava_next":
        from graphs.families.llava_next.checkpoint import read_anyres_checkpoint
        from mmcore.image_plan import anyres
        spec = anyres.AnyresPlanSpec.model_validate(read_anyres_checkpoint(ckpt).plan())
        return lambda w, h: (lambda p: (p.num_views, p.num_rows))(anyres.plan(spec, h, w))
    from graphs.families.idefics3.checkpoint import read_checkpoint
    from mmcore.image_plan import idefics3
    spec = idefics3.Idefics3PlanSpec.model_validate(read_checkpoint(ckpt).plan)
    return lambda w, h: (lambda p: (p.num_views, p.num_rows))(idefics3.plan(spec, h, w))


def part_a(model: str, ckpt: Path, sizes: list[tuple[int, int]]) -> None:
    plan = planner(model, ckpt)
    proc, image_id = hf_processor(model, ckpt)
    print(f"\n(a) {model}: image tokens per request of one image (planner = the preprocess stage's; HF = "
          f"{type(proc).__name__}'s input_ids)")
    print(f"    {'image WxH':>10} {'views':>5} {'image tokens':>12} {'HF':>6}  equal")
    for w, h in sizes:
        img = noise(w, h)
        views, rows = plan(w, h)
        ids = proc(text=str(proc.image_token), images=[img] if MODELS[model][0] == "llava_next" else [[img]],
                   return_tensors="np")["input_ids"]
        hf = int((ids == image_id).sum())
        print(f"    {f'{w}x{h}':>10} {views:5d} {rows:12d} {hf:6d}  {'yes' if hf == rows else 'NO'}", flush=True)


def vision_options():
    from serve_app.stages.options import VisionOptions

    (app,) = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"]
    return VisionOptions.model_validate(app["args"]["vision"])


def part_b(model: str, artifacts: Path, image_size: tuple[int, int], seconds: float) -> None:
    from mmcore.image_plan.anyres import assemble
    from mmcore.manifest import Manifest
    from serve_app.encoder.session import VisionRunner, open_vision_session
    from serve_app.imaging.plans import plan_image

    options = vision_options()
    manifest = Manifest.read(artifacts)
    runner = VisionRunner(artifacts, open_vision_session(artifacts, options), options.ort_threads)
    planned = plan_image(noise(*image_size), manifest.vision, "image")
    views = planned.views
    side = views.shape[-1]
    print(f"\n(b) {model}: vision variant {runner.variant} on {runner.provider}, int8 weights as {runner.int8} "
          f"({runner.int8_reason}), {options.ort_threads} ORT threads; views {side}x{side} px, "
          f"{manifest.vision.features_per_image} rows each")
    print(f"    {'case':<28} {'median ms':>9} {'best ms':>8} {'cpu ms':>8} {'ms/view':>8}")
    for b in (1, 8):
        batch = np.ascontiguousarray(np.resize(views, (b, *views.shape[1:])))  # the image's views, cycled
        med, best, cpu = timed(lambda: runner.run(batch), seconds, min_runs=3)  # at real dims a call takes seconds
        print(f"    {f'batch of {b} view(s)':<28} {med:9.1f} {best:8.1f} {cpu:8.1f} {med / b:8.1f}", flush=True)
    newline = manifest.vision.newline
    newline = None if newline is None else np.load(Path(artifacts) / newline.name).astype(np.float32)
    step = options.max_batch_size

    def one_image():  # as the vision stage encodes an image alone: views in batches, then the plan's assembly
        blocks = np.concatenate([runner.run(views[i:i + step]) for i in range(0, len(views), step)])
        if planned.assemble_with is not None:  # anyres: unpad the tiles' map, newline rows
            return assemble(planned.assemble_with, blocks, newline)
        return blocks.reshape(-1, blocks.shape[-1])  # idefics3: the views' rows one after the other

    rows = one_image().shape[0]
    med, best, cpu = timed(one_image, seconds, min_runs=3)
    w, h = image_size
    print(f"    {f'one {w}x{h} image ({len(views)} views)':<28} {med:9.1f} {best:8.1f} {cpu:8.1f} "
          f"{med / len(views):8.1f}   -> {rows} rows", flush=True)


async def served(url: str, args, images: Images, label: str) -> None:
    await wait_models(url)
    model = await resolve_model(url)
    latency = None
    for c in sorted(args.concurrency):  # 1 first: its latency spaces the starts of the others' clients
        f = await load(url, model, c, args.tokens, args, latency / c if latency else 0.0, images,
                       mmserve_processes())
        report(label, "images", c, f)
        latency = latency or f["latency_s"]


def overrides(artifacts: Path, args) -> dict:
    """local.yaml's args changed for this load: decoder.max_context the longest load image's tokens + 256 (prompt,
    completion), rounded up to 512, so that local.yaml's 16 slots of cache fit this machine (the models' own 8192 or
    32768 positions would not), and --set on top."""
    from mmcore.manifest import Manifest
    from serve_app.imaging.plans import plan_image

    manifest = Manifest.read(artifacts)
    rows = max(plan_image(noise(w, h), manifest.vision, "image").rows for w, h in args.load_sizes)
    out: dict = {"decoder": {"max_context": min(-(-(rows + 256) // 512) * 512, manifest.decoder.max_positions)}}
    for stage, field, value in args.set:
        out.setdefault(stage, {})[field] = json.loads(value)
    return out


def part_c(runs: list[tuple[str, Path]], args) -> None:
    import ray
    from ray import serve

    t = time.perf_counter()
    images = Images(args.images, sizes=args.load_sizes)
    print(f"\n(c) served: {args.images} images made in {time.perf_counter() - t:.1f} s, cycling through "
          f"{' '.join(f'{w}x{h}' for w, h in args.load_sizes)}; {args.tokens} tokens per request; "
          f"{args.duration_s:.0f} s window after {args.ramp_s:.0f} s ramp", flush=True)
    url = start_cluster()
    try:
        for model, artifacts in runs:
            t = time.perf_counter()
            changed = overrides(artifacts, args)
            deploy_mmserve(str(artifacts), changed)
            print(f"{model}: deployed in {time.perf_counter() - t:.0f} s, local.yaml's args changed: {changed}",
                  flush=True)
            asyncio.run(served(url, args, images, model))
            serve.delete("mmserve")
    finally:
        serve.shutdown()
        ray.shutdown()
    if images.next > args.images:
        print(f"note: {images.next} image requests over {args.images} images: some were vision cache hits")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["onevision-0.5b", "smolvlm-256m"], choices=list(MODELS))
    p.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    p.add_argument("--work", default="/tmp/mmserve-tiling", help="checkpoints and artifacts, reused when present")
    p.add_argument("--variants", nargs="+", default=VARIANTS, help="variants to build ('all': every one)")
    p.add_argument("--sizes", type=size, nargs="+", default=[(640, 480), (1024, 768), (480, 640), (336, 336),
                                                             (1920, 1080), (300, 300)],
                   help="(a) images WxH; the first is also (b)'s image")
    p.add_argument("--seconds", type=float, default=5.0, help="(b) time budget per measurement")
    p.add_argument("--load-sizes", type=size, nargs="+", default=[(640, 480), (480, 640), (1024, 768), (300, 300)],
                   help="(c) image sizes WxH, in turn")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, default=16, help="completion tokens per request (ignore_eos)")
    p.add_argument("--duration-s", type=float, default=45.0, help="measurement window per load")
    p.add_argument("--ramp-s", type=float, default=0.0, help="more load before the window opens")
    p.add_argument("--set", nargs=3, action="append", default=[], metavar=("STAGE", "FIELD", "JSON"),
                   help="(c) override one of local.yaml's args, e.g. --set vision max_batch_size 16")
    p.add_argument("--images", type=int, default=64, help="distinct images made up front; more requests than "
                                                          "this wrap around (and would hit the vision cache)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from mmcore.runtime.int8_kernels import choose_encoding, cpu_model, reported_isa

    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; flags {reported_isa()}; int8 weights run as "
          f"{choose_encoding().describe()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for model in args.models:
        ckpt = ensure_checkpoint(work, model)
        if "a" in args.parts:
            part_a(model, ckpt, args.sizes)
        if not {"b", "c"} & set(args.parts):
            continue
        t = time.perf_counter()
        artifacts = build_artifacts(ckpt, work / f"{model}-artifacts", args.variants)
        if time.perf_counter() - t > 1:
            print(f"  built in {time.perf_counter() - t:.0f} s", flush=True)
        runs.append((model, artifacts))
        if "b" in args.parts:
            part_b(model, artifacts, args.sizes[0], args.seconds)
    if "c" in args.parts:
        part_c(runs, args)
    print(f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
