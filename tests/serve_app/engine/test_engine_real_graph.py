"""The engine on the real tiny decoder graph (ORT, shared-buffer KV cache): batched streams match the PyTorch
single-sequence greedy reference, and seeded sampling does not depend on what shares the batch on the variants whose
rows never interact (cpu-fp32, and cpu-int8-rowwise, which quantizes each activation row on its own, also over an int8
KV cache with static scales: cpu-int8-rowwise-kv8)."""

import asyncio
import threading

import numpy as np
import pytest
import torch

from serve_app.engine import EngineConfig, load_engine
from serve_app.contract import DecodeRequest, FeatureSegment, TokenSegment

FP32 = ["cpu-fp32"]  # token identity with the fp32 reference is the claim; int8 parity is the build's gate


def image_features(model, seed: int, n_images: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    size = model.cfg.vision.image_size
    pixels = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n_images, 3, size, size), np.uint8))
    with torch.no_grad():
        feats = model.vision(pixels)  # (n,P,D)
    return pixels, feats.reshape(-1, feats.shape[-1]).numpy()


def make_requests(model, n=8):
    reqs, pixels = [], []
    for i in range(n):
        ids = np.random.default_rng(i).integers(10, 400, 2 + 5 * i).tolist()
        px, feats = image_features(model, seed=i) if i % 2 == 0 else (None, None)
        segments = ([FeatureSegment(feats)] if feats is not None else []) + [TokenSegment(ids)]  # images first
        reqs.append(DecodeRequest(f"r{i}", segments, max_tokens=6 + 4 * ((5 * i) % n), temperature=0.0))
        pixels.append(px)
    return reqs, pixels


def token_ids(req: DecodeRequest) -> list[int]:
    return [t for s in req.segments if isinstance(s, TokenSegment) for t in s.ids]


async def run_all(engine, reqs):
    async def one(req):
        return [c async for c in engine.generate(req)]
    try:
        return await asyncio.gather(*(one(r) for r in reqs))
    finally:
        await engine.close()


# 3 slots: retirements compact the cache; budget 16: prompts of up to 53 positions are prefilled in chunks
@pytest.mark.parametrize("slots,budget", [(8, 256), (3, 256), (3, 16)])
def test_batched_greedy_streams_match_the_single_sequence_reference(tiny_artifacts, tiny_reference, slots, budget):
    engine = load_engine(tiny_artifacts, EngineConfig(slots=slots, prefill_token_budget=budget), prefer=FP32)
    assert engine.variant == "cpu-fp32"
    reqs, pixels = make_requests(tiny_reference)
    moves = []
    real_move = engine.runner.move
    engine.runner.move = lambda src, dst, length: (moves.append((src, dst)), real_move(src, dst, length))
    results = asyncio.run(run_all(engine, reqs))
    assert moves or slots == 8  # with 3 slots, retirements mid-batch compacted the cache
    for req, px, chunks in zip(reqs, pixels, results):
        tokens = [t for c in chunks for t in c.token_ids]
        expected = tiny_reference.generate_greedy(px, token_ids(req), req.max_tokens, min(engine.eos_ids))
        assert tokens == expected, req.request_id
        assert chunks[-1].finish_reason == ("stop" if expected[-1] in engine.eos_ids else "length")


def test_ragged_prefill_calls_give_each_stream_its_reference_tokens(tiny_artifacts, tiny_reference):
    """A first request's prefill holds the step thread until eleven more are queued: three short text prompts of
    10-11 positions then the eight mixed ones. The next step prefills the short ones in one right-padded call and
    stages the long ones, which continue their cached prefixes in later chunks while the others decode; every stream
    is still the PyTorch model's greedy continuation of its own prompt."""
    engine = load_engine(tiny_artifacts, EngineConfig(slots=8, prefill_token_budget=40), prefer=FP32)
    short = [DecodeRequest(f"t{n}", [TokenSegment(list(range(20, 20 + n)))], max_tokens=5, temperature=0.0)
             for n in (10, 11, 11)]
    mixed, mixed_pixels = make_requests(tiny_reference)
    reqs = [DecodeRequest("first", [TokenSegment([11, 12, 13])], max_tokens=3, temperature=0.0), *short, *mixed]
    pixels = [None] * 4 + mixed_pixels
    calls, prefill, queued = [], engine.runner.prefill_rows, threading.Event()

    def recorded(lo, chunks, starts):
        queued.wait(30)
        calls.append(([len(c) for c in chunks], starts))
        return prefill(lo, chunks, starts)

    engine.runner.prefill_rows = recorded

    async def run():
        tasks = [asyncio.create_task(stream(engine, reqs[0]))]
        while not engine.scheduler.active:
            await asyncio.sleep(0.001)
        tasks += [asyncio.create_task(stream(engine, r)) for r in reqs[1:]]
        while len(engine.scheduler.waiting) < len(reqs) - 1:
            await asyncio.sleep(0.001)
        queued.set()
        try:
            return await asyncio.gather(*tasks)
        finally:
            await engine.close()
    results = asyncio.run(run())
    for req, px, chunks in zip(reqs, pixels, results):
        expected = tiny_reference.generate_greedy(px, token_ids(req), req.max_tokens, min(engine.eos_ids))
        assert [t for c in chunks for t in c.token_ids] == expected, req.request_id
    assert ([10, 10, 9], [0, 0, 0]) in calls, calls  # rows of different lengths shared a call
    assert any(starts[0] > 0 for _, starts in calls), calls  # a chunk continued a cached prefix


