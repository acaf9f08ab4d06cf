"""Exact-match caption accuracy of the demo captioner on held-out images: the PyTorch reference, and each CPU
graph variant of a built artifact directory.

    python -m graphs.demo.evaluate [--n 200] [--artifacts DIR]

A caption counts only if the whole generated sentence equals the ground truth, so a swapped color channel, a
wrong normalization, features in the wrong order or a position-id slip all show up as lost accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from graphs.families.own.config import get_preset
from graphs.demo.dataset import PROMPTS, decode_caption, heldout_seeds
from graphs.demo.render import render_seed
from graphs.manifest import Manifest
from graphs.families.own.model import MultimodalModel
from graphs.families.own.tokenizer import EOS, encode_chat, load_tokenizer, token_id
from serve_app.runtime.kv_runner import OrtDecoderRunner
from serve_app.runtime.ort_session import cpu_session

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo"
MAX_NEW_TOKENS = 32  # the longest caption of the grammar is 15 tokens with <|end|>


def heldout(n: int, image_size: int) -> tuple[np.ndarray, list[str]]:
    """(n,3,H,W) uint8 images and their captions, from the held-out seed range."""
    pairs = [render_seed(s, image_size) for s in heldout_seeds(n)]
    return np.stack([p for p, _ in pairs]), [c for _, c in pairs]


def accuracy(predicted: list[str], truth: list[str]) -> float:
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def reference_captions(model: MultimodalModel, tok, images: np.ndarray, prompt: str = PROMPTS[0]) -> list[str]:
    ids, eos = encode_chat(tok, [("user", prompt)]), token_id(tok, EOS)
    out = []
    for img in images:
        gen = model.generate_greedy(torch.from_numpy(img[None]), ids, MAX_NEW_TOKENS, eos_id=eos)
        out.append(decode_caption(tok, gen))
    return out


def onnx_captions(artifacts: Path, variant: str, images: np.ndarray, prompt: str = PROMPTS[0],
                  batch: int = 25) -> list[str]:
    """Greedy captions with the artifact's vision and decoder `variant`, `batch` sequences per decode step."""
    man = Manifest.read(artifacts)
    tok = load_tokenizer(artifacts / man.tokenizer_file)
    table = np.load(artifacts / man.decoder.embeddings.name)  # (V,D)
    vision = cpu_session(str(artifacts / man.graphs["vision"].variants[variant].file))
    decoder = OrtDecoderRunner(cpu_session(str(artifacts / man.graphs["decoder"].variants[variant].file)),
                               man.decoder, slots=batch, max_context=man.decoder.max_positions)
    prompt_emb = table[encode_chat(tok, [("user", prompt)])]  # (T,D)
    eos, out = set(man.decoder.eos_token_ids), []
    for lo in range(0, len(images), batch):
        feats = vision.run(None, {man.vision.io.pixels: images[lo:lo + batch]})[0]  # (b,P,D)
        first = [decoder.prefill(i, np.concatenate([f, prompt_emb])) for i, f in enumerate(feats)]
        tokens = [[int(np.argmax(lg))] for lg in first]
        lengths = np.full(len(feats), feats.shape[1] + len(prompt_emb))
        for _ in range(MAX_NEW_TOKENS - 1):
            if all(eos & set(t) for t in tokens):
                break
            logits = decoder.decode(len(tokens), table[[t[-1] for t in tokens]], lengths)  # (b,V)
            lengths += 1
            for t, lg in zip(tokens, logits):
                t.append(int(np.argmax(lg)))
        out += [decode_caption(tok, t) for t in tokens]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Exact-match caption accuracy of the demo captioner.")
    p.add_argument("--n", type=int, default=200, help="held-out images")
    p.add_argument("--weights", type=Path, default=ASSETS / "model.safetensors")
    p.add_argument("--tokenizer", type=Path, default=ASSETS / "tokenizer.json")
    p.add_argument("--artifacts", type=Path, help="built demo artifact dir: also score its cpu-fp32 and cpu-int8")
    a = p.parse_args(argv)
    from graphs.families.own.weights import load_model

    cfg = get_preset("demo")
    images, truth = heldout(a.n, cfg.vision.image_size)
    ref = reference_captions(load_model(cfg, a.weights), load_tokenizer(a.tokenizer), images)
    print(f"pytorch reference  {accuracy(ref, truth):7.2%}  ({a.n} held-out images)")
    for miss in [(r, t) for r, t in zip(ref, truth) if r != t][:5]:
        print(f"   got {miss[0]!r}, expected {miss[1]!r}")
    if a.artifacts:
        for variant in ("cpu-fp32", "cpu-int8"):
            got = onnx_captions(a.artifacts, variant, images)
            print(f"onnx {variant:13s} {accuracy(got, truth):7.2%}")


if __name__ == "__main__":
    main()
