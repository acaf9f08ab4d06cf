"""Failures between a sequence's pop from the queue and its activation, on the real engine (scheduler, prefiller, step
thread) over the numpy fake graph. Such a sequence is neither active nor staged, so before these fixes nothing failed
it and its stream waited forever; now it fails with its own error and the engine serves on."""

import asyncio
import threading

import numpy as np
from engine_fakes import FakeModel, FakeRunner, eos_id, make_embeddings, make_tokenizer

from serve_app.engine import Engine, EngineConfig
from serve_app.contract import DecodeRequest, FeatureSegment, TokenSegment

TOK = make_tokenizer()
TABLE = make_embeddings()
MODEL = FakeModel()
HANG_S = 10  # a stream still silent after this long would have waited forever


def make_engine(slots, **cfg) -> Engine:
    runner = FakeRunner(MODEL, slots, max_context=512, step_delay_s=cfg.pop("step_delay_s", 0.001))
    return Engine(runner, TABLE, TOK, [eos_id(TOK)], EngineConfig(slots=slots, max_context=512, **cfg))


def request(i, prompt_len, max_tokens) -> DecodeRequest:
    ids = np.random.default_rng(100 + i).integers(10, 500, prompt_len).tolist()
    return DecodeRequest(f"r{i}", [TokenSegment(ids)], max_tokens, temperature=0.0, ignore_eos=True)


def unpreparable(i) -> DecodeRequest:
    """Image features of the right shape (the submit-time checks pass) that are not numbers: building the prompt's
    embeddings on the step thread raises, after the sequence has left the queue."""
    features = np.full((3, TABLE.shape[1]), "not a number", dtype=object)  # (3,D)
    return DecodeRequest(f"bad{i}", [TokenSegment([11, 12]), FeatureSegment(features)], 4, temperature=0.0)


def reference(req: DecodeRequest) -> list[int]:
    embeds = np.concatenate([TABLE[s.ids] for s in req.segments])
    return MODEL.greedy(embeds, TABLE, req.max_tokens, None)


async def collect(engine: Engine, req: DecodeRequest) -> list[int]:
    return [t async for c in engine.generate(req) for t in c.token_ids]


async def outcome(engine: Engine, req: DecodeRequest):
    """The stream's tokens or the exception it raised; a TimeoutError means it hung."""
    try:
        return await asyncio.wait_for(collect(engine, req), HANG_S)
    except Exception as e:  # noqa: BLE001 -- the outcome under test
        return e


def test_a_prompt_that_cannot_be_prepared_fails_alone_and_the_others_run_on():
    async def scenario():
        engine = make_engine(slots=2, step_delay_s=0.002)
        running_req = request(0, 4, max_tokens=300)
        running = asyncio.create_task(outcome(engine, running_req))
        while engine.steps < 3:
            await asyncio.sleep(0.001)
        failed = await outcome(engine, unpreparable(1))
        assert isinstance(failed, RuntimeError), f"expected the stream to fail, got {failed!r}"
        assert "bad1: its prompt could not be prepared for prefill: ValueError" in str(failed)
        assert engine.scheduler.in_transit == 0  # its slot came back
        assert not running.done()  # the running stream was not failed with it
        later = request(2, 5, max_tokens=6)
        assert await outcome(engine, later) == reference(later)
        assert not running.done()  # `later` ran beside it, in the slot the failed sequence gave back
        assert await running == reference(running_req)
        await engine.close()

    asyncio.run(scenario())


def test_run_to_completion_batch_serves_the_others_when_one_prompt_cannot_be_prepared():
    async def scenario():
        engine = make_engine(slots=3, scheduling="run_to_completion", batch_wait_s=5.0)
        reqs = [request(0, 4, max_tokens=8), unpreparable(1), request(2, 6, max_tokens=8)]
        results = await asyncio.gather(*(outcome(engine, r) for r in reqs))  # one batch of three
        assert results[0] == reference(reqs[0]) and results[2] == reference(reqs[2])
        assert isinstance(results[1], RuntimeError) and "could not be prepared" in str(results[1])
        assert engine.scheduler.in_transit == 0
        await engine.close()

    asyncio.run(scenario())


def fail_activation_of(engine: Engine, request_id: str) -> None:
    """A bookkeeping bug in the scheduler, hit between pop and activate for one sequence."""
    activate = engine.scheduler.activate

    def activate_or_fail(seq):
        if seq.request.request_id == request_id:
            raise RuntimeError("injected activation failure")
        return activate(seq)

    engine.scheduler.activate = activate_or_fail


def test_a_scheduler_failure_between_pop_and_activate_fails_every_popped_sequence():
    """run_to_completion pops the whole batch at once: r0 is active when r1's activation fails, r2 is still popped.
    All three are in flight, so all three fail (the step cannot be trusted); none waits forever."""
    async def scenario():
        engine = make_engine(slots=3, scheduling="run_to_completion", batch_wait_s=5.0)
        fail_activation_of(engine, "r1")
        results = await asyncio.gather(*(outcome(engine, request(i, 4, max_tokens=8)) for i in range(3)))
        for result in results:
            assert isinstance(result, RuntimeError) and "injected activation failure" in str(result), result
        assert engine.scheduler.in_transit == 0 and not engine.scheduler.active
        engine.scheduler.activate = type(engine.scheduler).activate.__get__(engine.scheduler)
        after = [request(i, 4, max_tokens=5) for i in range(3, 6)]  # a full batch: every slot is free again
        assert await asyncio.gather(*(outcome(engine, r) for r in after)) == [reference(r) for r in after]
        await engine.close()

    asyncio.run(scenario())


def test_a_staged_prompt_failure_still_reaches_its_stream_when_the_same_step_dies_later():
    """The staged prompt's second chunk fails (its sequence leaves the staging rows, failed, and gives its slot back),
    then the same step admits the next arrival whole and dies activating it: the staged sequence's own failure,
    recorded earlier in that step, must still be delivered, and the arrival fails too."""
    async def scenario():
        engine = make_engine(slots=2, prefill_token_budget=4)
        runner, first_chunk, arrived = engine.runner, threading.Event(), threading.Event()
        prefill = runner.prefill_rows

        def prefill_held_or_failing(lo, chunks, starts):
            if starts == [0]:  # the staged prompt's first chunk (positions 0..3): hold it until the arrival queues
                first_chunk.set()
                arrived.wait(HANG_S)
            if starts == [4]:  # its second chunk, in the step that pops the arrival
                raise RuntimeError("injected staged chunk failure")
            return prefill(lo, chunks, starts)

        runner.prefill_rows = prefill_held_or_failing
        fail_activation_of(engine, "r1")
        staged = asyncio.create_task(outcome(engine, request(0, 10, max_tokens=4)))  # 9 > budget 4: staged
        while not first_chunk.is_set():
            await asyncio.sleep(0.001)
        arrival = asyncio.create_task(outcome(engine, request(1, 2, max_tokens=4)))  # fits whole beside the chunk
        while not engine.scheduler.waiting:
            await asyncio.sleep(0.001)
        arrived.set()
        staged_result, arrival_result = await asyncio.gather(staged, arrival)
        assert isinstance(staged_result, RuntimeError) and "injected staged chunk failure" in str(staged_result), \
            staged_result
        assert isinstance(arrival_result, RuntimeError) and "injected activation failure" in str(arrival_result), \
            arrival_result
        runner.prefill_rows = prefill
        engine.scheduler.activate = type(engine.scheduler).activate.__get__(engine.scheduler)
        after = request(2, 4, max_tokens=5)
        assert await outcome(engine, after) == reference(after)
        await engine.close()

    asyncio.run(scenario())
