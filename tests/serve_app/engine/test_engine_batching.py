"""Engine scheduling on the numpy fake graph: continuous batching, compaction, sampling, cancellation, overload."""

import asyncio
import threading

import numpy as np
import pytest
from engine_fakes import FakeModel, FakeRunner, eos_id, make_embeddings, make_tokenizer

from serve_app.engine import Engine, EngineConfig
from serve_app.contract import DecodeRequest, FeatureSegment, Overloaded, TokenSegment

TOK = make_tokenizer()
TABLE = make_embeddings()
MODEL = FakeModel()


def make_engine(slots=8, max_context=64, eos=None, **cfg) -> Engine:
    # Decode calls take time and release the GIL, like ORT's, so the streams keep up with the step thread.
    runner = FakeRunner(MODEL, slots, max_context, cfg.pop("fail_on_batch", None), cfg.pop("step_delay_s", 0.001))
    return Engine(runner, TABLE, TOK, [eos if eos is not None else eos_id(TOK)],
                  EngineConfig(slots=slots, max_context=max_context, **cfg))


def request(i, prompt_len, max_tokens, n_image=0, **kw) -> DecodeRequest:
    """Image features, when any, sit after the first two tokens: segments keep the template's order."""
    rng = np.random.default_rng(100 + i)
    ids = rng.integers(10, 500, prompt_len).tolist()
    segments = [TokenSegment(ids)]
    if n_image:
        feats = rng.standard_normal((n_image, TABLE.shape[1])).astype(np.float32)
        segments = [TokenSegment(ids[:2]), FeatureSegment(feats), TokenSegment(ids[2:])]
    return DecodeRequest(f"r{i}", segments, max_tokens, temperature=kw.pop("temperature", 0.0), **kw)


def reference(req: DecodeRequest, eos=None) -> list[int]:
    embeds = np.concatenate([TABLE[s.ids] if isinstance(s, TokenSegment) else s.features for s in req.segments])
    return MODEL.greedy(embeds, TABLE, req.max_tokens, eos)


async def collect(engine: Engine, req: DecodeRequest):
    chunks = [c async for c in engine.generate(req)]
    return [t for c in chunks for t in c.token_ids], chunks


async def collect_all(engine, reqs):
    try:
        return await asyncio.gather(*(collect(engine, r) for r in reqs))
    finally:
        await engine.close()


@pytest.mark.parametrize("slots", [8, 3])  # 3 slots: queueing, retirements mid-batch, slot compaction
def test_eight_sequences_of_different_lengths_match_the_single_sequence_reference(slots):
    engine = make_engine(slots=slots)
    reqs = [request(i, prompt_len=3 + 4 * i, max_tokens=5 + 3 * (7 - i), n_image=4 * (i % 2)) for i in range(8)]
    results = asyncio.run(collect_all(engine, reqs))
    for req, (tokens, chunks) in zip(reqs, results):
        assert tokens == reference(req)
        assert [c.completion_tokens for c in chunks] == list(np.cumsum([len(c.token_ids) for c in chunks]))
        assert chunks[-1].finish_reason == "length" and all(c.finish_reason is None for c in chunks[:-1])
        assert chunks[-1].prompt_tokens == req.prompt_len
        assert "".join(c.text for c in chunks) == TOK.decode(tokens, skip_special_tokens=True)
    assert max(engine.runner.batch_sizes) == slots  # they really shared decode calls


