"""Vision stage on a real ORT session over a small hand-made graph (pixels -> features is a cast + reshape, so
expected outputs are exact): variant choice, dynamic batching, the content-hash cache, live reconfiguration."""

from __future__ import annotations

import asyncio

import numpy as np
import onnx
import pytest

from onnx import TensorProto, helper

from mmcore.manifest import CPU_EP, GraphEntry, ManifestError, TensorSpec, Variant
from serve_app.contract import ModelMismatch, PreprocessedImage
from serve_app.encoder.session import open_vision_session
from serve_app.stages.options import VisionOptions
from serve_app.stages.vision import VisionEncoder
from tests.fake_manifest import write_fake_manifest

S, P, D = 4, 4, 12  # image side, patches, feature width: 3*4*4 = 4*12


def write_graph(path, scale: float) -> None:
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "scale"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["image_features"])]
    graph = helper.make_graph(
        nodes, "vision",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 3, S, S])],
        [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["batch", P, D])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
         helper.make_tensor("shape", TensorProto.INT64, [3], [0, P, D])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("vision_artifacts")
    write_graph(d / "vision.cpu-fp32.onnx", 1.0)
    write_graph(d / "vision.cpu-int8.onnx", 2.0)  # a different scale tells which variant ran
    variants = {name: Variant(file=f"vision.{name}.onnx", sha256="0", providers=[CPU_EP], precision=prec)
                for name, prec in (("cpu-fp32", "fp32"), ("cpu-int8", "int8"))}
    spec_in = [TensorSpec(name="pixels", dtype="uint8", shape=["batch", 3, S, S])]
    spec_out = [TensorSpec(name="image_features", dtype="float32", shape=["batch", P, D])]
    write_fake_manifest(d, {"vision": GraphEntry(inputs=spec_in, outputs=spec_out, variants=variants)},
                        image_size=S, features=P, width=D)
    return str(d)



def image(v: int) -> PreprocessedImage:
    px = (np.arange(3 * S * S, dtype=np.int64).reshape(1, 3, S, S) + v).astype(np.uint8)  # one view
    return PreprocessedImage(px, P, f"hash{v}", 10, S * S)


def make(artifacts, **opts) -> VisionEncoder:
    return VisionEncoder.func_or_class({"artifacts_dir": artifacts}, VisionOptions(**opts).model_dump())


def batch_sizes(enc: VisionEncoder) -> list[int]:
    """The batch size of each session call the stage makes from now on, in order."""
    sizes: list[int] = []
    run = enc._run
    enc._run = lambda px: (sizes.append(px.shape[0]), run(px))[1]
    return sizes


def test_variant_follows_preference(artifacts):
    opened = open_vision_session(artifacts, VisionOptions(prefer_variants=["cpu-fp32"]))
    assert (opened.variant, opened.provider) == ("cpu-fp32", CPU_EP)
    assert open_vision_session(artifacts, VisionOptions()).variant == "cpu-int8"


def test_unavailable_provider_falls_back_to_cpu_variant(artifacts):
    opened = open_vision_session(artifacts, VisionOptions(providers=["CUDAExecutionProvider", CPU_EP],
                                                          prefer_variants=["cpu-fp32"]))
    assert opened.provider == CPU_EP and opened.variant == "cpu-fp32"


def test_concurrent_requests_form_one_batch_with_exact_outputs(artifacts):
    enc = make(artifacts, prefer_variants=["cpu-fp32"], max_batch_size=4, batch_wait_timeout_s=0.2)
    sizes = batch_sizes(enc)

    async def go():
        return await asyncio.gather(*(enc.encode(image(v)) for v in range(4)))
    feats = asyncio.run(go())
    assert sizes == [4]
    for v, f in enumerate(feats):
        assert f.shape == (P, D) and f.dtype == np.float32
        np.testing.assert_array_equal(f, image(v).views.astype(np.float32).reshape(P, D))


def test_encode_for_decoder_yields_the_shape_then_the_block_and_refuses_before_either(artifacts):
    """The ingress's call: the first object (awaited by the ingress) is only the shape; the second is the block the
    decoder fetches, as `encode` returns it. A refusal raises before anything is yielded."""
    enc = make(artifacts, prefer_variants=["cpu-fp32"], batch_wait_timeout_s=0.0)

    async def go(model_key=None):
        return [item async for item in enc.encode_for_decoder(image(2), model_key)]
    shape, block = asyncio.run(go())
    assert shape == (P, D) and block.dtype == np.float32
    np.testing.assert_array_equal(block, image(2).views.astype(np.float32).reshape(P, D))
    with pytest.raises(ModelMismatch):
        asyncio.run(go("another model"))


