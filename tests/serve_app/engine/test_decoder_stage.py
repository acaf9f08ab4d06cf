"""The Decoder deployment on a real Ray Serve instance with the tiny graph: streaming through a handle matches the
reference, cancelling a stream frees its slot, a full queue is refused with Overloaded, live knobs apply."""

import asyncio
import threading
import time

import numpy as np
import pytest
import ray
from ray import serve

from serve_app.stages.decoder import Decoder
from serve_app.stages.options import DecoderOptions
from serve_app.contract import DecodeRequest, FeatureSegment, Overloaded, TokenSegment

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ray_serve():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(artifacts, name="decoder", user_config=None, **options):
    opts = DecoderOptions(prefer_variants=["cpu-fp32"], **options)
    app = Decoder.options(name="Decoder", user_config=user_config).bind({"artifacts_dir": str(artifacts)}, opts)
    return serve.run(app, name=name, route_prefix=None)


def prompt(seed: int, n: int = 6) -> list[int]:
    return np.random.default_rng(seed).integers(10, 400, n).tolist()


def wait_until(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_streamed_greedy_tokens_match_the_reference(ray_serve, tiny_artifacts, tiny_reference):
    handle = deploy(tiny_artifacts, slots=4)
    from mmcore.manifest import Manifest

    eos = Manifest.read(tiny_artifacts).decoder.eos_token_ids[0]
    for seed in range(3):
        req = DecodeRequest(f"g{seed}", [TokenSegment(prompt(seed))], max_tokens=20, temperature=0.0)
        chunks = list(handle.options(stream=True).generate.remote(req))
        tokens = [t for c in chunks for t in c.token_ids]
        assert tokens == tiny_reference.generate_greedy(None, prompt(seed), 20, eos)
        assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].completion_tokens == len(tokens)


def test_features_by_reference_are_fetched_by_the_stage_and_decode_as_the_array(ray_serve, tiny_artifacts):
    """Image features come from the ingress as FeatureRefs (an ObjectRef inside the request, which Ray does not
    resolve): the stage fetches them and generates exactly what the same block given as an array generates."""
    from mmcore.manifest import Manifest

    from serve_app.contract import FeatureRef

    handle = deploy(tiny_artifacts, name="by-reference", slots=2)
    width = Manifest.read(tiny_artifacts).decoder.hidden_size
    block = np.random.default_rng(3).standard_normal((5, width)).astype(np.float32)

    def greedy(segment) -> list[int]:
        req = DecodeRequest("f", [TokenSegment(prompt(4)), segment, TokenSegment(prompt(5, 2))], max_tokens=8,
                            temperature=0.0, ignore_eos=True)
        return [t for c in handle.options(stream=True).generate.remote(req) for t in c.token_ids]
    try:
        assert greedy(FeatureRef(ray.put(block), rows=5)) == greedy(FeatureSegment(block))
        assert handle.info.remote().result()["images_fetched"] == 1
    finally:
        serve.delete("by-reference")  # the module's cluster has 2 CPUs: a replica left here would starve later ones


def test_cancelled_stream_frees_its_slot(ray_serve, tiny_artifacts):
    handle = deploy(tiny_artifacts, slots=32, max_queue=0)
    def long(i):
        return DecodeRequest(f"long{i}", [TokenSegment(prompt(i))], max_tokens=120, temperature=0.0, ignore_eos=True)
    # 31 others in the batch make each step slow enough that the cancel lands mid-sequence
    others = [handle.options(stream=True).generate.remote(long(i)) for i in range(1, 32)]
    gen = handle.options(stream=True).generate.remote(long(0))
    next(gen)
    gen.cancel()
    assert wait_until(lambda: handle.info.remote().result()["cancelled"] == 1, timeout_s=10)
    for stream in others:  # the rest run to the end, unaffected
        assert sum(len(c.token_ids) for c in stream) == 120
    assert wait_until(lambda: handle.info.remote().result()["active"] == 0, timeout_s=10)
    short = DecodeRequest("short", [TokenSegment(prompt(2))], max_tokens=3, temperature=0.0, ignore_eos=True)
    assert sum(len(c.token_ids) for c in handle.options(stream=True).generate.remote(short)) == 3


def test_full_queue_is_refused_with_overloaded_not_a_hang(ray_serve, tiny_artifacts):
    handle = deploy(tiny_artifacts, slots=1, max_queue=2, retry_after_s=2.5)
    reqs = [DecodeRequest(f"r{i}", [TokenSegment(prompt(i))], max_tokens=120, temperature=0.0, ignore_eos=True)
            for i in range(12)]
    started = time.monotonic()
    streams = [handle.options(stream=True).generate.remote(r) for r in reqs]  # all in flight at once
    served, refused = 0, []
    for stream in streams:
        try:
            assert sum(len(c.token_ids) for c in stream) == 120
            served += 1
        except Overloaded as e:
            refused.append(e)
    assert refused and served >= 3  # one running + two queued got through; the rest were turned away
    assert all(e.retry_after_s == 2.5 for e in refused)
    assert time.monotonic() - started < 30


def test_live_knobs_change_through_user_config_and_fixed_ones_are_refused(ray_serve, tiny_artifacts):
    handle = deploy(tiny_artifacts, name="live", user_config={"max_queue": 3}, slots=2)
    assert handle.info.remote().result()["options"]["max_queue"] == 3
    handle = deploy(tiny_artifacts, name="live", user_config={"max_queue": 7, "prefill_token_budget": 64}, slots=2)
    opts = handle.info.remote().result()["options"]
    assert (opts["max_queue"], opts["prefill_token_budget"]) == (7, 64)


