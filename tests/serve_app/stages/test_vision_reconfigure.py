"""A live reconfigure that switches ORT profiling on builds the profiling twin off the replica's event loop: the loop
keeps running (other requests, the batcher) while the twin is built. Real stage, real ORT sessions over a deep graph
(a session build that takes a while), wrapped only to watch where and when the twin is built."""

from __future__ import annotations

import asyncio

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mmcore.manifest import CPU_EP, GraphEntry, TensorSpec, Variant
from serve_app.contract import PreprocessedImage
from serve_app.stages.options import VisionOptions
from serve_app.stages.vision import VisionEncoder
from tests.fake_manifest import write_fake_manifest
from tests.serve_app.session_builds import (Build, Heartbeat, reconfigure_as_serve, ticks_during,
                                            watch_session_builds)

S, P, D = 4, 4, 12  # image side, patches, feature width: 3*4*4 = 4*12
DEPTH = 600  # MatMul+Relu pairs: enough that building a session takes a noticeable while


def write_deep_graph(path) -> None:
    """pixels uint8 (batch,3,S,S) -> image_features float32 (batch,P,D): a cast, a reshape and DEPTH identity
    MatMul+Relu pairs, so the features equal the pixels exactly."""
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["f", "shape"], ["h0"])]
    init = [helper.make_tensor("shape", TensorProto.INT64, [3], [0, P, D])]
    for i in range(DEPTH):
        init.append(helper.make_tensor(f"eye{i}", TensorProto.FLOAT, [D, D], np.eye(D, dtype=np.float32).ravel()))
        nodes += [helper.make_node("MatMul", [f"h{i}", f"eye{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"])]
    nodes.append(helper.make_node("Identity", [f"h{DEPTH}"], ["image_features"]))
    graph = helper.make_graph(
        nodes, "deep_vision", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 3, S, S])],
        [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["batch", P, D])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # onnx 1.23 writes 14 by default, which ORT 1.31 refuses
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("deep_vision")
    write_deep_graph(d / "vision.cpu-fp32.onnx")
    variants = {"cpu-fp32": Variant(file="vision.cpu-fp32.onnx", sha256="0", providers=[CPU_EP], precision="fp32")}
    write_fake_manifest(d, {"vision": GraphEntry(
        inputs=[TensorSpec(name="pixels", dtype="uint8", shape=["batch", 3, S, S])],
        outputs=[TensorSpec(name="image_features", dtype="float32", shape=["batch", P, D])], variants=variants)},
        image_size=S, features=P, width=D)
    return str(d)



@pytest.fixture
def builds(monkeypatch) -> list[Build]:
    return watch_session_builds(monkeypatch)


def test_switching_profiling_on_builds_the_twin_off_the_event_loop(artifacts, builds, tmp_path):
    enc = VisionEncoder.func_or_class({"artifacts_dir": artifacts}, VisionOptions(max_batch_size=2).model_dump())
    builds.clear()  # the replica's own session, built at start
    pixels = (np.arange(3 * S * S) % 251).astype(np.uint8).reshape(3, S, S)

    async def scenario():
        async with Heartbeat() as beat:
            await reconfigure_as_serve(enc, {"ort_profile": {"calls": 1, "dir": str(tmp_path), "label": "live"}})
        features = await enc.encode(PreprocessedImage(pixels[None], P, "h", 1, S * S))  # the profiled call
        return beat.ticks, features

    ticks, features = asyncio.run(scenario())
    [twin] = builds
    assert not twin.on_event_loop, f"the profiling twin was built on the event loop ({twin.thread})"
    assert ticks_during(ticks, twin), \
        f"the event loop stood still for the whole {twin.ended - twin.started:.3f} s twin build"
    np.testing.assert_array_equal(features, pixels.reshape(P, D).astype(np.float32))
    assert len(enc.session.traces) == 1 and "-live_" in enc.session.traces[0]
