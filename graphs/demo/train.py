"""Train the demo captioner, a tiny LLaVA checkpoint: `python -m graphs.demo.train --out graphs/assets/demo-llava`.

The model is transformers' own LlavaForConditionalGeneration (a CLIP vision tower + a Llama decoder with 4 query
heads over 2 KV heads), trained from its seeded init on training-renderer scenes (graphs/demo/render.py) and
written with `save_pretrained` plus tokenizer.json, tokenizer_config.json, chat_template.jinja and
preprocessor_config.json: a checkpoint directory like any other, which the LLaVA family builds
(`mmserve build --hf DIR`, or the `demo` preset, which names the shipped one).

Reproducible on one machine: the data is a pure function of the step (step s renders seeds s*B .. s*B+B-1 of the
training range), the init is seeded, and torch runs deterministic CPU kernels on one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from graphs.demo.dataset import (BOS, CHAT_TEMPLATE, EOS, IMAGE_SIZE, IMAGE_TOKEN, PAD, PATCH_SIZE, PROMPTS,
                                 TRAIN_SEEDS_END, VOCAB_SIZE, build_tokenizer, make_batch)
from graphs.demo.render import render_seed

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo-llava"
SEED = 0
DEFAULT_STEPS = 1000  # stage 1; the shipped weights add a second stage (docs/demo.md)
DEFAULT_BATCH = 32
# One thread: on 2 cores shared with other work, torch's 2-thread kernels stalled on each other.
DEFAULT_THREADS = 1
MAX_POSITIONS = 256  # 64 image features + ~12 prompt tokens + a caption of <= 16 leave room for a longer chat
# CLIP's normalization, what a CLIPImageProcessor ships; folded into the vision graph at build time.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": IMAGE_SIZE},
             "do_center_crop": True, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "resample": 3,
             "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
             "image_std": list(CLIP_STD), "do_convert_rgb": True}


def llava_config():
    """Dims: 64 px / 8 px patches = 64 features; widths 128 keep a training step well under a second on one core."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="quick_gelu",
                              projection_dim=128)
    text = LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_POSITIONS,
                       rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    # the last layer's patch features (CLS dropped): no unused tower layer to ship or run
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=VOCAB_SIZE - 1,
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", tie_word_embeddings=False)


def training_seeds(step: int, batch_size: int) -> list[int]:
    seeds = list(range(step * batch_size, (step + 1) * batch_size))
    if seeds[-1] >= TRAIN_SEEDS_END:
        raise ValueError(f"step {step} would train on held-out seeds (>= {TRAIN_SEEDS_END})")
    return seeds


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def pixel_values(pixels):
    """(B,3,S,S) uint8 -> what CLIPImageProcessor would give: rescale 1/255, then mean/std."""
    import torch

    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def save_checkpoint(model, tok, out: Path) -> None:
    """The directory `mmserve build --hf` reads: save_pretrained's files plus tokenizer, template, processor."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": EOS, "pad_token": PAD,
        "extra_special_tokens": {"image_token": IMAGE_TOKEN}, "chat_start_token": BOS,
        "model_max_length": MAX_POSITIONS}, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "preprocessor_config.json").write_text(json.dumps(PROCESSOR, indent=2) + "\n")


def train(out: Path, steps: int, batch_size: int, lr: float, threads: int, init: Path | None = None,
          first_step: int = 0, log_every: int = 50) -> float:
    """-> training seconds. `init` continues from an earlier checkpoint; `first_step` then moves the data on, so a
    second stage sees no image of the first."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(SEED)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    tok = build_tokenizer()
    model = (LlavaForConditionalGeneration.from_pretrained(init, dtype=torch.float32) if init
             else LlavaForConditionalGeneration(llava_config())).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    start = time.perf_counter()
    for step in range(steps):
        seeds = training_seeds(first_step + step, batch_size)
        examples = [render_seed(s) for s in seeds]
        pixels, ids, labels = make_batch(tok, [e[0] for e in examples], [e[1] for e in examples],
                                         [PROMPTS[s % len(PROMPTS)] for s in seeds])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=min(100, steps // 10))
        loss = model(input_ids=ids, pixel_values=pixel_values(pixels), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            el = time.perf_counter() - start
            eta = el / (step + 1) * (steps - step - 1)
            print(f"step {step + 1:5d}/{steps}  loss {loss.item():.4f}  {el:6.0f}s elapsed  ~{eta:4.0f}s left",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    save_checkpoint(model.eval(), tok, out)
    print(f"wrote {out} in {seconds:.0f}s of training", file=sys.stderr)
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ASSETS)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--init", type=Path, help="continue from this checkpoint (a second stage) instead of the seeded init")
    p.add_argument("--first-step", type=int, default=0, help="data position: a second stage continues the first's")
    a = p.parse_args(argv)
    train(a.out, a.steps, a.batch_size, a.lr, a.threads, a.init, a.first_step)


if __name__ == "__main__":
    main()