def test_long_prompts_are_prefilled_in_chunks_between_decode_steps():
    budget = 8
    engine = make_engine(slots=3, prefill_token_budget=budget)
    runner = engine.runner
    stalling, prefill = [], runner.prefill_rows  # per prefill call: did a running stream wait for it?

    def watched(*args):
        stalling.append(any(s.generated > 0 for s in engine.scheduler.active))  # the step thread's own list
        return prefill(*args)

    runner.prefill_rows = watched
    reqs = [request(i, prompt_len=3 + 5 * i, max_tokens=12 + 3 * (i % 3), n_image=6 * (i % 2)) for i in range(8)]
    results = asyncio.run(collect_all(engine, reqs))
    for req, (tokens, _) in zip(reqs, results):
        assert tokens == reference(req)
    assert any(starts[0] > 0 for _, starts, _ in runner.prefill_calls)  # long prompts really went in chunks
    # prompt positions prefilled between two decode steps while a stream waits never exceed the budget (a lone
    # prompt prefilled whole, with no stream running, stalls no one and has no decode call after it)
    between, worst, prefills = 0, 0, iter(stalling)
    for kind, n in runner.calls:
        if kind == "decode":
            between = 0
        elif next(prefills):
            between += n
        worst = max(worst, between)
    assert worst <= budget and any(stalling) and not all(stalling)


def test_cancelling_a_staged_prompt_gives_its_slot_back():
    async def scenario():
        engine = make_engine(slots=2, prefill_token_budget=4, step_delay_s=0.002)
        running = asyncio.create_task(collect(engine, request(0, 4, max_tokens=400)))
        while engine.steps < 2:
            await asyncio.sleep(0.001)
        staged = asyncio.create_task(collect(engine, request(1, 60, max_tokens=5)))  # 15 steps of chunks
        while not engine._steps.prefiller.staged:
            await asyncio.sleep(0.001)
        staged.cancel()
        await asyncio.gather(staged, return_exceptions=True)
        tokens, _ = await collect(engine, request(2, 4, max_tokens=3))  # the slot it held is free again
        assert len(tokens) == 3 and engine.scheduler.in_transit == 0
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await engine.close()

    asyncio.run(scenario())


def test_stream_interval_gathers_the_tokens_of_several_steps_into_one_chunk():
    req = request(0, prompt_len=6, max_tokens=40)
    # 10 ms steps and a 100 ms interval: a held first chunk would carry ~10 tokens, one sent at once carries 1 (or
    # 2-3 when the event loop wakes late on a loaded machine), so the two cases stay apart.
    per_step = asyncio.run(collect_all(make_engine(step_delay_s=0.01), [req]))[0][1]
    tokens, chunks = asyncio.run(collect_all(make_engine(step_delay_s=0.01, stream_interval_s=0.1), [req]))[0]
    assert tokens == reference(req) and chunks[-1].finish_reason == "length"
    assert len(chunks[0].token_ids) <= 3  # the first token is never held back for the interval
    assert 3 * len(chunks) <= len(per_step)  # ~10 steps of 10 ms per 100 ms chunk


def test_chunk_rate_stretches_the_interval_with_the_number_of_streams():
    reqs = [request(i, prompt_len=6, max_tokens=40) for i in range(4)]
    free = asyncio.run(collect_all(make_engine(step_delay_s=0.002), reqs))
    capped = asyncio.run(collect_all(make_engine(step_delay_s=0.002, max_chunk_rate=50), reqs))  # 4 streams: 80 ms
    for req, (tokens, _) in zip(reqs, capped):
        assert tokens == reference(req)
    assert 3 * sum(len(c) for _, c in capped) <= sum(len(c) for _, c in free)


def test_eos_stops_unless_ignored():
    req = request(0, prompt_len=6, max_tokens=12)
    free = reference(req)
    eos = free[4]  # pretend the fifth greedy token is EOS
    first = free.index(eos)
    tokens, chunks = asyncio.run(collect_all(make_engine(eos=eos), [req]))[0]
    assert tokens == free[:first + 1] and chunks[-1].finish_reason == "stop"
    req_ignore = request(0, prompt_len=6, max_tokens=12, ignore_eos=True)
    tokens, chunks = asyncio.run(collect_all(make_engine(eos=eos), [req_ignore]))[0]
    assert tokens == free and chunks[-1].finish_reason == "length"


