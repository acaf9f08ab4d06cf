"""Train the `demo` captioner: `python -m graphs.demo.train --out graphs/assets/demo`.

Seeded and reproducible on one machine: the data is a pure function of the step (each step renders the seeds
step*B .. step*B+B-1 of the training range), the weights start from the preset's seeded init, and torch runs
deterministic CPU kernels. Writes model.safetensors and tokenizer.json, which the graph build consumes like any
other weights file.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from graphs.families.own.config import get_preset
from graphs.demo.dataset import HELDOUT_START, IGNORE, PROMPTS, demo_tokenizer, make_batch
from graphs.families.own.model import MultimodalModel
from graphs.families.own.weights import load_model, save_weights


DEFAULT_STEPS = 1500
DEFAULT_BATCH = 64
# One thread: on 2 cores shared with other work, torch's 2-thread kernels stalled on each other (measured 6x slower).
DEFAULT_THREADS = 1


def training_seeds(step: int, batch_size: int) -> list[int]:
    """The images of one step: consecutive seeds, never reaching the held-out range."""
    seeds = list(range(step * batch_size, (step + 1) * batch_size))
    if seeds[-1] >= HELDOUT_START:
        raise ValueError(f"step {step} would train on held-out seeds (>= {HELDOUT_START})")
    return seeds


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_loss(model: MultimodalModel, batch) -> torch.Tensor:
    feats = model.vision(batch.pixels)  # (B,P,D)
    x = model.embed_prompt(feats, batch.text_ids)  # (B,P+T,D)
    pos = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    logits, _ = model.decoder(x, pos)  # (B,P+T,V)
    text_logits = logits[:, feats.shape[1]:]  # (B,T,V): position j predicts labels[:, j]
    return F.cross_entropy(text_logits.reshape(-1, text_logits.shape[-1]), batch.labels.reshape(-1),
                           ignore_index=IGNORE)


def train(out: Path, steps: int, batch_size: int, lr: float, threads: int, init: Path | None = None,
          first_step: int = 0, log_every: int = 50) -> None:
    """`init` continues from earlier weights; `first_step` then moves the data on, so no image is seen twice."""
    cfg = get_preset("demo")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    tok = demo_tokenizer(cfg.decoder.vocab_size)
    model = (load_model(cfg, init) if init else MultimodalModel.seeded(cfg)).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    size = cfg.vision.image_size
    start = time.perf_counter()
    for step in range(steps):
        batch = make_batch(tok, training_seeds(first_step + step, batch_size), size, prompt_of=lambda s: PROMPTS[s % len(PROMPTS)])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=min(100, steps // 10))
        loss = batch_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            el = time.perf_counter() - start
            eta = el / (step + 1) * (steps - step - 1)
            print(f"step {step + 1:5d}/{steps}  loss {loss.item():.4f}  {el:6.0f}s elapsed  ~{eta:4.0f}s left",
                  file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model.eval(), out / "model.safetensors")
    tok.save(str(out / "tokenizer.json"))
    print(f"wrote {out}/model.safetensors and tokenizer.json in {time.perf_counter() - start:.0f}s", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "demo")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--init", type=Path, help="start from these weights (a second stage) instead of the seeded init")
    p.add_argument("--first-step", type=int, default=0, help="data position: a second stage continues the first's")
    a = p.parse_args(argv)
    train(a.out, a.steps, a.batch_size, a.lr, a.threads, a.init, a.first_step)


if __name__ == "__main__":
    main()
