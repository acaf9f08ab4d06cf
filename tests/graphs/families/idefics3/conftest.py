"""Tiny random Idefics3 / SmolVLM checkpoints written by transformers' save_pretrained (model and processor), and
one build of each per session.

    tiny          Idefics3ForConditionalGeneration: 8x8 patches a view, pixel shuffle 2 (16 rows a view), Llama
                  4 heads over 2 KV heads, untied head; every variant built
    tiny-smolvlm  SmolVLMForConditionalGeneration (model_type smolvlm): shuffle 4 (4 rows a view), tied head;
                  the fp32 pair built
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from graphs.build import build_artifacts  # noqa: E402
from graphs.families.idefics3.synthetic import SPECS, write_checkpoint  # noqa: E402

FP32_PAIR = ["vision/cpu-fp32", "decoder/cpu-fp32"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "idefics3-tiny", SPECS["tiny"])


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "smolvlm-tiny", SPECS["tiny-smolvlm"])


@pytest.fixture(scope="session")
def built(tmp_path_factory, tiny, tiny_smolvlm) -> dict:
    """name -> (checkpoint, artifact dir, Manifest)."""
    out = {}
    for name, ck, variants in (("tiny", tiny, None), ("tiny-smolvlm", tiny_smolvlm, FP32_PAIR)):
        target = tmp_path_factory.mktemp("idefics3_artifacts") / name
        out[name] = ck, target, build_artifacts(ck, target, variants=variants)
    return out


@pytest.fixture
def broken(tmp_path, tiny):
    """broken(edit) -> a private copy of the tiny checkpoint after edit(directory)."""
    def make(edit) -> Path:
        dst = tmp_path / "ckpt"
        shutil.copytree(tiny, dst)
        edit(dst)
        return dst
    return make