def test_reconfigure_names_a_field_that_cannot_change_live(tiny_artifacts):
    decoder = Decoder.func_or_class.__new__(Decoder.func_or_class)
    decoder.options, decoder.max_ongoing_requests = DecoderOptions(slots=2), 512
    with pytest.raises(ValueError, match="slots cannot change"):
        asyncio.run(decoder.reconfigure({"slots": 4}))


def test_a_deployed_max_ongoing_requests_below_slots_plus_queue_fails_the_replica_start(ray_serve, tiny_artifacts):
    # The config file's value, not the code default, is what Serve admits: slots 2 + max_queue 4 > 4
    opts = DecoderOptions(prefer_variants=["cpu-fp32"], slots=2, max_queue=4)
    app = Decoder.options(name="Decoder", max_ongoing_requests=4).bind({"artifacts_dir": str(tiny_artifacts)}, opts)
    with pytest.raises(RuntimeError, match="Decoder"):
        serve.run(app, name="admission", route_prefix=None)
    why = serve.status().applications["admission"].deployments["Decoder"].message
    serve.delete("admission")
    assert "decoder.slots + decoder.max_queue = 6 exceeds the Decoder deployment's max_ongoing_requests 4" in why



def outcome_within(stream, timeout_s: float):
    """Consume a handle stream on a daemon thread: -> its chunks or the exception it raised; TimeoutError if it hangs
    (the thread is left behind, blocked, and dies with the process)."""
    result = []

    def consume():
        try:
            result.append(list(stream))
        except Exception as e:  # noqa: BLE001 -- the outcome under test
            result.append(e)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not result:
        raise TimeoutError(f"the stream neither ended nor failed in {timeout_s} s")
    return result[0]


def test_a_prompt_the_engine_cannot_prepare_fails_its_stream_and_the_replica_serves_on(ray_serve, tiny_artifacts):
    """Image features of the right shape that are not numbers pass the submit-time checks and fail on the step
    thread after leaving the queue: that stream gets an error (it used to wait forever), a stream running beside it
    runs to its end, and the replica takes new requests."""
    from mmcore.manifest import Manifest

    handle = deploy(tiny_artifacts, name="unpreparable", slots=2)
    width = Manifest.read(tiny_artifacts).decoder.hidden_size
    running = handle.options(stream=True).generate.remote(
        DecodeRequest("running", [TokenSegment(prompt(1))], max_tokens=120, temperature=0.0, ignore_eos=True))
    first = next(running)  # admitted and decoding
    bad = DecodeRequest("bad", [TokenSegment(prompt(2)), FeatureSegment(np.full((3, width), "x", dtype=object))],
                        max_tokens=4, temperature=0.0)
    failed = outcome_within(handle.options(stream=True).generate.remote(bad), timeout_s=30)
    assert isinstance(failed, Exception), failed
    assert "bad: its prompt could not be prepared for prefill: ValueError" in str(failed)
    assert len(first.token_ids) + sum(len(c.token_ids) for c in running) == 120  # not failed with it
    after = DecodeRequest("after", [TokenSegment(prompt(3))], max_tokens=3, temperature=0.0, ignore_eos=True)
    assert sum(len(c.token_ids) for c in handle.options(stream=True).generate.remote(after)) == 3


@pytest.mark.parametrize("options, fields", [
    ({"kv_cache_gib": 1e-5}, "decoder.kv_cache_gib 1e-05 holds no slot of decoder.max_context 128 positions"),
    ({"max_context": 4096}, "decoder.max_context 4096 exceeds the model's 128 positions"),
])
def test_a_kv_plan_that_cannot_be_served_fails_the_replica_start_naming_the_fields(ray_serve, tiny_artifacts,
                                                                                   options, fields):
    app = Decoder.options(name="Decoder").bind({"artifacts_dir": str(tiny_artifacts)},
                                               DecoderOptions(prefer_variants=["cpu-fp32"], slots=2, **options))
    with pytest.raises(RuntimeError, match="Decoder"):
        serve.run(app, name="kv-plan", route_prefix=None)
    why = serve.status().applications["kv-plan"].deployments["Decoder"].message
    serve.delete("kv-plan")
    assert fields in why


def test_the_replica_reports_the_kv_plan_it_allocated(ray_serve, tiny_artifacts):
    handle = deploy(tiny_artifacts, name="kv-budget", slots=16, kv_cache_gib=512 / 2**20)  # 4 rows of 128 KiB
    info = handle.info.remote().result()
    serve.delete("kv-budget")
    assert (info["slots"], info["max_context"], info["kv_cache_bytes"]) == (3, 128, 4 * 128 * 1024)


def test_a_stopping_replica_shuts_its_engine_down(tiny_artifacts):
    from serve_app.engine import EngineConfig, load_engine

    decoder = Decoder.func_or_class.__new__(Decoder.func_or_class)
    decoder.engine = load_engine(tiny_artifacts, EngineConfig(slots=2), prefer=["cpu-fp32"])

    async def one_token():  # the first request starts the step thread
        stream = decoder.engine.generate(DecodeRequest("r", [TokenSegment([11, 12])], max_tokens=4))
        await anext(stream)
        await stream.aclose()

    asyncio.run(one_token())
    assert decoder.engine._steps._thread.is_alive()
    decoder.__del__()  # what Serve calls when it stops the replica
    assert not decoder.engine._steps._thread.is_alive() and decoder.engine.runner._cache == []
