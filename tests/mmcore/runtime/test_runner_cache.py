"""The KV runner's cache: allocated in the dtype and last dim of the variant it runs (manifest Variant.kv_cache),
and resident from the start (no page faults inside decode steps, prefills or compaction moves)."""

import os

import numpy as np
import onnxruntime as ort
import pytest

from mmcore.manifest import KvCacheEntry
from mmcore.runtime.kv_runner import OrtDecoderRunner
from tests.mmcore.runtime.test_kv_runner import SPEC, rotary_like_graph

SLOTS, T = 15, 4096  # big enough that the cache's pages dominate any other allocation the constructor makes
ROW = SPEC.layers * 2 * SPEC.kv_heads * T  # cached values per slot, every layer, keys and values, per channel


def _session() -> ort.InferenceSession:
    return ort.InferenceSession(rotary_like_graph(), providers=["CPUExecutionProvider"])


PAGE = os.sysconf("SC_PAGE_SIZE")


def _present_pages(arr: np.ndarray) -> tuple[int, int]:
    """(pages of `arr` present in memory, pages it spans), from /proc/self/pagemap (bit 63 of each page's entry).
    Per page, not the RSS growth: ORT's arena may hand out memory a previous allocation already made resident."""
    first, last = arr.ctypes.data // PAGE, (arr.ctypes.data + arr.nbytes - 1) // PAGE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        entries = np.frombuffer(f.read((last - first + 1) * 8), dtype=np.uint64)
    return int(np.count_nonzero(entries >> np.uint64(63))), len(entries)


@pytest.mark.skipif(not os.path.exists("/proc/self/pagemap"), reason="reads Linux's page map")
def test_cache_pages_are_resident_once_allocated():
    session = _session()
    spec = SPEC.model_copy(update={"head_dim": 512})  # ~250 MB of cache: far above allocator noise
    runner = OrtDecoderRunner(session, spec, SLOTS, T)  # the constructor allocates; no graph call
    assert runner.cache_bytes == (SLOTS + 1) * ROW * 512 * 4  # float32
    for kind in runner._host:
        for arr in kind:
            present, pages = _present_pages(arr)
            assert present == pages, f"{pages - present} of {pages} cache pages not mapped"  # lazily mapped: ~0
    assert not any(a.any() for kind in runner._host for a in kind)


@pytest.mark.parametrize("cache,dtype,last", [(None, "float32", 3),
                                              (KvCacheEntry(dtype="int8", bits=8, quantization="PER_CHANNEL",
                                                            calibration="-"), "int8", 3),
                                              (KvCacheEntry(dtype="uint8", bits=4, quantization="PER_CHANNEL",
                                                            calibration="-"), "uint8", 1)])
def test_cache_is_allocated_in_the_variants_dtype(cache, dtype, last):
    spec = SPEC.model_copy(update={"head_dim": 2 * 3}) if last == 1 else SPEC  # 4 bits: two values per byte
    last = 3 if last == 1 else last
    runner = OrtDecoderRunner(_session(), spec, SLOTS, T, cache=cache)
    assert all(a.dtype == np.dtype(dtype) and a.shape == (SLOTS + 1, SPEC.kv_heads, T, last)
               for kind in runner._host for a in kind)
    assert runner.cache_bytes == (SLOTS + 1) * ROW * last * np.dtype(dtype).itemsize
