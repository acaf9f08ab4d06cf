"""Tiny random LLaVA-NeXT and LLaVA-OneVision checkpoints written by transformers' save_pretrained
(graphs/families/llava_next/synthetic.py), and one build of each per session.

    next-clip-llama          CLIP ("default") + Llama, NeXT pinpoints, one model.safetensors
    onevision-siglip-qwen2   SigLIP ("full") + Qwen2, tied head, every grid up to 3x3, anyres_max_4, sharded
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from graphs.build import build_artifacts  # noqa: E402
from graphs.families.llava.synthetic import write_checkpoint  # noqa: E402
from graphs.families.llava_next.synthetic import SPECS  # noqa: E402

NAMES = tuple(SPECS)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("anyres_ckpt")
    return {name: write_checkpoint(root / name, SPECS[name], max_shard_size="100KB" if "onevision" in name else None)
            for name in NAMES}


@pytest.fixture(scope="session")
def built(tmp_path_factory, checkpoints) -> dict:
    """name -> (artifact dir, Manifest), every variant."""
    root = tmp_path_factory.mktemp("anyres_artifacts")
    return {name: (root / name, build_artifacts(ck, root / name)) for name, ck in checkpoints.items()}
