"""OrtDecoderRunner.prefill_rows on a LLaVA decoder (Qwen2: rotary inside GroupQueryAttention, positions taken from
seqlens_k, 4 heads over 2 KV heads), fp32 graph: right-padded fresh rows of different lengths in one call cache
what each prompt prefilled alone does, bit for bit (the next decode's logits); chunks over cached prefixes of
different lengths do too, to float rounding (a chunk cut changes the GEMMs' shapes, as the engine's staged path
always has)."""

from __future__ import annotations

import numpy as np
import pytest

from graphs.families.base import Source
from graphs.families.llava import parity
from graphs.families.llava.decoder_graph import build_decoder
from graphs.families.llava.driver import decoder_spec
from graphs.families.llava.family import FAMILY
from mmcore.runtime.kv_runner import OrtDecoderRunner


@pytest.fixture(scope="module")
def fp32_runners(siglip_qwen2):
    loaded = FAMILY.load(Source(siglip_qwen2.name, directory=siglip_qwen2))
    proto = build_decoder(loaded.ck, loaded.weights).SerializeToString()
    spec = decoder_spec(loaded.ck)
    return lambda: OrtDecoderRunner(parity.session(proto), spec, 4, 64), spec.hidden_size


def _prompts(width):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((n, width)).astype(np.float32) * 0.05 for n in (6, 19, 33, 2)]


def _next_logits(runner, prompts) -> np.ndarray:
    last = np.stack([p[-1] for p in prompts])
    return runner.decode(len(prompts), last, np.array([len(p) - 1 for p in prompts], np.int32)).copy()


def _alone(make, prompts) -> np.ndarray:
    alone = make()
    for slot, p in enumerate(prompts):
        alone.prefill(slot, p[:-1])
    return _next_logits(alone, prompts)


def test_fresh_rows_of_different_lengths_in_one_call(fp32_runners):
    make, width = fp32_runners
    prompts = _prompts(width)
    ragged = make()
    ragged.prefill_rows(0, [p[:-1] for p in prompts], [0] * len(prompts))  # 5, 18, 32, 1: padded to 32
    np.testing.assert_array_equal(_next_logits(ragged, prompts), _alone(make, prompts))


def test_chunks_after_cached_prefixes_of_different_lengths(fp32_runners):
    make, width = fp32_runners
    prompts = _prompts(width)
    alone = make()
    for slot, p in enumerate(prompts):
        alone.prefill(slot, p[:-1])
    ragged = make()
    ragged.prefill_rows(0, [prompts[0][:4], prompts[1][:11], prompts[2][:20]], [0, 0, 0])  # right-padded to 20
    ragged.prefill_rows(3, [prompts[3][:1]], [0])
    for slot, cut in ((0, 4), (1, 11), (2, 20)):
        ragged.prefill_rows(slot, [prompts[slot][cut:-1]], [cut])
    got, want = _next_logits(ragged, prompts), _next_logits(alone, prompts)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()
