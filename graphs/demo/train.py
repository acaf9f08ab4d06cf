"""Train the demo captioner, a tiny LLaVA checkpoint: `python -m graphs.demo.train --out graphs/assets/demo-llava`.

The model is transformers' own LlavaForConditionalGeneration (a CLIP vision tower + a Llama decoder with 4 query
heads over 2 KV heads), trained from its seeded init on training-renderer scenes (graphs/demo/render.py) and
written with `save_pretrained` plus tokenizer.json, tokenizer_config.json, chat_template.jinja and
preprocessor_config.json: a checkpoint directory like any other, which the LLaVA family builds
(`mmserve build --hf DIR`, or the `demo` preset, which names the shipped one).

Reproducible on one machine: the data is a pure function of the step (step s renders seeds s*B .. s*B+B-1 of the
training range), the init is seeded, and torch runs deterministic CPU kernels.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

from graphs.demo.dataset import (BOS, CHAT_TEMPLATE, EOS, IGNORE, IMAGE_SIZE, IMAGE_TOKEN, PAD, PATCH_SIZE, PROMPTS,
                                 TRAIN_SEEDS_END, VOCAB_SIZE, build_tokenizer, make_batch, model_pixels)
from graphs.demo.render import LOCAL_CLASSES, ROLE_CLASSES, render_labelled_seed
from graphs.demo.scenes import COLORS, SHAPES, TRAINING_MIX

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo-llava"
SEED = 0
DEFAULT_STEPS = 5000
DEFAULT_BATCH = 24
DEFAULT_LR = 2.5e-3
WARMUP = 100
MARGIN = 8.0  # the hinge's target logit margin per caption token
HINGE_WEIGHT = 0.1
AUX_WEIGHT = 1.0
# Two torch threads and one rendering process on 2 cores: 0.21 s a step against 0.24 s on one thread (the renderer
# needs ~35% of a core and fits beside them), so 5000 steps fit the 20 minutes. The loss is the same either
# way; deterministic kernels, whatever the thread count.
DEFAULT_THREADS = 2
DEFAULT_RENDER_WORKERS = 1
PREFETCH_STEPS = 4  # steps rendered ahead per worker: bounded, so a fast renderer never piles up batches
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


def render_step(step: int, batch_size: int) -> list[tuple]:
    """The step's examples, their pixels already at the model's size (HWC, what model_pixels resizes to: make_batch
    passes them through unchanged), so a worker ships 12 KB an image instead of up to 3 MB."""
    out = []
    for seed in training_seeds(step, batch_size):
        pixels, caption, *targets = render_labelled_seed(seed, TRAINING_MIX)
        out.append((model_pixels(pixels).transpose(1, 2, 0), caption, *targets))
    return out


def rendered_steps(steps: int, batch_size: int, workers: int):
    """Yield each step's examples in order; with workers > 0 rendered ahead in spawned processes. The data is a
    pure function of the step either way, so the run is the same whatever `workers` is."""
    if workers == 0:
        yield from (render_step(step, batch_size) for step in range(steps))
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        ahead: collections.deque = collections.deque()
        for step in range(steps):
            while len(ahead) < workers * PREFETCH_STEPS and step + len(ahead) < steps:
                ahead.append(pool.apply_async(render_step, (step + len(ahead), batch_size)))
            yield ahead.popleft().get()


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


def sincos_positions(model) -> None:
    """Start the vision tower's learned position embeddings from 2-D sine-cosine codes of each patch's row and
    column (CLS: zeros), as MAE does: attention can relate neighbouring patches from the first step instead of
    discovering the grid. Still trained; the checkpoint format is unchanged."""
    import torch

    emb = next(m for n, m in model.named_modules() if n.endswith("embeddings.position_embedding"))
    n, width = emb.weight.shape
    grid = int(round(math.sqrt(n - 1)))
    quarter = width // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")
    codes = [f(axis.reshape(-1, 1) * freq) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    with torch.no_grad():
        emb.weight.zero_()
        emb.weight[1:] = torch.cat(codes, 1) * 0.5


def caption_loss(logits, labels, margin: float):
    """Cross-entropy on the caption tokens plus a hinge on their logit margin (target minus the best other logit)
    below `margin`: cross-entropy alone stops pushing once a token is likely, the hinge keeps pushing the hardest
    ones until their margin leaves room for int8 rounding (docs/demo.md, the margin criterion)."""
    import torch
    import torch.nn.functional as F

    logits, labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)  # predict the next
    keep = labels != IGNORE
    logits, labels = logits[keep], labels[keep]
    ce = F.cross_entropy(logits, labels)
    target = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(labels, logits.shape[-1]).bool(), float("-inf")).max(1).values
    return ce, torch.relu(margin - (target - other)).mean()


def train(out: Path, steps: int, batch_size: int, lr: float, threads: int, log_every: int = 50,
          render_workers: int = DEFAULT_RENDER_WORKERS) -> float:
    """-> training seconds. One run from the seeded init: the data is a pure function of the step."""
    import torch
    import torch.nn.functional as F
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(SEED)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    tok = build_tokenizer()
    model = LlavaForConditionalGeneration(llava_config()).train()
    width = model.config.vision_config.hidden_size
    # The auxiliary per-patch heads (training only, not saved): which shape kind and color covers each patch.
    # They give the vision tower a dense signal from the first step instead of one caption word per shape.
    aux = torch.nn.Linear(width, 1 + len(SHAPES) + 1 + len(COLORS) + LOCAL_CLASSES + ROLE_CLASSES)
    sincos_positions(model)
    features = {}
    projector = next(m for n, m in model.named_modules() if n.endswith("multi_modal_projector"))
    projector.register_forward_pre_hook(lambda _m, args: features.__setitem__("patches", args[0]))
    params = list(model.parameters()) + list(aux.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    start = time.perf_counter()
    for step, examples in enumerate(rendered_steps(steps, batch_size, render_workers)):
        seeds = training_seeds(step, batch_size)
        pixels, ids, labels = make_batch(tok, [e[0] for e in examples], [e[1] for e in examples],
                                         [PROMPTS[s % len(PROMPTS)] for s in seeds])
        kinds = torch.from_numpy(np.stack([e[2] for e in examples]))  # (B,64)
        colors = torch.from_numpy(np.stack([e[3] for e in examples]))  # (B,64)
        local = torch.from_numpy(np.stack([e[4] for e in examples]))  # (B,64)
        roles = torch.from_numpy(np.stack([e[5] for e in examples]))  # (B,64)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=min(WARMUP, steps // 10))
        logits = model(input_ids=ids, pixel_values=pixel_values(pixels)).logits
        ce, hinge = caption_loss(logits, labels, MARGIN)
        patch = aux(features["patches"])  # (B,64,4+6+5+5)
        k, c, b = 1 + len(SHAPES), 1 + len(COLORS), LOCAL_CLASSES
        aux_loss = (F.cross_entropy(patch[..., :k].reshape(-1, k), kinds.reshape(-1))
                    + F.cross_entropy(patch[..., k:k + c].reshape(-1, c), colors.reshape(-1))
                    + F.cross_entropy(patch[..., k + c:k + c + b].reshape(-1, b), local.reshape(-1))
                    + F.cross_entropy(patch[..., k + c + b:].reshape(-1, ROLE_CLASSES), roles.reshape(-1)))
        loss = ce + HINGE_WEIGHT * hinge + AUX_WEIGHT * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            el = time.perf_counter() - start
            eta = el / (step + 1) * (steps - step - 1)
            print(f"step {step + 1:5d}/{steps}  caption ce {ce.item():.4f}  hinge {hinge.item():.4f}  patches "
                  f"{aux_loss.item():.4f}  {el:6.0f}s elapsed  ~{eta:4.0f}s left", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    save_checkpoint(model.eval(), tok, out)
    print(f"wrote {out} in {seconds:.0f}s of training", file=sys.stderr)
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ASSETS)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--render-workers", type=int, default=DEFAULT_RENDER_WORKERS,
                   help="processes rendering batches ahead (0: render in the training loop)")
    a = p.parse_args(argv)
    train(a.out, a.steps, a.batch_size, a.lr, a.threads, render_workers=a.render_workers)


if __name__ == "__main__":
    main()
