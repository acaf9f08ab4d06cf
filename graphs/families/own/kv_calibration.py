"""The own family's KV cache calibration: its contexts and its reference's K and V (graphs/emit/kv_quant.py turns
them into static per-channel scales, and says why absmax).

Calibration (the reference's own K and V, post-projection: positions are learned and added before the blocks, so
there is no rotary to apply first):

    CALIBRATION_CONTEXTS seeded contexts, [image features ; prompt of 4..40 tokens ; greedy continuation] and, every
    other one, the same without an image (text-only requests: their first positions have other K/V ranges)
      -> Decoder.forward -> per layer present (B,nh,T,hs) keys and values
      -> kv_quant.KvAbsmax: absmax over every position of every context, per (layer, head, channel)
      -> kv_quant.from_absmax: scale = absmax / qmax

The seeds are not the parity gate's, so the gate measures held-out contexts.
"""

from __future__ import annotations

import weakref

import numpy as np

from graphs.emit import kv_quant
from graphs.emit.kv_quant import (CALIBRATION_CONTEXTS, CALIBRATION_SEED, CONTINUATION_TOKENS, QMAX,  # noqa: F401
                                  KvCacheQuant)
from mmcore.manifest import KvCacheEntry

SOURCE = "the reference's K and V"


_ABSMAX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> kv_quant.KvAbsmax: calibrate once a build


def _contexts(model) -> list:
    """Seeded (1,S,D) decoder inputs: image features + prompt + the reference's own greedy continuation."""
    import torch  # the registry imports this module; a cache-hit build should not pay for torch

    cfg, rng = model.cfg, np.random.default_rng(CALIBRATION_SEED)
    size, v = cfg.vision.image_size, cfg.decoder.vocab_size
    room = cfg.decoder.max_positions - cfg.num_image_tokens - CONTINUATION_TOKENS
    out = []
    for i in range(CALIBRATION_CONTEXTS):
        pixels = torch.from_numpy(rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8))
        prompt = rng.integers(0, v, int(rng.integers(4, max(5, min(40, room))))).tolist()
        if i % 2:  # text-only requests too: their first positions carry other K/V ranges than image features do
            pixels = None
        tokens = model.generate_greedy(pixels, prompt, CONTINUATION_TOKENS)
        with torch.no_grad():
            feats = None if pixels is None else model.vision(pixels)
            out.append(model.embed_prompt(feats, torch.tensor([prompt + tokens])))
    return out


def kv_absmax(model) -> tuple[np.ndarray, np.ndarray]:
    """Per (layer, head, channel) absmax of K and V over the calibration contexts: two (L,nh,hs) arrays."""
    import torch

    if model in _ABSMAX:
        return _ABSMAX[model].k, _ABSMAX[model].v
    d = model.cfg.decoder
    acc = kv_quant.KvAbsmax(d.layers, d.heads, d.head_dim)
    with torch.no_grad():
        for x in _contexts(model):
            _, present = model.decoder(x, torch.arange(x.shape[1])[None])
            for i, (k, v) in enumerate(present):  # (1,nh,T,hs)
                acc.update(i, k.numpy(), v.numpy())
    _ABSMAX[model] = acc
    return acc.k, acc.v


def calibrate(model, bits: int) -> KvCacheQuant:
    """The KV cache scheme of `bits` with scales calibrated on `model`'s own K and V."""
    kv_absmax(model)
    return kv_quant.from_absmax(_ABSMAX[model], bits, method(bits))


def method(bits: int) -> str:
    """How the scales of a `bits` cache are calibrated, in words (recorded in the manifest)."""
    return kv_quant.method(bits, SOURCE)


def cache_entry(bits: int) -> KvCacheEntry:
    """What the manifest records of a `bits` cache: the runner allocates its dtype and last dim."""
    return kv_quant.cache_entry(bits, method(bits))
