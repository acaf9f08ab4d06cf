"""How well the demo captioner sees, on images it never trained on:

    python -m graphs.demo.evaluate [--checkpoint DIR] [--n 200] [--artifacts BUILT_DIR] [--write]

    in-distribution   training renderer, held-out seeds: exact match of the whole caption
    second renderer   graphs/demo/heldout_render.py (other drawing code, sides, palette, backgrounds): the share of
                      captions that name every shape's color and kind (`names_every_shape`), and exact match

Captions come from transformers' LlavaForConditionalGeneration loaded from the checkpoint (greedy), on pixels
resized as the preprocess stage resizes them; with --artifacts also from each CPU graph variant of a build, driven
by serving's own KV runner, one image at a time as sequential HTTP requests run. --write records the figures in
the checkpoint directory (eval.json), next to the weights they describe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from graphs.demo.dataset import (EOS, PAD, PROMPTS, decode_caption, heldout_seeds, model_pixels, prompt_ids)
from graphs.demo.heldout_render import eval_seeds, render_eval_seed
from graphs.demo.render import render_seed
from graphs.demo.scenes import COLORS, SHAPES
from graphs.demo.train import ASSETS, pixel_values

MAX_NEW_TOKENS = 24  # the longest caption of the grammar is 14 tokens with <|im_end|>
EVAL_FILE = "eval.json"


def in_distribution(n: int) -> tuple[list[np.ndarray], list[str]]:
    pairs = [render_seed(s) for s in heldout_seeds(n)]
    return [p for p, _ in pairs], [c for _, c in pairs]


def second_renderer(n: int) -> tuple[list[np.ndarray], list[str]]:
    pairs = [render_eval_seed(s) for s in eval_seeds(n)]
    return [p for p, _ in pairs], [c for _, c in pairs]


def shapes_named(caption: str) -> list[tuple[str, str]]:
    """The (color, kind) pairs a caption names, in order: "a red circle ... and a blue square ..." ->
    [(red, circle), (blue, square)]; "three green triangles" -> [(green, triangle)]."""
    words, out = caption.split(), []
    for a, b in zip(words, words[1:]):
        kind = b[:-1] if b.endswith("s") and b[:-1] in SHAPES else b
        if a in COLORS and kind in SHAPES:
            out.append((a, kind))
    return out


def names_every_shape(predicted: str, truth: str) -> bool:
    """Every shape of the truth named with its color and kind, and no other shape named."""
    return sorted(shapes_named(predicted)) == sorted(shapes_named(truth))


def exact(predicted: list[str], truth: list[str]) -> float:
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def shape_accuracy(predicted: list[str], truth: list[str]) -> float:
    return sum(names_every_shape(p, t) for p, t in zip(predicted, truth)) / len(truth)


def load_reference(checkpoint: Path):
    import torch
    from tokenizers import Tokenizer
    from transformers import LlavaForConditionalGeneration

    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, Tokenizer.from_file(str(checkpoint / "tokenizer.json"))


def reference_captions(model, tok, images: list[np.ndarray], prompt: str = PROMPTS[0], batch: int = 50) -> list[str]:
    """Greedy captions from transformers' generate; every row has the same prompt, so batches need no padding."""
    import torch

    ids = torch.tensor([prompt_ids(tok, prompt)])
    out = []
    for lo in range(0, len(images), batch):
        px = torch.from_numpy(np.stack([model_pixels(im) for im in images[lo:lo + batch]]))
        with torch.no_grad():
            gen = model.generate(input_ids=ids.repeat(len(px), 1), pixel_values=pixel_values(px),
                                 attention_mask=torch.ones(len(px), ids.shape[1], dtype=torch.long),
                                 do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                 eos_token_id=tok.token_to_id(EOS), pad_token_id=tok.token_to_id(PAD))
        out += [decode_caption(tok, row[ids.shape[1]:].tolist()) for row in gen]
    return out


