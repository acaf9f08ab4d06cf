"""LLaVA family benchmark (prints figures; not a test): every built variant beside transformers eager fp32 on the
same checkpoint, in the same run.

    python benchmarks/bench_llava.py --work /tmp/llava-bench [--threads 2] [--seconds 2]

The default checkpoint is random weights with a small real checkpoint's dims (synthetic.SPECS["siglip-qwen2-0.5b"]:
SigLIP-base-like vision at 384 px, 576 features per image; a Qwen2-0.5B-shaped decoder: 24 layers, hidden 896,
14 heads over 2 KV heads, vocabulary 151,936), written with save_pretrained into --work and built there with
`build_artifacts` (parity gate included) unless already built. Prints:
  1. vision: images/s at batch 1 and 8 per variant runnable on the CPU EP, and transformers' get_image_features;
  2. decoder: prefill of one image + 32-token prompt (ms), and one decode step at batch 1/8/32 with every row holding
     that prompt (ms, tokens/s), per variant and for transformers (DynamicCache, batch of identical prompts);
  3. memory: each ONNX file's size and the resident-set growth when its session is created and run.
Targets (issue 13): decode cpu-int4 at batch 1 >= 4x transformers eager fp32's tokens/s.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT_TOKENS = 32
DECODE_BATCHES = (1, 8, 32)
VISION_BATCHES = (1, 8)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, seconds: float, min_runs: int = 2) -> float:
    """Median seconds per call over at least min_runs calls and about `seconds` of wall time (after one warm-up)."""
    fn()
    runs, start = [], time.perf_counter()
    while len(runs) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return float(np.median(runs))


def ensure_build(work: Path, spec_name: str, variants):
    from graphs.build import build_artifacts
    from graphs.families.llava.synthetic import SPECS, write_checkpoint
    from mmcore.manifest import MANIFEST, Manifest

    ckpt, out = work / f"{spec_name}-checkpoint", work / f"{spec_name}-artifacts"
    if not (ckpt / "config.json").is_file():
        print(f"writing random checkpoint {spec_name} -> {ckpt}", flush=True)
        write_checkpoint(ckpt, SPECS[spec_name])
    if not (out / MANIFEST).is_file():
        start = time.perf_counter()
        build_artifacts(ckpt, out, progress=lambda m: print(f"  [{time.perf_counter() - start:6.1f}s] {m}",
                                                            flush=True), variants=variants)
    return ckpt, out, Manifest.read(out).model_dump(mode="json")


def bench_vision(out: Path, info: dict, ck, threads: int, seconds: float) -> None:
    from graphs.families.llava.parity import pixels, session

    print("\nvision (images/s)          batch 1    batch 8   file MB   RSS +MB")
    for name, v in info["graphs"]["vision"]["variants"].items():
        if "CPUExecutionProvider" not in v["providers"]:
            print(f"  {name:22s}  (targets {', '.join(v['providers'])}; not run on the CPU EP)")
            continue
        before = rss_mb()
        sess = session(str(out / v["file"]), threads)
        rates = []
        for b in VISION_BATCHES:
            px = pixels(ck, b, 0)
            rates.append(b / timed(lambda: sess.run(None, {"pixels": px}), seconds))
        mb = (out / v["file"]).stat().st_size / 2**20
        print(f"  {name:22s} {rates[0]:9.2f} {rates[1]:10.2f} {mb:9.1f} {rss_mb() - before:9.1f}")
        del sess


def bench_decoder(out: Path, info: dict, ck, threads: int, seconds: float, features: int) -> dict:
    from graphs.families.llava.driver import open_runner
    from graphs.families.llava.parity import session

    rng = np.random.default_rng(0)
    table = np.load(out / info["decoder"]["embeddings"]["name"])  # (V,D)
    prompt = rng.standard_normal((features + PROMPT_TOKENS, ck.text.hidden)).astype(np.float32) * 0.02
    length = prompt.shape[0]
    slots = max(DECODE_BATCHES)
    print(f"\ndecoder ({length}-position prompt)  prefill ms  " +
          "  ".join(f"step@{b} ms (tok/s)" for b in DECODE_BATCHES) + "   file MB  RSS +MB")
    tps = {}
    for name, v in info["graphs"]["decoder"]["variants"].items():
        before = rss_mb()
        runner = open_runner(session(str(out / v["file"]), threads), ck, slots, length + 64)
        prefill = timed(lambda: runner.prefill(0, prompt), seconds)
        for s in range(1, slots):
            runner.move(0, s, length)
        cells = []
        for b in DECODE_BATCHES:
            embeds = table[rng.integers(0, len(table), b)]
            lengths = np.full(b, length)
            step = timed(lambda: runner.decode(b, embeds, lengths), seconds)
            tps[(name, b)] = b / step
            cells.append(f"{step * 1e3:8.2f} ({b / step:7.1f})")
        mb = (out / v["file"]).stat().st_size / 2**20
        print(f"  {name:24s} {prefill * 1e3:10.1f}  " + "  ".join(cells) + f" {mb:9.1f} {rss_mb() - before:8.1f}")
        del runner
    return tps


def bench_transformers(ckpt: Path, ck, threads: int, seconds: float) -> dict:
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.set_num_threads(threads)
    before = rss_mb()
    model = LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()
    size = ck.vision.image_size
    print(f"\ntransformers eager fp32 (RSS +{rss_mb() - before:.0f} MB for the model)")
    with torch.no_grad():
        rates = []
        for b in VISION_BATCHES:
            px = torch.randn(b, 3, size, size)
            rates.append(b / timed(lambda: model.get_image_features(pixel_values=px), seconds, 1))
        print(f"  vision images/s: batch 1 {rates[0]:.2f}, batch 8 {rates[1]:.2f}")
        rng = np.random.default_rng(0)
        length = ck.vision.features_per_image + PROMPT_TOKENS
        embeds = torch.from_numpy(rng.standard_normal((1, length, ck.text.hidden)).astype(np.float32) * 0.02)
        prefill = timed(lambda: model(inputs_embeds=embeds, use_cache=True), seconds, 1)
        tps, cells = {}, []
        prefix = model(inputs_embeds=embeds, use_cache=True).past_key_values  # the prompt's cache, batch 1
        for b in DECODE_BATCHES:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(b)  # b rows holding the same prompt, as ours do
            token = torch.from_numpy(rng.integers(0, ck.text.vocab_size, (b, 1)))

            def step():
                model(input_ids=token, past_key_values=cache, use_cache=True)
                cache.crop(-1)  # every timed step decodes the same position
            t = timed(step, seconds, 1)
            tps[b] = b / t
            cells.append(f"{t * 1e3:8.2f} ({b / t:7.1f})")
            del cache
        print(f"  prefill {prefill * 1e3:.1f} ms; step@b ms (tok/s): " + "  ".join(cells))
    return tps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="directory for the random checkpoint and its artifacts")
    p.add_argument("--spec", default="siglip-qwen2-0.5b", help="a graphs.families.llava.synthetic SPECS name")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for ORT and torch")
    p.add_argument("--seconds", type=float, default=2.0, help="timing window per figure")
    p.add_argument("--variants", nargs="+", default=None, help="build only these (default: all)")
    args = p.parse_args(argv)
    from graphs.families.llava.checkpoint import read_checkpoint

    ckpt, out, info = ensure_build(Path(args.work), args.spec, args.variants)
    ck = read_checkpoint(ckpt)
    bench_vision(out, info, ck, args.threads, args.seconds)
    ours = bench_decoder(out, info, ck, args.threads, args.seconds, ck.vision.features_per_image)
    theirs = bench_transformers(ckpt, ck, args.threads, args.seconds)
    print("\ndecode tokens/s at batch 1 over transformers eager fp32:")
    for (name, b), rate in ours.items():
        if b == 1:
            print(f"  {name:24s} {rate / theirs[1]:6.2f}x" + ("   (target >= 4x)" if name == "cpu-int4" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
