"""The KV cache plan: bytes per position from the variant's cache storage, slots from the budget, and the plans that
cannot be served refused with one line naming the decoder fields."""

from __future__ import annotations

import pytest

from mmcore.manifest import DecoderSpec, KvCacheEntry, Positions, TensorSpec
from serve_app.engine.kv_plan import GIB, KvPlanError, bytes_per_position, plan_kv_cache

# Qwen2-0.5B's decoder: 24 layers, 2 KV heads of 64, a 32k position table
QWEN2_05B = DecoderSpec(layers=24, heads=14, kv_heads=2, head_dim=64, hidden_size=896, vocab_size=151936,
                        max_positions=32768, positions=Positions(scheme="rotary"), eos_token_ids=[151645],
                        embeddings=TensorSpec(name="e.npy", dtype="float32", shape=[151936, 896]))
INT8 = KvCacheEntry(dtype="int8", bits=8, quantization="PER_CHANNEL", calibration="static")
INT4 = KvCacheEntry(dtype="uint8", bits=4, quantization="PER_CHANNEL", calibration="static")


def test_bytes_per_position_follow_the_variants_cache_storage():
    assert bytes_per_position(QWEN2_05B) == 2 * 24 * 2 * 64 * 4  # fp32 keys and values, every layer
    assert bytes_per_position(QWEN2_05B, INT8) == 2 * 24 * 2 * 64  # one byte a value
    assert bytes_per_position(QWEN2_05B, INT4) == 2 * 24 * 2 * 32  # two values a byte
    fp16 = QWEN2_05B.model_copy(update={"cache_dtype": "float16"})
    assert bytes_per_position(fp16) == 2 * 24 * 2 * 64 * 2


def test_without_a_budget_the_plan_is_the_configured_one():
    plan = plan_kv_cache(QWEN2_05B, None, slots=16)
    assert (plan.slots, plan.max_context, plan.limited_by_budget) == (16, 32768, False)
    # the figure: 16 slots at 32k positions in fp32 is about 14 GiB resident, the staging row included
    assert plan.cache_bytes == 17 * 32768 * 24576
    assert 12.5 < plan.cache_bytes / GIB < 14.5


def test_the_budget_picks_the_slots_at_most_the_configured_ones():
    per_row = 4096 * bytes_per_position(QWEN2_05B, INT8)  # 24 MiB
    plan = plan_kv_cache(QWEN2_05B, INT8, slots=64, max_context=4096, kv_cache_gib=0.25)
    assert plan.slots == 256 * 2**20 // per_row - 1 == 9  # 10 rows fit: one stages prefills
    assert plan.limited_by_budget and plan.cache_bytes <= 0.25 * GIB
    roomy = plan_kv_cache(QWEN2_05B, INT8, slots=8, max_context=4096, kv_cache_gib=0.25)
    assert (roomy.slots, roomy.limited_by_budget) == (8, False)


def test_the_plan_is_described_with_its_slots_context_and_bytes():
    line = plan_kv_cache(QWEN2_05B, INT8, slots=4, max_context=1024).describe()
    assert "4 slots" in line and "1024 positions" in line and "6144 B/position" in line and "\n" not in line


@pytest.mark.parametrize("kwargs, fields", [
    ({"slots": 4, "max_context": 40000}, ["decoder.max_context"]),  # over the model's position table
    ({"slots": 4, "kv_cache_gib": 0.01}, ["decoder.kv_cache_gib", "decoder.max_context"]),  # not one slot fits
    ({"slots": 16, "available_bytes": 8 * GIB}, ["decoder.slots", "decoder.max_context", "decoder.kv_cache_gib"]),
])
def test_a_plan_that_cannot_be_served_fails_in_one_line_naming_the_fields(kwargs, fields):
    with pytest.raises(KvPlanError) as e:
        plan_kv_cache(QWEN2_05B, None, **kwargs)
    message = str(e.value)
    assert "\n" not in message and all(f in message for f in fields), message


def test_a_plan_within_available_memory_passes():
    plan = plan_kv_cache(QWEN2_05B, INT8, slots=16, max_context=2048, available_bytes=1 * GIB)
    assert plan.cache_bytes < GIB
