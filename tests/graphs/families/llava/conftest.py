"""Tiny random LLaVA checkpoints written by transformers' save_pretrained, and one build of each per session.

    clip-llama    CLIP (class token dropped, second-to-last layer) + Llama, 4 heads over 2 KV heads, untied head,
                  one model.safetensors in the layout save_pretrained writes
    siglip-qwen2  SigLIP ("full", last layer) + Qwen2 (q/k/v biases), tied head, sharded with an index
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from graphs.build import build_artifacts  # noqa: E402
from graphs.families.llava.synthetic import SPECS, write_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def clip_llama(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip-llama", SPECS["clip-llama"])


@pytest.fixture(scope="session")
def siglip_qwen2(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "siglip-qwen2", SPECS["siglip-qwen2"],
                            max_shard_size="100KB")


@pytest.fixture(scope="session")
def built(tmp_path_factory, clip_llama, siglip_qwen2) -> dict:
    """name -> (artifact dir, Manifest), every variant of both checkpoints."""
    out = {}
    for name, ck in (("clip-llama", clip_llama), ("siglip-qwen2", siglip_qwen2)):
        target = tmp_path_factory.mktemp("llava_artifacts") / name
        out[name] = target, build_artifacts(ck, target)
    return out