def onnx_captions(artifacts: Path, variant: str, images: list[np.ndarray], prompt: str = PROMPTS[0],
                  decoder_variant: str | None = None) -> list[str]:
    """Greedy captions from a built artifact's vision `variant` and decoder `decoder_variant` (default: the same
    name), one image at a time; the decoder runs on its own KV cache dtype (an int8-cache variant's included)."""
    from tokenizers import Tokenizer

    from graphs.families.llava.driver import embed
    from mmcore.manifest import Manifest
    from mmcore.runtime.kv_runner import OrtDecoderRunner
    from mmcore.runtime.ort_session import cpu_session

    man = Manifest.read(artifacts)
    tok = Tokenizer.from_file(str(artifacts / man.tokenizer_file))
    table = np.load(artifacts / man.decoder.embeddings.name)  # (V,D)
    vision = cpu_session(str(artifacts / man.graphs["vision"].variants[variant].file))
    decoder = man.graphs["decoder"].variants[decoder_variant or variant]
    runner = OrtDecoderRunner(cpu_session(str(artifacts / decoder.file)), man.decoder, slots=1,
                              max_context=man.decoder.max_positions, cache=decoder.kv_cache)
    ids, image_id = prompt_ids(tok, prompt), tok.token_to_id(man.prompt.image_token)
    eos, out = set(man.decoder.eos_token_ids), []
    for im in images:
        feats = vision.run(None, {man.vision.io.pixels: model_pixels(im)[None]})[0][0]  # (P,D)
        tokens = [int(np.argmax(runner.prefill(0, embed(ids, table, image_id, feats))))]
        while tokens[-1] not in eos and len(tokens) < MAX_NEW_TOKENS:
            logits = runner.decode(1, table[[tokens[-1]]], np.array([len(ids) + len(tokens) - 1]))  # (1,V)
            tokens.append(int(np.argmax(logits[0])))
        out.append(decode_caption(tok, tokens))
    return out


def figures(captions_of, n: int) -> dict:
    """Both test sets through `captions_of(images) -> captions`."""
    images, truth = in_distribution(n)
    got = captions_of(images)
    second_images, second_truth = second_renderer(n)
    second = captions_of(second_images)
    misses = [(g, t) for g, t in zip(second, second_truth) if not names_every_shape(g, t)]
    return {"in_distribution_exact_match": exact(got, truth),
            "second_renderer_names_every_shape": shape_accuracy(second, second_truth),
            "second_renderer_exact_match": exact(second, second_truth),
            "images_per_set": n, "second_renderer_misses": misses[:10]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Caption accuracy of the demo captioner on held-out images.")
    p.add_argument("--checkpoint", type=Path, default=ASSETS)
    p.add_argument("--n", type=int, default=200, help="images per test set")
    p.add_argument("--artifacts", type=Path, help="a build of the checkpoint: also score its cpu-fp32, cpu-int8 and cpu-int8-kv8 decoders")
    p.add_argument("--write", action="store_true", help=f"record the figures in the checkpoint's {EVAL_FILE}")
    a = p.parse_args(argv)
    model, tok = load_reference(a.checkpoint)
    report = {"transformers": figures(lambda ims: reference_captions(model, tok, ims), a.n)}
    if a.artifacts:
        for variant, decoder in (("cpu-fp32", "cpu-fp32"), ("cpu-int8", "cpu-int8"), ("cpu-int8", "cpu-int8-kv8")):
            report[f"onnx {decoder}"] = figures(lambda ims: onnx_captions(a.artifacts, variant, ims,
                                                                          decoder_variant=decoder), a.n)
    for name, f in report.items():
        print(f"{name:18s} in-distribution exact {f['in_distribution_exact_match']:7.2%}   second renderer: "
              f"names every shape {f['second_renderer_names_every_shape']:7.2%}, exact "
              f"{f['second_renderer_exact_match']:7.2%}   ({a.n} images each)")
        for got, want in f["second_renderer_misses"][:5]:
            print(f"    got {got!r}, expected {want!r}")
    if a.write:
        (a.checkpoint / EVAL_FILE).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {a.checkpoint / EVAL_FILE}")


if __name__ == "__main__":
    main()