def test_context_end_finishes_with_length():
    req = request(0, prompt_len=10, max_tokens=50)
    tokens, chunks = asyncio.run(collect_all(make_engine(max_context=16), [req]))[0]
    assert len(tokens) == 16 - 10 + 1  # the last token is sampled from a full cache and not fed back
    assert tokens == reference(req)[:7] and chunks[-1].finish_reason == "length"


def test_stop_string_ends_the_stream_and_frees_the_slot():
    req = request(0, prompt_len=5, max_tokens=30)
    full_text = TOK.decode(reference(req), skip_special_tokens=True)
    stop = full_text[len(full_text) // 2:len(full_text) // 2 + 3]
    req.stop = [stop]
    engine = make_engine()

    async def scenario():
        result = await collect(engine, req)
        for _ in range(1000):
            if not engine.scheduler.active:
                break
            await asyncio.sleep(0.001)
        await engine.close()
        return result

    tokens, chunks = asyncio.run(scenario())
    text = "".join(c.text for c in chunks)
    assert text == full_text[:full_text.index(stop)] and chunks[-1].finish_reason == "stop"
    assert len(tokens) < 30 and chunks[-1].completion_tokens == len(tokens)
    assert not engine.scheduler.active and engine.cancelled == 0  # freed, and not counted as a cancellation


def test_seeded_sampling_is_the_same_alone_and_in_a_full_batch():
    def sampled(i, seed):
        return request(i, prompt_len=4 + i, max_tokens=20, temperature=0.9, top_p=0.8, seed=seed)

    alone = asyncio.run(collect_all(make_engine(), [sampled(0, 7)]))[0][0]
    crowd = [sampled(0, 7)] + [sampled(i, 1000 + i) for i in range(1, 8)]
    in_batch = asyncio.run(collect_all(make_engine(), crowd))[0][0]
    assert in_batch == alone
    other_seed = asyncio.run(collect_all(make_engine(), [sampled(0, 8)]))[0][0]
    assert other_seed != alone  # the seed matters: the test would notice sampling ignoring it


def test_cancelled_stream_frees_its_slot_for_a_waiting_request():
    async def scenario():
        engine = make_engine(slots=2, max_context=512)
        long_a = asyncio.create_task(collect(engine, request(0, 4, max_tokens=400)))
        long_b = asyncio.create_task(collect(engine, request(1, 4, max_tokens=400)))
        while engine.steps < 3 or len(engine.scheduler.active) < 2:
            await asyncio.sleep(0.001)  # blocks the loop briefly: the step thread gets the GIL
        waiting = asyncio.create_task(collect(engine, request(2, 4, max_tokens=3)))
        await asyncio.sleep(0.001)
        assert len(engine.scheduler.waiting) == 1
        steps_at_cancel = engine.steps
        long_a.cancel()
        tokens, _ = await waiting
        assert len(tokens) == 3 and engine.steps - steps_at_cancel <= 5  # admitted right away, not after 400
        assert not long_b.done() and engine.cancelled == 1
        long_b.cancel()
        await asyncio.gather(long_a, long_b, return_exceptions=True)
        while engine.scheduler.active:
            await asyncio.sleep(0.001)
        await engine.close()

    asyncio.run(scenario())


def test_overload_is_refused_at_once_not_queued_forever():
    async def scenario():
        engine = make_engine(slots=1, max_queue=1, max_context=512)
        running = [asyncio.create_task(collect(engine, request(i, 4, max_tokens=300))) for i in range(2)]
        await asyncio.sleep(0)  # one admitted into the slot, one waiting: the queue is full
        with pytest.raises(Overloaded) as err:
            await anext(engine.generate(request(9, 4, max_tokens=3)))
        assert err.value.retry_after_s == engine.config.retry_after_s
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await collect(engine, request(9, 4, max_tokens=3))  # capacity is back once they are gone
        await engine.close()

    asyncio.run(scenario())


def test_a_failing_graph_call_fails_its_streams_and_the_engine_keeps_serving():
    async def scenario():
        engine = make_engine(slots=4, fail_on_batch=2)
        # Hold the first prefill until both requests are submitted: otherwise, on a loaded machine, the step thread
        # can finish the first request alone (batch 1) before the second one arrives.
        both_in, prefill = threading.Event(), engine.runner.prefill_rows
        engine.runner.prefill_rows = lambda *a, **kw: (both_in.wait(10), prefill(*a, **kw))[1]
        submitted, submit = [], engine.submit
        engine.submit = lambda req: submitted.append(req) or submit(req)
        reqs = [request(i, 4, max_tokens=5) for i in range(2)]
        started = [asyncio.create_task(collect(engine, r)) for r in reqs]
        while len(submitted) < 2:
            await asyncio.sleep(0.001)
        both_in.set()
        results = await asyncio.gather(*started, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "injected" in str(r) for r in results)
        tokens, _ = await collect(engine, request(5, 4, max_tokens=5))  # batch of one: served
        assert tokens == reference(request(5, 4, max_tokens=5))
        await engine.close()

    asyncio.run(scenario())


def test_a_bug_outside_graph_calls_fails_the_streams_instead_of_hanging_them():
    async def scenario():
        engine = make_engine(slots=2)
        broken = engine.runner.move

        def move_fails(*args):
            raise RuntimeError("injected bookkeeping failure")

        engine.runner.move = move_fails  # compaction runs outside the guarded graph calls
        # Hold r0's prefill until r1 is queued: otherwise the step thread can run r0's three steps before the loop
        # submits r1, and r0 retires with nothing to move.
        both_in, prefill = threading.Event(), engine.runner.prefill_rows
        engine.runner.prefill_rows = lambda *a: (both_in.wait(10), prefill(*a))[1]
        reqs = [request(0, 4, max_tokens=3), request(1, 4, max_tokens=30)]  # r0 retires first: slot 1 moves
        gathered = asyncio.gather(*(collect(engine, r) for r in reqs), return_exceptions=True)
        while len(engine.scheduler.waiting) + len(engine.scheduler.active) < 2:
            await asyncio.sleep(0.001)
        both_in.set()
        results = await asyncio.wait_for(gathered, timeout=10)
        assert isinstance(results[1], RuntimeError) and "injected" in str(results[1])
        engine.runner.move = broken
        tokens, _ = await collect(engine, request(2, 4, max_tokens=4))  # the engine serves on
        assert tokens == reference(request(2, 4, max_tokens=4))
        await engine.close()

    asyncio.run(scenario())


def test_bad_requests_are_refused_with_clear_errors():
    engine = make_engine(max_context=16)
    cases = [(request(0, 17, 3), "exceeds the decoder context"), (request(0, 0, 3), "empty prompt"),
             (request(0, 4, 0), "max_tokens"), (DecodeRequest("x", [TokenSegment([9999])], 3), "token ids"),
             (DecodeRequest("x", [FeatureSegment(np.zeros((2, 3), np.float32))], 3), "image features")]
    for req, message in cases:
        with pytest.raises(ValueError, match=message):
            engine.submit(req)


def test_run_to_completion_makes_a_late_request_wait_for_the_whole_batch():
    async def scenario(scheduling):
        engine = make_engine(slots=4, max_context=512, scheduling=scheduling, batch_wait_s=0.0, step_delay_s=0.002)
        longs = [asyncio.create_task(collect(engine, request(i, 4, max_tokens=60))) for i in range(3)]
        while engine.steps < 5:
            await asyncio.sleep(0.001)
        short = engine.generate(request(7, 4, max_tokens=2))
        await anext(short)
        steps_at_first_token = engine.steps
        longs_running = sum(not task.done() for task in longs)
        await short.aclose()
        await asyncio.gather(*longs)
        await engine.close()
        return steps_at_first_token, longs_running

    assert asyncio.run(scenario("continuous"))[1] == 3  # served between the long ones' steps
    steps, _ = asyncio.run(scenario("run_to_completion"))
    assert steps >= 59  # waited for the whole batch (59 decode steps after its prefill) to finish
