"""PyTorch reference model: the ground truth every ONNX variant is checked against.

    pixels (B,3,H,W) uint8
      -> normalize -> patchify (B,P,3*p*p) -> Linear -> + pos -> [pre-LN block] x L -> LN -> Linear(proj)
      -> image features (B,P,Dd)
    [image features ; wte[prompt ids]] (B,S,Dd) -> + wpe[positions] -> [pre-LN block] x L -> LN -> lm_head -> logits

The patch embedding is a Linear over flattened patches (equal to a stride-p Conv2d), because that is the form the
ONNX graphs use: a reshape + MatMul is fast on every EP, where ConvInteger is slow on the CPU EP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from graphs.families.own.config import DecoderConfig, ModelConfig, VisionConfig

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (B,nh,T,hs) keys and values


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B,C,H,W) -> (B, H/p * W/p, C*p*p), patches in row-major order, each flattened as (C,p,p)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B,h,w,C,p,p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)  # packed [q; k; v] along the output dim
        self.out = nn.Linear(width, width)

    def forward(self, x, causal: bool, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))  # (B,nh,S,hs)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        t = k.shape[2]
        mask = None
        if causal:  # query i sits at absolute position t-s+i and sees keys 0..t-s+i
            mask = torch.ones(s, t, dtype=torch.bool, device=x.device).tril(diagonal=t - s)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B,nh,S,hs)
        return self.out(y.transpose(1, 2).reshape(b, s, d)), (k, v)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int, gelu: str, eps: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        self.fc = nn.Linear(width, mlp_ratio * width)
        self.proj = nn.Linear(mlp_ratio * width, width)
        self.gelu = gelu  # "none" = exact erf GELU (ViT), "tanh" = GPT-2's approximation

    def forward(self, x, causal: bool, past=None):
        a, present = self.attn(self.ln1(x), causal, past)
        x = x + a
        x = x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate=self.gelu))
        return x, present


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig, out_width: int, eps: float):
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Linear(cfg.patch_dim, cfg.width)
        self.pos = nn.Parameter(torch.zeros(cfg.num_patches, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, "none", eps) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.width, eps=eps)
        self.proj = nn.Linear(cfg.width, out_width)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B,3,H,W) uint8 -> image features (B,P,Dd) float32."""
        x = (pixels.float() / 255.0 - self.mean) / self.std
        x = self.patch(patchify(x, self.cfg.patch_size)) + self.pos  # (B,P,Dv)
        for blk in self.blocks:
            x, _ = blk(x, causal=False)
        return self.proj(self.ln(x))


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, eps: float):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.width)
        self.wpe = nn.Embedding(cfg.max_positions, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, "tanh", eps) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.width, eps=eps)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)

    def forward(self, inputs_embeds, position_ids, past: KVCache | None = None):
        """inputs_embeds (B,S,D), position_ids (B,S) -> logits (B,S,V), present cache."""
        x = inputs_embeds + self.wpe(position_ids)
        present = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, causal=True, past=None if past is None else past[i])
            present.append(kv)
        return self.lm_head(self.ln(x)), present


class MultimodalModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision, cfg.decoder.width, cfg.layer_norm_eps)
        self.decoder = Decoder(cfg.decoder, cfg.layer_norm_eps)

    @classmethod
    def seeded(cls, cfg: ModelConfig) -> "MultimodalModel":
        """Random weights, reproducible from cfg.seed (GPT-2 style init: N(0, 0.02), residual outs scaled)."""
        gen = torch.Generator().manual_seed(cfg.seed)
        model = cls(cfg)
        n_layers = max(cfg.vision.layers, cfg.decoder.layers)
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln" in name or name.startswith(("vision.ln", "decoder.ln")):
                nn.init.zeros_(p) if name.endswith(".bias") else nn.init.ones_(p)
                continue
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("attn.out.weight", "proj.weight")) else 0.02
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        return model.eval()

    def embed_prompt(self, image_features: torch.Tensor | None, prompt_ids: torch.Tensor) -> torch.Tensor:
        """[image features ; token embeddings] (B,S,D): the decoder input for a prompt."""
        tok = self.decoder.wte(prompt_ids)
        return tok if image_features is None else torch.cat([image_features, tok], dim=1)

    @torch.no_grad()
    def generate_greedy(self, pixels: torch.Tensor | None, prompt_ids: list[int], max_new_tokens: int,
                        eos_id: int | None = None) -> list[int]:
        """Greedy decoding with a KV cache, one sequence: the token-identity reference for served outputs."""
        feats = self.vision(pixels) if pixels is not None else None
        x = self.embed_prompt(feats, torch.tensor([prompt_ids]))
        pos = torch.arange(x.shape[1]).unsqueeze(0)
        logits, past = self.decoder(x, pos)
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if nxt == eos_id:
                break
            step_pos = torch.tensor([[pos[0, -1] + 1]])
            logits, past = self.decoder(self.decoder.wte(torch.tensor([[nxt]])), step_pos, past)
            pos = step_pos
        return out
