"""Ragged prefill on the numpy fake graph (which enforces the real runner's contract: several rows only when all are
fresh, every row written to the longest chunk's length): arrivals share a call, short prompts pass staged long ones,
staged prompts can be cancelled, and one bad prompt in a shared call fails alone."""

import asyncio
import threading

import numpy as np
from engine_fakes import FakeModel, FakeRunner, eos_id, make_embeddings, make_tokenizer

from serve_app.contract import DecodeRequest, FeatureSegment, TokenSegment
from serve_app.engine import Engine, EngineConfig, NullMetrics

TOK = make_tokenizer()
TABLE = make_embeddings()
MODEL = FakeModel()


def make_engine(slots=8, max_context=128, **cfg) -> Engine:
    runner = FakeRunner(MODEL, slots, max_context, step_delay_s=0.002)
    runner.prefill_delay_s = 0.002  # staged prompts stay staged long enough for the test to see them
    return Engine(runner, TABLE, TOK, [eos_id(TOK)], EngineConfig(slots=slots, max_context=max_context, **cfg))


def request(i, prompt_len, max_tokens, features=None) -> DecodeRequest:
    ids = np.random.default_rng(300 + i).integers(10, 500, prompt_len).tolist()
    segments = ([FeatureSegment(features)] if features is not None else []) + [TokenSegment(ids)]
    return DecodeRequest(f"r{i}", segments, max_tokens, temperature=0.0, ignore_eos=True)


def reference(req: DecodeRequest) -> list[int]:
    embeds = np.concatenate([TABLE[s.ids] if isinstance(s, TokenSegment) else s.features for s in req.segments])
    return MODEL.greedy(embeds, TABLE, req.max_tokens, None)


async def collect(engine, req) -> list[int]:
    return [t async for c in engine.generate(req) for t in c.token_ids]


def hold_prefills(engine) -> tuple[threading.Event, threading.Event]:
    """Block every prefill until `release` is set (`entered`: one is blocked), so the test decides what is queued
    when the step after it starts."""
    entered, release, prefill = threading.Event(), threading.Event(), engine.runner.prefill_rows
    engine.runner.prefill_rows = lambda *a: (entered.set(), release.wait(10), prefill(*a))[2]
    return entered, release


async def until(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.001)


def test_arrivals_of_different_lengths_share_one_call_and_match_the_reference():
    async def scenario():
        engine = make_engine()
        entered, release = hold_prefills(engine)
        first = asyncio.create_task(collect(engine, request(0, 3, 4)))  # its call holds the step thread
        await until(entered)
        reqs = [request(i, n, 6 + i) for i, n in enumerate([9, 1, 30, 17, 2], start=1)]
        tasks = [asyncio.create_task(collect(engine, r)) for r in reqs]
        while len(engine.scheduler.waiting) < len(reqs):
            await asyncio.sleep(0.001)
        release.set()
        results = await asyncio.gather(*tasks)
        assert await first == reference(request(0, 3, 4))
        await engine.close()
        return reqs, results, engine.runner.prefill_calls

    reqs, results, calls = asyncio.run(scenario())
    for req, tokens in zip(reqs, results):
        assert tokens == reference(req), req.request_id
    # the five arrivals went in one step: positions before the last 29, 16, 8, 1 and 0 (a 1-position prompt needs
    # no prefill); longest first, a call takes the next row while the padded call stays within 1/8 over its real
    # positions or at most 32 positions: [29] (2 x 29 > 1.125 x 45), [16, 8] (2 x 16 <= 32), [1]
    assert calls[1:] == [(1, [0], [29]), (2, [0, 0], [16, 8]), (4, [0], [1])], calls


def test_a_short_prompt_behind_a_staged_long_one_gets_its_first_token_first():
    async def scenario():
        engine = make_engine(slots=4, max_context=256, prefill_token_budget=16)
        first_token = {}

        async def timed(name, req):
            async for _ in engine.generate(req):
                first_token.setdefault(name, engine.steps)
            return name

        long_task = asyncio.create_task(timed("long", request(0, 200, 3)))  # 199 positions: ~13 steps at 16
        while not engine._steps.prefiller.staged:
            await asyncio.sleep(0.001)
        short_task = asyncio.create_task(timed("short", request(1, 5, 3)))
        await asyncio.gather(long_task, short_task)
        calls = engine.runner.prefill_calls
        await engine.close()
        return first_token, calls

    first_token, calls = asyncio.run(scenario())
    assert first_token["short"] < first_token["long"], first_token
    # the long prompt kept progressing while the short one passed: chunks at ever later starts in the staging row
    long_starts = [starts[0] for lo, starts, _ in calls if lo == 4]
    assert long_starts == sorted(long_starts) and long_starts[-1] > 0


