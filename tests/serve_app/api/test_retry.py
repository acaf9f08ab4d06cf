"""Preprocess and vision calls are retried once when their replica dies; a lost vision stage fails fast with 503."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from serve_app.api import chat
from serve_app.api.errors import StageUnavailable, to_error
from serve_app.api.retry import call_once_more
from tests.serve_app.api.fake_vision import StreamingVision, blocks


class FlakyMethod:
    """A stage method whose first `failures` calls raise as if the replica died mid-call."""

    def __init__(self, result, failures: int = 0, error=ActorDiedError, delay_s: float = 0.0):
        self.result, self.failures, self.error, self.delay_s = result, failures, error, delay_s
        self.calls = 0

    def remote(self, *args):
        self.calls += 1
        call = self.calls

        async def run():
            await asyncio.sleep(self.delay_s)
            if call <= self.failures:
                raise self.error()
            return self.result(*args) if callable(self.result) else self.result
        return run()


class Stage:
    def __init__(self, **methods):
        self.__dict__.update(methods)


def stages(pre: FlakyMethod, vis: FlakyMethod, missing=frozenset(), timeout_s: float = 5.0) -> chat.Stages:
    return chat.Stages(Stage(process=pre), StreamingVision(vis.remote), Stage(), timeout_s, lambda: frozenset(missing))


IMAGES = [chat.ImageRef("data:a", "messages.0.content.0.image_url"),
          chat.ImageRef("data:b", "messages.0.content.1.image_url")]


def pixels(url, param, model_key=None, images_in_prompt=1):
    return url


def features(p, model_key=None):
    return np.full((2, 3), ord(p[-1]), np.float32)  # (P=2, D=3), tagged by which image


@pytest.mark.parametrize("error", [ActorDiedError, lambda: ActorUnavailableError("connection lost", None)],
                         ids=["died", "unavailable"])
def test_vision_replica_dying_once_is_retried_and_the_request_succeeds(error):
    pre, vis = FlakyMethod(pixels), FlakyMethod(features, failures=1, error=error)
    out = blocks(asyncio.run(chat.image_features(stages(pre, vis), IMAGES)))
    assert [f.shape for f in out] == [(2, 3), (2, 3)] and [f[0, 0] for f in out] == [97, 98]  # message order kept
    assert (pre.calls, vis.calls) == (2, 3)  # only the failed image was sent again


def test_preprocess_replica_dying_once_is_retried():
    pre, vis = FlakyMethod(pixels, failures=1), FlakyMethod(features)
    assert [f.shape for f in blocks(asyncio.run(chat.image_features(stages(pre, vis), IMAGES[:1])))] == [(2, 3)]
    assert pre.calls == 2


def test_a_second_death_fails_the_request_with_503():
    pre, vis = FlakyMethod(pixels), FlakyMethod(features, failures=2)
    with pytest.raises(ActorDiedError) as e:
        asyncio.run(chat.image_features(stages(pre, vis), IMAGES[:1]))
    assert vis.calls == 2 and to_error(e.value)[0] == 503


def test_retry_stays_within_the_deadline():
    slow = FlakyMethod(1, failures=1, delay_s=0.3)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(call_once_more(slow.remote, time.monotonic() + 0.5, "vision"))
    assert time.monotonic() - start < 0.8 and slow.calls == 2


def test_other_errors_are_not_retried():
    pre, vis = FlakyMethod(pixels), FlakyMethod(features, failures=1, error=ValueError)
    with pytest.raises(ValueError):
        asyncio.run(chat.image_features(stages(pre, vis), IMAGES[:1]))
    assert vis.calls == 1


def test_lost_vision_stage_fails_fast_with_503_vision_unavailable():
    pre, vis = FlakyMethod(pixels), FlakyMethod(features, delay_s=10)
    start = time.monotonic()
    with pytest.raises(StageUnavailable) as e:
        asyncio.run(chat.image_features(stages(pre, vis, missing={"VisionEncoder"}), IMAGES))
    assert time.monotonic() - start < 0.5 and (pre.calls, vis.calls) == (0, 0)
    status, body, headers = to_error(e.value)
    assert status == 503 and body.error.code == "vision_unavailable" and "vision" in body.error.message
    assert body.error.type == "service_unavailable" and headers["Retry-After"]


def test_vision_lost_while_waiting_says_vision_unavailable():
    lost = set()
    vis = FlakyMethod(features, failures=5)
    vis_remote = vis.remote

    def dying(*args):
        lost.add("VisionEncoder")  # the watch notices the node is gone while the call fails
        return vis_remote(*args)
    st = chat.Stages(Stage(process=FlakyMethod(pixels)), StreamingVision(dying), Stage(), 5.0,
                     lambda: frozenset(lost))
    with pytest.raises(StageUnavailable):
        asyncio.run(chat.image_features(st, IMAGES[:1]))


def test_text_only_requests_ignore_a_lost_vision_stage():
    assert asyncio.run(chat.image_features(stages(FlakyMethod(pixels), FlakyMethod(features),
                                                  missing={"VisionEncoder"}), [])) == []


def test_a_call_waiting_when_vision_is_lost_is_abandoned_at_once():
    lost = set()
    pre, vis = FlakyMethod(pixels), FlakyMethod(features, delay_s=30)  # waits in the router for a replica
    st = stages(pre, vis, timeout_s=60)
    st.missing = lambda: frozenset(lost)

    async def scenario():
        asyncio.get_running_loop().call_later(0.3, lost.add, "VisionEncoder")
        await chat.image_features(st, IMAGES[:1])

    start = time.monotonic()
    with pytest.raises(StageUnavailable):
        asyncio.run(scenario())
    assert time.monotonic() - start < 2.0


def test_an_image_request_is_not_refused_on_a_stale_answer_that_a_second_look_clears():
    """The watch's last tick ran before the vision replica came up (a client's first request the moment the
    deploy returned): the second look finds it running, and the request is served."""
    lost = {"VisionEncoder"}
    st = stages(FlakyMethod(pixels), FlakyMethod(features))
    st.missing = lambda: frozenset(lost)
    st.recheck = lambda: (lost.clear(), frozenset(lost))[1]
    feats = asyncio.run(chat.image_features(st, IMAGES[:1]))
    assert len(feats) == 1


def test_a_stage_still_lost_on_the_second_look_is_refused():
    pre, vis = FlakyMethod(pixels), FlakyMethod(features)
    st = stages(pre, vis, missing={"VisionEncoder"})
    looks = []
    st.recheck = lambda: (looks.append(1), frozenset({"VisionEncoder"}))[1]
    with pytest.raises(StageUnavailable):
        asyncio.run(chat.image_features(st, IMAGES[:1]))
    assert looks == [1] and (pre.calls, vis.calls) == (0, 0)
