"""The serving runner's KV cache: allocated in the variant's dtype, and resident from the start (no page faults
inside decode steps, prefills or compaction moves)."""

import os

import numpy as np
import pytest

from serve_app.engine.runner import OrtDecoderRunner

SHAPE = dict(layers=2, heads=4, head_dim=64, width=256, vocab_size=32, slots=15, max_context=512)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's resident set size")
def test_cache_pages_are_resident_once_allocated():
    before = _resident_bytes()
    runner = OrtDecoderRunner(None, **SHAPE)  # the constructor allocates; no graph call
    grown = _resident_bytes() - before
    assert runner.cache_bytes == 2 * 2 * 16 * 4 * 512 * 64 * 4  # layers, k/v, slots+1, nh, T, hs, float32
    assert grown >= 0.9 * runner.cache_bytes  # lazily mapped zeros would leave it near 0
    assert not any(b.any() for b in runner._key + runner._value)


@pytest.mark.parametrize("dtype,last,itemsize", [("float32", 64, 4), ("int8", 64, 1), ("uint8", 32, 1)])
def test_cache_is_allocated_in_the_variants_dtype(dtype, last, itemsize):
    runner = OrtDecoderRunner(None, **SHAPE, cache_dtype=dtype, cache_last_dim=last)
    assert all(b.dtype == np.dtype(dtype) and b.shape == (16, 4, 512, last) for b in runner._key + runner._value)
    assert runner.cache_bytes == 2 * 2 * 16 * 4 * 512 * last * itemsize
