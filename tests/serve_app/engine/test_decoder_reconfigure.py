"""The Decoder switching ORT profiling on while a stream decodes (the tiny graph, real ORT sessions, no Ray cluster):
the twin is built off the replica's event loop, the step thread keeps stepping meanwhile, the profiled steps give the
same tokens, and the twin is ended after its calls, with every one of them in its trace."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from serve_app.contract import DecodeRequest, TokenSegment
from serve_app.stages.decoder import Decoder
from serve_app.stages.options import DecoderOptions
from tests.serve_app.session_builds import reconfigure_as_serve, watch_session_builds

PROFILED_CALLS = 6


@pytest.fixture(autouse=True)
def replica_context(monkeypatch):
    """The replica reads its deployed max_ongoing_requests: stand in for Serve's replica context."""
    from ray import serve
    ctx = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=512), app_name="a",
                          deployment="Decoder", replica_tag="r", servable_object=None)
    monkeypatch.setattr(serve, "get_replica_context", lambda: ctx)


def request() -> DecodeRequest:
    ids = np.random.default_rng(5).integers(10, 400, 6).tolist()
    return DecodeRequest("live", [TokenSegment(ids)], max_tokens=100, temperature=0.0, ignore_eos=True)


async def tokens_of(decoder: Decoder, first_chunk: asyncio.Event | None = None) -> list[int]:
    tokens = []
    async for chunk in decoder.generate(request()):
        tokens += chunk.token_ids
        if first_chunk is not None:
            first_chunk.set()
    return tokens


def test_profiling_switched_on_mid_stream(tiny_artifacts, monkeypatch, tmp_path):
    decoder = Decoder.func_or_class({"artifacts_dir": str(tiny_artifacts)},
                                    DecoderOptions(prefer_variants=["cpu-fp32"], slots=2))
    builds = watch_session_builds(monkeypatch)
    profile = {"ort_profile": {"calls": PROFILED_CALLS, "dir": str(tmp_path), "label": "live"}}

    async def scenario():
        unprofiled = await tokens_of(decoder)
        first_chunk = asyncio.Event()
        stream = asyncio.create_task(tokens_of(decoder, first_chunk))
        await first_chunk.wait()
        steps_before = decoder.engine.steps
        await reconfigure_as_serve(decoder, profile)
        steps_during = decoder.engine.steps - steps_before
        spanning = await stream
        after = await tokens_of(decoder)  # the twin's calls left, if the first stream ended before it was ready
        await decoder.engine.close()
        return unprofiled, [spanning, after], steps_during

    unprofiled, profiled, steps_during = asyncio.run(scenario())
    [twin] = builds
    # The tiny decoder builds in milliseconds, too fast for a heartbeat to tell (the vision stage's test measures
    # the loop over a deep graph); where the twin was built tells here.
    assert not twin.on_event_loop, f"the profiling twin was built on the event loop ({twin.thread})"
    assert steps_during > 0  # the step thread went on decoding meanwhile
    assert profiled == [unprofiled, unprofiled]  # steps on the twin (its own IO binding, the same cache) agree
    [trace] = decoder.engine.runner.session.traces
    runs = sum(1 for e in json.loads(Path(trace).read_text()) if e.get("name") == "model_run")
    assert "-live_" in trace and runs == PROFILED_CALLS