def test_several_staged_prompts_progress_and_finish_like_each_alone():
    engine = make_engine(slots=4, max_context=256, prefill_token_budget=12)
    reqs = [request(i, n, 5 + i) for i, n in enumerate([70, 50, 3, 90, 4])]
    staged_at_once, prefill = [], engine.runner.prefill_rows
    engine.runner.prefill_rows = lambda *a: (staged_at_once.append(len(engine._steps.prefiller.staged)), prefill(*a))[1]

    async def run():
        try:
            return await asyncio.gather(*(collect(engine, r) for r in reqs))
        finally:
            await engine.close()
    results = asyncio.run(run())
    for req, tokens in zip(reqs, results):
        assert tokens == reference(req), req.request_id
    assert max(staged_at_once) >= 2  # more than one prompt was staged at once
    assert engine.scheduler.in_transit == 0 and not engine._steps.prefiller.staged


def test_cancelling_one_of_several_staged_prompts_keeps_the_others_right():
    async def scenario():
        engine = make_engine(slots=3, max_context=256, prefill_token_budget=8)
        reqs = [request(i, n, 4) for i, n in enumerate([60, 61, 62])]
        tasks = [asyncio.create_task(collect(engine, r)) for r in reqs]
        while len(engine._steps.prefiller.staged) < 3:
            await asyncio.sleep(0.001)
        tasks[0].cancel()  # the oldest: the younger staged rows move up a row
        await asyncio.gather(tasks[0], return_exceptions=True)
        results = await asyncio.gather(*tasks[1:])
        assert results == [reference(r) for r in reqs[1:]]
        assert engine.scheduler.in_transit == 0
        late = request(9, 5, 3)  # every slot is free again
        assert await collect(engine, late) == reference(late)
        await engine.close()

    asyncio.run(scenario())


def test_one_bad_prompt_in_a_shared_call_fails_alone():
    """A prompt whose features make the graph call raise (here: non-finite values, refused by the patched runner)
    shares its ragged call with good ones: the call is retried row by row and only the bad one fails."""
    async def scenario():
        engine = make_engine()
        prefill = engine.runner.prefill_rows

        def refuse_non_finite(lo, chunks, starts):
            if any(not np.isfinite(c).all() for c in chunks):
                raise RuntimeError("injected: non-finite prompt")
            return prefill(lo, chunks, starts)

        engine.runner.prefill_rows = refuse_non_finite
        entered, release = hold_prefills(engine)
        first = asyncio.create_task(collect(engine, request(0, 3, 4)))
        await until(entered)
        bad = np.full((4, TABLE.shape[1]), np.nan, np.float32)
        reqs = [request(1, 6, 5), request(2, 7, 5, features=bad), request(3, 8, 5)]
        tasks = [asyncio.create_task(collect(engine, r)) for r in reqs]
        while len(engine.scheduler.waiting) < 3:
            await asyncio.sleep(0.001)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert await first == reference(request(0, 3, 4))
        assert results[0] == reference(reqs[0]) and results[2] == reference(reqs[2])
        assert isinstance(results[1], RuntimeError) and "non-finite" in str(results[1])
        for _ in range(5000):  # finished sequences leave their slots at the step thread's next step
            if not engine.scheduler.active:
                break
            await asyncio.sleep(0.001)
        assert engine.scheduler.in_transit == 0 and not engine.scheduler.active
        await engine.close()

    asyncio.run(scenario())


def test_the_budget_is_shared_with_the_decode_rows():
    """With 6 streams decoding, a 16-position budget leaves 10 prompt positions a step (never under a quarter)."""
    async def scenario():
        engine = make_engine(slots=8, max_context=256, prefill_token_budget=16)
        running = [asyncio.create_task(collect(engine, request(i, 2, 200))) for i in range(6)]
        while len(engine.scheduler.active) < 6:
            await asyncio.sleep(0.001)
        calls_before = len(engine.runner.prefill_calls)
        long = request(7, 61, 2)
        assert await collect(engine, long) == reference(long)
        chunks = [sum(lengths) for _, _, lengths in engine.runner.prefill_calls[calls_before:]]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await engine.close()
        return chunks

    chunks = asyncio.run(scenario())
    assert sum(chunks) == 60 and max(chunks) <= 10, chunks


def test_every_admission_reports_its_queue_wait_and_first_token_once():
    class Recorder(NullMetrics):
        def __init__(self):
            self.waits, self.ttfts = [], []

        def observe_queue_wait(self, seconds):
            self.waits.append(seconds)

        def observe_ttft(self, seconds):
            self.ttfts.append(seconds)

    recorder = Recorder()
    runner = FakeRunner(MODEL, 4, 256, step_delay_s=0.002)
    engine = Engine(runner, TABLE, TOK, [eos_id(TOK)], EngineConfig(slots=4, max_context=256, prefill_token_budget=16),
                    recorder)
    reqs = [request(i, n, 3) for i, n in enumerate([40, 3, 1, 20, 5, 7])]

    async def run():
        try:
            return await asyncio.gather(*(collect(engine, r) for r in reqs))
        finally:
            await engine.close()
    assert asyncio.run(run()) == [reference(r) for r in reqs]
    assert len(recorder.waits) == len(reqs) and len(recorder.ttfts) == len(reqs)
