"""OrtDecoderRunner.prefill_rows on the real tiny decoder: prompts of different lengths in one right-padded call,
and chunks continuing cached prefixes of different lengths, cache what each prompt prefilled alone caches, so the
next decode step gives the same logits (bit for bit on the variants whose rows never interact: fp32, row-wise int8
over the int8 cache with static scales). The ORT contract the engine relies on is pinned too: a batch of chunks over
a cached past is refused (ORT 1.31's CPU GroupQueryAttention), one such chunk per call is fine."""

import numpy as np
import pytest

from graphs.families.own.config import get_preset
from mmcore.manifest import Manifest
from mmcore.runtime.kv_runner import OrtDecoderRunner
from mmcore.runtime.ort_session import cpu_session

TINY = get_preset("tiny")
LENGTHS = [5, 17, 1, 40, 9]  # one prompt a row; the 1-position prompt has nothing before its last position


def _runner(artifacts, variant: str, slots: int = 6) -> OrtDecoderRunner:
    manifest = Manifest.read(artifacts)
    v = manifest.graphs["decoder"].variants[variant]
    return OrtDecoderRunner(cpu_session(str(artifacts / v.file), 1), manifest.decoder, slots, 64, cache=v.kv_cache)


def _prompts() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((n, TINY.decoder.width)).astype(np.float32) for n in LENGTHS]


def _last_step(runner, prompts) -> np.ndarray:
    """Every row's last prompt position through one decode call -> (n,V), as the engine's first token."""
    last = np.stack([p[-1] for p in prompts])
    return runner.decode(len(prompts), last, np.array([len(p) - 1 for p in prompts], np.int32)).copy()


def _alone(artifacts, variant, prompts) -> np.ndarray:
    runner = _runner(artifacts, variant)
    for slot, p in enumerate(prompts):
        if len(p) > 1:
            runner.prefill(slot, p[:-1])
    return _last_step(runner, prompts)


@pytest.mark.parametrize("variant", ["cpu-fp32", "cpu-int8-rowwise-kv8"])
def test_fresh_rows_of_different_lengths_in_one_call_cache_what_each_alone_does(tiny_artifacts_dir, variant):
    prompts = _prompts()
    runner = _runner(tiny_artifacts_dir, variant)
    runner.prefill_rows(0, [prompts[0][:-1], prompts[1][:-1]], [0, 0])  # 4 and 16 positions: one call
    runner.prefill_rows(3, [prompts[3][:-1], prompts[4][:-1]], [0, 0])  # 39 and 8
    np.testing.assert_array_equal(_last_step(runner, prompts), _alone(tiny_artifacts_dir, variant, prompts))


@pytest.mark.parametrize("variant", ["cpu-fp32", "cpu-int8-rowwise-kv8"])
def test_chunks_after_cached_prefixes_of_different_lengths(tiny_artifacts_dir, variant):
    """Rows cut at different points: the first chunks of all rows in one ragged call, then each row's continuation
    over its own cached prefix (3, 10, 25 and 8 positions), one call each."""
    prompts = _prompts()
    runner = _runner(tiny_artifacts_dir, variant)
    cuts = {0: 3, 1: 10, 3: 25, 4: 8}
    runner.prefill_rows(0, [prompts[0][:3], prompts[1][:10]], [0, 0])
    runner.prefill_rows(3, [prompts[3][:25], prompts[4][:8]], [0, 0])
    for slot, cut in cuts.items():
        if len(prompts[slot]) - 1 > cut:
            runner.prefill_rows(slot, [prompts[slot][cut:-1]], [cut])
    np.testing.assert_array_equal(_last_step(runner, prompts), _alone(tiny_artifacts_dir, variant, prompts))


def test_the_kernel_refuses_a_batch_of_chunks_over_a_past(tiny_artifacts_dir):
    """Why the engine gives each continuing chunk its own call; if a later ORT accepts this, batch them."""
    prompts = _prompts()
    runner = _runner(tiny_artifacts_dir, "cpu-fp32")
    runner.prefill_rows(0, [prompts[0][:3], prompts[1][:3]], [0, 0])
    with pytest.raises(Exception, match="batch_size must be 1 when sequence_length > 1 and past context is given"):
        runner.prefill_rows(0, [prompts[0][3:], prompts[1][3:9]], [3, 3])


def test_a_ragged_call_past_the_cache_end_is_refused_before_running(tiny_artifacts_dir):
    runner = _runner(tiny_artifacts_dir, "cpu-fp32")
    x = np.zeros((10, TINY.decoder.width), np.float32)
    with pytest.raises(ValueError, match="exceeds the cache's 64"):
        runner.prefill_rows(0, [x], [60])
    with pytest.raises(ValueError, match="at least one position"):
        runner.prefill_rows(0, [x, x[:0]], [0, 0])
