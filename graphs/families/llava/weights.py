"""The checkpoint's tensors under one canonical naming, every shape asserted against the config.

Two key layouts reach us (both are read):
    saved layout (what transformers 4.x wrote and 5.x still writes on save, reverting its conversion mapping)
        language_model.model.layers.0....  language_model.lm_head.weight
        vision_tower[.vision_model].encoder.layers.0....  multi_modal_projector.linear_1.weight
    transformers 5 module layout
        model.language_model.layers.0....  lm_head.weight
        model.vision_tower[.vision_model].encoder....  model.multi_modal_projector.linear_1.weight
Canonical: `text.*`, `lm_head.*`, `vision.*`, `projector.*`. Only the tensors `expected_shapes` names are read;
others of a known prefix are left alone on purpose: `vision.post_layernorm.*` and SigLIP's pooling `vision.head.*`
(LLaVA's features are hidden states, before either), vision layers past the deepest feature layer, and rotary
caches some exporters save (`rotary_emb.inv_freq`), which the graph recomputes from the config. A key of no known
prefix means a layout we do not know, and is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from graphs.families.llava.checkpoint import Checkpoint, CheckpointError

RENAMES = [
    (re.compile(r"^(model\.language_model|language_model\.model)\."), "text."),
    (re.compile(r"^(language_model\.)?lm_head\."), "lm_head."),
    (re.compile(r"^(model\.)?vision_tower\.(vision_model\.)?"), "vision."),
    (re.compile(r"^(model\.)?multi_modal_projector\."), "projector."),
    (re.compile(r"^(model\.)?image_newline$"), "image_newline"),  # the anyres families' newline row
]


def canonical(key: str) -> str | None:
    for pattern, repl in RENAMES:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return None


def _files(directory: Path) -> tuple[Path, dict[str, Path] | None]:
    """-> (the file that names tensors, {key: shard} for a sharded checkpoint or None)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{index}: weight_map: missing or not valid JSON") from None
        shards = {k: directory / v for k, v in weight_map.items()}
        for key, shard in shards.items():
            if not shard.is_file():
                raise CheckpointError(f"{index}: weight_map.{key}: shard {shard.name} not found")
        return index, shards
    single = directory / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{single}: file not found (nor model.safetensors.index.json)")
    return single, None


def expected_shapes(ck: Checkpoint) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor the graphs read, with its shape from config.json."""
    v, t = ck.vision, ck.text
    p = v.patch_size
    shapes = {"vision.embeddings.patch_embedding.weight": (v.hidden, 3, p, p),
              "vision.embeddings.position_embedding.weight": (v.positions, v.hidden)}
    if v.kind == "clip":
        shapes |= {"vision.embeddings.class_embedding": (v.hidden,), "vision.pre_layrnorm.weight": (v.hidden,),
                   "vision.pre_layrnorm.bias": (v.hidden,)}
    else:
        shapes["vision.embeddings.patch_embedding.bias"] = (v.hidden,)
    for i in range(v.layers):
        pre = f"vision.encoder.layers.{i}"
        for ln in ("layer_norm1", "layer_norm2"):
            shapes |= {f"{pre}.{ln}.weight": (v.hidden,), f"{pre}.{ln}.bias": (v.hidden,)}
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{pre}.self_attn.{proj}.weight": (v.hidden, v.hidden),
                       f"{pre}.self_attn.{proj}.bias": (v.hidden,)}
        shapes |= {f"{pre}.mlp.fc1.weight": (v.intermediate, v.hidden), f"{pre}.mlp.fc1.bias": (v.intermediate,),
                   f"{pre}.mlp.fc2.weight": (v.hidden, v.intermediate), f"{pre}.mlp.fc2.bias": (v.hidden,)}
    shapes |= {"projector.linear_1.weight": (t.hidden, v.hidden * len(v.feature_layers)),
               "projector.linear_2.weight": (t.hidden, t.hidden)}
    if ck.projector_bias:
        shapes |= {"projector.linear_1.bias": (t.hidden,), "projector.linear_2.bias": (t.hidden,)}
    shapes |= {"text.embed_tokens.weight": (t.vocab_size, t.hidden), "text.norm.weight": (t.hidden,)}
    if not t.tied:
        shapes["lm_head.weight"] = (t.vocab_size, t.hidden)
    q, kv = t.heads * t.head_dim, t.kv_heads * t.head_dim
    for i in range(t.layers):
        pre = f"text.layers.{i}"
        shapes |= {f"{pre}.input_layernorm.weight": (t.hidden,), f"{pre}.post_attention_layernorm.weight": (t.hidden,),
                   f"{pre}.self_attn.q_proj.weight": (q, t.hidden), f"{pre}.self_attn.k_proj.weight": (kv, t.hidden),
                   f"{pre}.self_attn.v_proj.weight": (kv, t.hidden), f"{pre}.self_attn.o_proj.weight": (t.hidden, q),
                   f"{pre}.mlp.gate_proj.weight": (t.intermediate, t.hidden),
                   f"{pre}.mlp.up_proj.weight": (t.intermediate, t.hidden),
                   f"{pre}.mlp.down_proj.weight": (t.hidden, t.intermediate)}
        if t.qkv_bias:
            shapes |= {f"{pre}.self_attn.q_proj.bias": (q,), f"{pre}.self_attn.k_proj.bias": (kv,),
                       f"{pre}.self_attn.v_proj.bias": (kv,)}
    return shapes


def load_weights(ck: Checkpoint, extra: dict[str, tuple[int, ...]] | None = None, rename=canonical,
                 shapes=expected_shapes) -> dict[str, np.ndarray]:
    """{canonical name: float32 array} for exactly the tensors `shapes(ck)` names and `extra` (a family's own
    tensors, canonical name -> shape); one-line errors otherwise. `rename` and `shapes`: another family's key
    mapping and tensors over the same reading (idefics3: its connector instead of the projector).

    Vision layers past the deepest feature layer are never read: the graph does not run them.
    """
    named_in, shards = _files(ck.directory)
    expected = shapes(ck) | (extra or {})
    sources: dict[str, tuple[Path, str]] = {}
    keys = shards.items() if shards is not None else [(k, named_in) for k in _keys(named_in)]
    for key, path in keys:
        name = rename(key)
        if name is None:
            raise CheckpointError(f"{named_in}: {key}: not a LLaVA tensor name (unknown layout)")
        if name in expected:
            sources[name] = (path, key)
    missing = [n for n in expected if n not in sources]
    if missing:
        raise CheckpointError(f"{named_in}: {missing[0]}: tensor missing ({len(missing)} missing in all)")
    out: dict[str, np.ndarray] = {}
    for path in sorted({p for p, _ in sources.values()}):
        with _open(path) as f:
            for name, (p, key) in sources.items():
                if p != path:
                    continue
                shape = tuple(f.get_slice(key).get_shape())
                if shape != expected[name]:
                    raise CheckpointError(f"{path}: {key}: shape {list(shape)}, config.json implies "
                                          f"{list(expected[name])}")
                out[name] = _as_float32(f.get_tensor(key))
    if ck.text.tied:
        out["lm_head.weight"] = out["text.embed_tokens.weight"]
    return out


def _open(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def _keys(path: Path) -> list[str]:
    with _open(path) as f:
        return list(f.keys())


def _as_float32(t) -> np.ndarray:
    """bf16/fp16/fp32 torch tensor -> float32 numpy (numpy has no bfloat16, so go through torch)."""
    return t.float().numpy()
