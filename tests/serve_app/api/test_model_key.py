"""Stage calls carry the ingress's model key: during a rolling upgrade a replica of another model refuses a call
before doing any work, the ingress sends it again until a replica of its model takes it, and when none is left the
client gets a 503 with Retry-After (code model_changed) -- never an answer that mixed two models' stages."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import pickle

import numpy as np
import pytest

from serve_app.api import chat
from serve_app.api.errors import to_error
from serve_app.contract import DecodeChunk, DecodeRequest, ModelMismatch, PreprocessedImage, TokenSegment, \
    check_model_key
from tests.serve_app.api.fake_vision import ResponseGenerator, blocks, encode_stream

A, B = "a" * 64, "b" * 64


class Replica:
    """A stage replica that loaded model `key`: refuses calls for another model, as the real stages do."""

    def __init__(self, stage: str, key: str):
        self.stage, self.key, self.calls = stage, key, 0

    def process(self, url, param, model_key, images_in_prompt=1):
        check_model_key(self.stage, self.key, model_key)
        self.calls += 1
        return PreprocessedImage(np.full((1, 3, 4, 4), ord(self.key[0]), np.uint8), 16, url, 1, 16)

    async def encode(self, image, model_key):
        check_model_key(self.stage, self.key, model_key)
        self.calls += 1
        return np.full((16, 8), float(image.views[0, 0, 0, 0]), np.float32)  # (P,D): carries the preprocess model

    async def generate(self, request):
        check_model_key(self.stage, self.key, request.model_key)
        self.calls += 1
        yield DecodeChunk(self.key[0], [1])
        yield DecodeChunk(self.key[0], [2], "stop")


class Stream:
    """A streaming handle's response: raises at its first chunk when the replica refuses; cancel() as Serve's."""

    def __init__(self, gen):
        self.gen, self.cancelled = gen, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.gen.__anext__()

    def cancel(self):
        self.cancelled = True


class Handle:
    """Mimics a deployment handle over several replicas, picked in turn (Serve picks at random)."""

    def __init__(self, *replicas: Replica):
        self.replicas = replicas
        self.turn = itertools.cycle(replicas)

    def __getattr__(self, method):
        handle = self

        class Call:
            def remote(self, *args):
                replica = next(handle.turn)
                if method == "encode_for_decoder":  # the vision call as the ingress makes it
                    return ResponseGenerator(encode_stream(replica.encode)(*args))
                fn = getattr(replica, method)
                if method == "generate":
                    return Stream(fn(*args))

                async def run():
                    return fn(*args)
                return run()
        return Call()

    def options(self, stream, _by_reference=True):
        return self


def stages(key, pre, vis, dec, timeout_s=5.0):
    return chat.Stages(Handle(*pre), Handle(*vis), Handle(*dec), timeout_s, model_key=key)


def test_a_refused_call_is_sent_again_until_a_replica_of_its_model_takes_it():
    old_pre, new_pre = Replica("preprocess", A), Replica("preprocess", B)
    old_vis, new_vis = Replica("vision", A), Replica("vision", B)
    s = stages(B, [old_pre, new_pre], [old_vis, new_vis], [])
    feats = blocks(asyncio.run(chat.image_features(s, [chat.ImageRef("data:1", "p1"), chat.ImageRef("data:2", "p2")])))
    assert all(f[0, 0] == ord("b") for f in feats)  # preprocessed and encoded by model B only
    assert old_pre.calls == old_vis.calls == 0 and new_pre.calls == new_vis.calls == 2


def test_the_decoder_stream_is_reopened_on_a_replica_of_its_model():
    old, new = Replica("decoder", A), Replica("decoder", B)
    s = stages(A, [], [], [new, new, old])  # the first two tries reach the new model's replica
    req = DecodeRequest("r", [TokenSegment([1, 2])], max_tokens=2, model_key=A)

    async def run():
        return [c.text async for c in chat.decode_stream(s, req)]

    assert asyncio.run(run()) == ["a", "a"] and new.calls == 0 and old.calls == 1


def test_no_replica_of_the_model_left_is_a_503_with_retry_after():
    s = stages(A, [], [], [Replica("decoder", B)], timeout_s=0.3)
    req = DecodeRequest("r", [TokenSegment([1])], max_tokens=2, model_key=A)

    async def run():
        return [c async for c in chat.decode_stream(s, req)]

    with pytest.raises(ModelMismatch) as e:
        asyncio.run(run())
    status, body, headers = to_error(e.value)
    assert (status, body.error.code, headers) == (503, "model_changed", {"Retry-After": "1"})
    assert "decoder replica serves model bbbbbbbbbbbb, the request is for model aaaaaaaaaaaa" in body.error.message


def test_other_errors_are_not_retried():
    class Broken(Replica):
        def process(self, url, param, model_key, images_in_prompt=1):
            self.calls += 1
            raise ValueError("bad image")

    broken = Broken("preprocess", A)
    s = stages(A, [broken], [Replica("vision", A)], [])
    with pytest.raises(ValueError, match="bad image"):
        asyncio.run(chat.image_features(s, [chat.ImageRef("data:1", "p1")]))
    assert broken.calls == 1


def test_mismatch_survives_pickling_and_untagged_calls_are_not_checked():
    err = pickle.loads(pickle.dumps(ModelMismatch("vision", A, B)))
    assert (err.stage, err.have, err.asked, err.retry_after_s) == ("vision", A, B, 1.0)
    check_model_key("vision", A, None)
    with pytest.raises(ModelMismatch):
        check_model_key("vision", A, B)


def test_the_ingress_follows_a_refusing_replica_to_its_model(tiny_artifacts_dir):
    from serve_app.api.served import ServedModels, load_served_model
    from serve_app.artifacts import ModelSource

    source = {"artifacts_dir": str(tiny_artifacts_dir)}
    new = load_served_model(ModelSource.model_validate(source), None, 2)
    old = dataclasses.replace(new, key=A, fingerprint="mmserve-old")
    models = ServedModels(old, None, 2)
    assert not asyncio.run(models.follow(ModelMismatch("decoder", new.key, A)))  # names no source: cannot follow
    assert models.current is old
    assert asyncio.run(models.follow(ModelMismatch("decoder", new.key, A, source)))
    assert models.current.key == new.key and models.current.fingerprint == new.fingerprint
    assert not asyncio.run(models.follow(ModelMismatch("decoder", B, new.key, source)))  # resolves to another key
    assert models.current.key == new.key