async def stream(engine, req):
    return [c async for c in engine.generate(req)]


@pytest.mark.parametrize("variant", ["cpu-fp32", "cpu-int8-rowwise", "cpu-int8-rowwise-kv8"])
def test_seeded_sample_is_the_same_alone_and_in_a_full_batch(tiny_artifacts, variant):
    def sampled(i, seed):
        ids = np.random.default_rng(i).integers(10, 400, 4 + 3 * i).tolist()
        return DecodeRequest(f"s{i}", [TokenSegment(ids)], max_tokens=24, temperature=1.0, top_p=0.95, seed=seed,
                             ignore_eos=True)

    def text_of(chunks):
        return "".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids]

    cfg = EngineConfig(slots=8)

    def engine():
        e = load_engine(tiny_artifacts, cfg, prefer=[variant])
        assert e.variant == variant
        return e
    alone = asyncio.run(run_all(engine(), [sampled(0, 42)]))[0]
    crowd = [sampled(i, 100 + i) for i in range(1, 8)]
    crowd.insert(3, sampled(0, 42))  # not in slot 0: its row moves with the others
    batch = asyncio.run(run_all(engine(), crowd))[3]
    assert text_of(batch) == text_of(alone)
    other = asyncio.run(run_all(engine(), [sampled(0, 43)]))[0]
    assert text_of(other)[1] != text_of(alone)[1]


def test_penalized_and_cut_rows_are_the_same_alone_and_among_other_parameters(tiny_artifacts):
    """The new sampling parameters on the real fp32 graph: a row's tokens and logprobs do not depend on the other
    rows' parameters or histories. Bit for bit, so the request alone takes its first token from a decode call too
    (lone_prompt_logits off), as it does among others."""
    def req(i, **kw):
        ids = np.random.default_rng(i).integers(10, 400, 4 + 3 * i).tolist()
        return DecodeRequest(f"p{i}", [TokenSegment(ids)], max_tokens=20, ignore_eos=True, **kw)

    mine = dict(temperature=0.9, seed=7, top_k=40, min_p=0.02, repetition_penalty=1.3, frequency_penalty=0.5,
                min_tokens=5, logprobs=2)
    others = [dict(temperature=0.0, presence_penalty=1.5), dict(temperature=1.2, seed=3, top_p=0.8),
              dict(temperature=0.7, seed=4, repetition_penalty=0.8, min_p=0.1), dict(temperature=1.0, seed=5)]

    def engine():
        return load_engine(tiny_artifacts, EngineConfig(slots=8, lone_prompt_logits=False), prefer=["cpu-fp32"])

    def tokens_and_logprobs(chunks):
        return [t for c in chunks for t in c.token_ids], [(e.token, e.logprob) for c in chunks for e in c.logprobs]
    alone = asyncio.run(run_all(engine(), [req(0, **mine)]))[0]
    crowd = [req(i + 1, **kw) for i, kw in enumerate(others)]
    crowd.insert(2, req(0, **mine))
    together = asyncio.run(run_all(engine(), crowd))[2]
    assert tokens_and_logprobs(together) == tokens_and_logprobs(alone)


def test_int8_cache_engine_chunks_and_compacts_like_each_stream_alone(tiny_artifacts):
    """The int8 cache through the engine's real paths: chunked prefill into the staging row, its move into a slot,
    compaction on retire (int8 rows copied), batched ragged decode. Row-wise weights + static cache scales make each
    stream independent of its batch, so 3 crowded slots with a 16-position budget give what each request gives alone."""
    variant = "cpu-int8-rowwise-kv8"
    crowded = load_engine(tiny_artifacts, EngineConfig(slots=3, prefill_token_budget=16), prefer=[variant])
    assert crowded.variant == variant
    fp32_bytes = load_engine(tiny_artifacts, EngineConfig(slots=3), prefer=["cpu-int8-rowwise"]).runner.cache_bytes
    assert crowded.runner._host[0][0].dtype == np.int8 and crowded.runner.cache_bytes * 4 == fp32_bytes
    reqs = [DecodeRequest(f"r{i}", [TokenSegment(np.random.default_rng(i).integers(10, 400, 2 + 9 * i).tolist())],
                          max_tokens=4 + 5 * i, temperature=0.0, ignore_eos=True) for i in range(6)]
    moves = []
    real_move = crowded.runner.move
    crowded.runner.move = lambda src, dst, length: (moves.append((src, dst)), real_move(src, dst, length))
    together = asyncio.run(run_all(crowded, reqs))
    assert len(moves) >= 2  # staged prompts moved in, retirements compacted
    for req, chunks in zip(reqs, together):
        alone = asyncio.run(run_all(load_engine(tiny_artifacts, EngineConfig(slots=1), prefer=[variant]), [req]))[0]
        assert [t for c in chunks for t in c.token_ids] == [t for c in alone for t in c.token_ids], req.request_id


