"""A stand-in for the vision stage's streaming call as the ingress makes it (`encode_for_decoder` through a Serve
handle with stream=True): each yield of the replica's generator is an object in the store, which the caller may
fetch (`anext` on the response) or take as a reference (`_to_object_ref_gen`). Here a reference is a
`CountedRef`: awaiting it -- as the decoder stage does -- returns the value and counts the fetch, so a test sees
whether the ingress ever fetched a feature block."""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.contract import DecodeRequest, FeatureRef, resolve_features


class CountedRef:
    """An ObjectRef stand-in: awaitable, counting its fetches."""

    def __init__(self, value):
        self.value, self.fetches = value, 0

    def __await__(self):
        self.fetches += 1
        yield from asyncio.sleep(0).__await__()
        return self.value


class ResponseGenerator:
    """Mimics DeploymentResponseGenerator over an async generator of the replica's yields (or a coroutine that
    raises before the first, like a dead or refusing replica)."""

    def __init__(self, yields):
        self.yields, self.cancelled, self.refs_taken = yields, False, False
        self.fetched: list = []  # every value the caller fetched (rather than took by reference)

    def __aiter__(self):
        return self

    async def __anext__(self):  # the next yield, fetched
        value = await self.yields.__anext__()
        self.fetched.append(value)
        return value

    async def _to_object_ref_gen(self):
        self.refs_taken = True
        return self._refs()

    async def _refs(self):  # the next yields, as references
        async for value in self.yields:
            yield CountedRef(value)

    def cancel(self):
        self.cancelled = True


def encode_stream(encode):
    """`encode(*args) -> coroutine of a (P,D) block` -> a replica's encode_for_decoder: shape, then the block."""
    async def encode_for_decoder(*args):
        block = await encode(*args)
        yield block.shape
        yield block
    return encode_for_decoder


class StreamingVision:
    """A vision handle whose `encode_for_decoder` runs `encode(*args)` (-> coroutine of a block) per call."""

    def __init__(self, encode):
        self.calls, self._encode = [], encode
        self.streams: list[ResponseGenerator] = []  # one per call

    def options(self, stream: bool = False, _by_reference: bool = True):
        assert stream and _by_reference  # the ingress must take references, not values
        return self

    @property
    def encode_for_decoder(self):
        vision = self

        class Method:
            def remote(self, *args):
                vision.calls.append(args)
                vision.streams.append(ResponseGenerator(encode_stream(vision._encode)(*args)))
                return vision.streams[-1]
        return Method()


def blocks(features: list[FeatureRef]) -> list[np.ndarray]:
    """The blocks behind the ingress's references, fetched as the decoder stage does; every reference must be
    unfetched until now (the ingress only passed it on)."""
    assert all(isinstance(f, FeatureRef) and f.ref.fetches == 0 for f in features)
    request = asyncio.run(resolve_features(DecodeRequest("r", list(features), max_tokens=1)))
    return [s.features for s in request.segments]