def tiled(v: int, views: int) -> PreprocessedImage:
    """An image the preprocess stage split into `views` views (a base view and tiles): each view's pixels differ."""
    px = (np.arange(views * 3 * S * S, dtype=np.int64).reshape(views, 3, S, S) + v).astype(np.uint8)
    return PreprocessedImage(px, views * P, f"tiled{v}", 10, S * S)


def test_a_batch_counts_views_and_an_images_block_is_its_views_in_order(artifacts):
    enc = make(artifacts, prefer_variants=["cpu-fp32"], max_batch_size=8, batch_wait_timeout_s=0.2)
    sizes = batch_sizes(enc)

    async def go():
        return await asyncio.gather(enc.encode(tiled(0, 3)), enc.encode(image(5)), enc.encode(tiled(1, 2)))
    three, one, two = asyncio.run(go())
    assert sizes == [6]  # 3 + 1 + 2 views in one session call
    for block, img in ((three, tiled(0, 3)), (one, image(5)), (two, tiled(1, 2))):
        assert block.shape == (img.rows, D)
        np.testing.assert_array_equal(block, img.views.astype(np.float32).reshape(img.rows, D))


def test_an_image_whose_plan_disagrees_with_the_graph_fails_naming_both(artifacts):
    enc = make(artifacts, prefer_variants=["cpu-fp32"], batch_wait_timeout_s=0.0)
    wrong = tiled(0, 2)
    wrong.rows = 3 * P
    with pytest.raises(RuntimeError, match=f"2 views gave {2 * P} feature rows, the image's plan says {3 * P}"):
        asyncio.run(enc.encode(wrong))
    assert len(enc.cache) == 0  # nothing cached for it


def test_cache_by_content_hash_skips_the_session(artifacts):
    enc = make(artifacts, prefer_variants=["cpu-fp32"], batch_wait_timeout_s=0.0)
    calls = batch_sizes(enc)

    async def go():
        a = await enc.encode(image(1))
        b = await enc.encode(image(1))
        return a, b
    a, b = asyncio.run(go())
    np.testing.assert_array_equal(a, b)
    assert len(calls) == 1 and len(enc.cache) == 1


def test_identical_images_arriving_together_are_encoded_once(artifacts):
    enc = make(artifacts, prefer_variants=["cpu-fp32"], batch_wait_timeout_s=0.01)
    rows = batch_sizes(enc)

    async def go():
        return await asyncio.gather(*(enc.encode(image(1)) for _ in range(4)))
    feats = asyncio.run(go())
    assert rows == [1]  # one image encoded, not a batch of four copies
    assert all(f is feats[0] for f in feats) and len(enc.cache) == 1


def test_reconfigure_sets_batching_and_cache(artifacts):
    enc = make(artifacts, max_batch_size=8, batch_profile_max=16)
    asyncio.run(enc.reconfigure({"max_batch_size": 16, "batch_wait_timeout_s": 0.05, "cache_mib": 0}))
    info = asyncio.run(enc.info())
    assert info["max_batch_size"] == 16 and info["batch_wait_timeout_s"] == 0.05 and enc.cache.max_bytes == 0
    with pytest.raises(Exception, match="max_batch_size"):
        asyncio.run(enc.reconfigure({"max_batch_size": 0}))


def test_a_live_batch_size_past_the_profile_fixed_at_start_is_refused_on_any_ep(artifacts):
    # The args' batch size fixed the profile the replica warmed up over; a user_config past it (a config file's
    # second place for the same knob) is refused naming both, on the CPU EP too, and nothing changes.
    enc = make(artifacts, max_batch_size=4)
    with pytest.raises(ValueError, match="max_batch_size 16 exceeds 4.*vision.max_batch_size"):
        asyncio.run(enc.reconfigure({"max_batch_size": 16}))
    assert asyncio.run(enc.info())["max_batch_size"] == 4


def test_a_graph_unlike_its_manifest_fails_the_replica_start(tmp_path):
    write_graph(tmp_path / "vision.cpu-fp32.onnx", 1.0)
    variants = {"cpu-fp32": Variant(file="vision.cpu-fp32.onnx", sha256="0", providers=[CPU_EP], precision="fp32")}
    spec_in = [TensorSpec(name="pixel_values", dtype="uint8", shape=["batch", 3, S, S])]  # the graph says "pixels"
    spec_out = [TensorSpec(name="image_features", dtype="float32", shape=["batch", P, D])]
    write_fake_manifest(tmp_path, {"vision": GraphEntry(inputs=spec_in, outputs=spec_out, variants=variants)},
                        image_size=S, features=P, width=D)
    with pytest.raises(ManifestError, match=f"{tmp_path / 'vision.cpu-fp32.onnx'}: graph inputs: declares "
                                            "'pixel_values'"):
        make(str(tmp_path))