def test_the_kv_budget_sizes_the_slots_and_the_allocated_cache_is_the_plan(tiny_artifacts):
    # tiny fp32: 2 layers x K,V x 2 kv heads x 32 x 4 B = 1 KiB a position, 128 KiB a row of 128 positions
    engine = load_engine(tiny_artifacts, EngineConfig(slots=16, kv_cache_gib=512 / 2**20), prefer=FP32)
    plan = engine.kv_plan
    assert (plan.slots, plan.max_context, plan.bytes_per_position) == (3, 128, 1024)  # 4 rows: one stages
    assert engine.runner.slots == 3 and engine.runner.cache_bytes == plan.cache_bytes == 4 * 128 * 1024


def test_shutdown_stops_the_step_thread_fails_what_is_in_flight_and_releases_the_cache(tiny_artifacts):
    engine = load_engine(tiny_artifacts, EngineConfig(slots=2), prefer=FP32)

    async def main():
        stream = engine.generate(DecodeRequest("long", [TokenSegment([11, 12, 13])], max_tokens=100,
                                               temperature=0.0, ignore_eos=True))
        await anext(stream)  # running: the step thread is up and the sequence holds a slot
        await asyncio.to_thread(engine.shutdown)
        with pytest.raises(RuntimeError, match="replica stopped"):
            async for _ in stream:
                pass

    asyncio.run(main())
    assert not engine._steps._thread.is_alive()
    assert engine.runner._cache == [] and engine.runner._host == []  # the OrtValues are no longer referenced
    with pytest.raises(RuntimeError, match="shut down"):
        engine.submit(DecodeRequest("late", [TokenSegment([11])], max_tokens=1))
    engine.shutdown()  # idempotent: Serve's destructor and the garbage collector may both call it


@pytest.mark.parametrize("variant", ["cpu-fp32", "cpu-int8"])
def test_a_lone_request_takes_its_first_token_from_its_whole_prefill(tiny_artifacts, tiny_reference, variant):
    """An idle engine prefills a lone prompt with its last position and samples the first token from that call's
    logits, with no decode call before it: the greedy tokens are the reference's (fp32) and the decode path's, and
    the first token's logprobs agree with the decode path's to float rounding."""
    reqs, pixels = make_requests(tiny_reference, n=3)
    req = DecodeRequest("lone", reqs[2].segments, max_tokens=8, temperature=0.0, logprobs=3, ignore_eos=True)

    def run(lone: bool):
        engine = load_engine(tiny_artifacts, EngineConfig(slots=4, lone_prompt_logits=lone), prefer=[variant])
        calls, prefill, decode = [], engine.runner.prefill_rows, engine.runner.decode
        engine.runner.prefill_rows = lambda lo, chunks, starts: (calls.append(("prefill", len(chunks[0]))),
                                                                 prefill(lo, chunks, starts))[1]
        engine.runner.decode = lambda n, e, lengths: (calls.append(("decode", n)), decode(n, e, lengths))[1]
        chunks = asyncio.run(run_all(engine, [req]))[0]
        return [t for c in chunks for t in c.token_ids], [e for c in chunks for e in c.logprobs], calls

    fast, fast_logprobs, fast_calls = run(True)
    slow, slow_logprobs, slow_calls = run(False)
    assert fast_calls == [("prefill", req.prompt_len)] + [("decode", 1)] * 7  # the 2nd..8th tokens
    assert slow_calls == [("prefill", req.prompt_len - 1)] + [("decode", 1)] * 8
    assert fast == slow
    if variant == "cpu-fp32":
        assert fast == tiny_reference.generate_greedy(pixels[2], token_ids(req), 8)
    first_fast, first_slow = fast_logprobs[0], slow_logprobs[0]
    assert [t.token for t in first_fast.top] == [t.token for t in first_slow.top]
    # int8: DynamicQuantizeMatMul takes one activation scale per call, over the prompt's positions in the prefill
    # call and over the one position in the decode call, so the two paths' logits differ by that scale's rounding
    tolerance = 1e-4 if variant == "cpu-fp32" else 2e-3
    np.testing.assert_allclose([t.logprob for t in first_fast.top], [t.logprob for t in first_slow.top],
                               atol=tolerance)
