"""Fixtures for EP-resolution tests: a tiny real vision-shaped graph in two variants, and a stand-in for ORT
sessions on a GPU that this machine does not have. Fixtures rather than an importable helper module, so the tests
work whatever package layout the neighbouring test folders use."""

from __future__ import annotations

from pathlib import Path

import pytest

import onnx
from onnx import TensorProto, helper

from mmcore.manifest import CPU_EP, CUDA_EP, TENSORRT_EP, GraphEntry, TensorSpec, Variant
from tests.fake_manifest import write_fake_manifest

IMAGE = 8  # tiny square image: the graphs only need the vision signature, not a model
PORTABLE_SCALE, CPU_SCALE = 2.0, 1.0  # each variant scales differently, so outputs tell which file ran


def _write_scale_graph(path: Path, scale: float) -> None:
    """pixels uint8 (batch,3,H,W) -> image_features float32 (batch,3,H,W) = pixels * scale."""
    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 3, IMAGE, IMAGE])
    out = helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["batch", 3, IMAGE, IMAGE])
    nodes = [helper.make_node("Cast", ["pixels"], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["as_float", "scale"], ["image_features"])]
    init = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])]
    model = helper.make_model(helper.make_graph(nodes, "scale", [pixels], [out], init),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx 1.23 writes 14 by default; ORT 1.31 reads at most 13
    onnx.save(model, str(path))


def vision_graph(directory: Path) -> GraphEntry:
    """A manifest entry like the real vision graph's: a portable variant for TRT/CUDA, a CPU one."""
    _write_scale_graph(directory / "vision.portable.onnx", PORTABLE_SCALE)
    _write_scale_graph(directory / "vision.cpu-fp32.onnx", CPU_SCALE)
    return GraphEntry(
        inputs=[TensorSpec(name="pixels", dtype="uint8", shape=["batch", 3, IMAGE, IMAGE])],
        outputs=[TensorSpec(name="image_features", dtype="float32", shape=["batch", 3, IMAGE, IMAGE])],
        variants={
            "portable": Variant(file="vision.portable.onnx", sha256="0", providers=[TENSORRT_EP, CUDA_EP],
                                precision="fp32"),
            "cpu-fp32": Variant(file="vision.cpu-fp32.onnx", sha256="0", providers=[CPU_EP], precision="fp32"),
        })


class FakeGPUSession:
    """Stands in for an InferenceSession on a GPU host. `loadable` are the EPs whose libraries 'work' there: like
    ORT, an EP asked for but not loadable is dropped silently and the rest come up."""

    def __init__(self, path, options, providers, loadable=(TENSORRT_EP, CUDA_EP, CPU_EP), raise_for=()):
        self.path, self.entries = path, providers
        names = [e[0] if isinstance(e, tuple) else e for e in providers]
        if names[0] in raise_for:
            raise RuntimeError(f"[ONNXRuntimeError] {names[0]}: engine build failed")
        self._active = [n for n in names if n in loadable]

    def get_providers(self) -> list[str]:
        return self._active


@pytest.fixture
def vision_dir(tmp_path) -> tuple[Path, GraphEntry]:
    return tmp_path, vision_graph(tmp_path)


@pytest.fixture
def vision_artifacts(tmp_path) -> str:
    """An artifact directory with a manifest whose only graph is the two-variant vision graph."""
    write_fake_manifest(tmp_path, {"vision": vision_graph(tmp_path)}, image_size=IMAGE, features=3 * IMAGE,
                        width=IMAGE)
    return str(tmp_path)


@pytest.fixture
def gpu_host():
    """make(loadable=..., raise_for=...) -> a session factory; `.created` lists the sessions it made, in order."""
    created: list[FakeGPUSession] = []

    def make(**kwargs):
        def factory(path, options, providers):
            session = FakeGPUSession(path, options, providers, **kwargs)
            created.append(session)
            return session
        return factory
    make.created = created
    return make


@pytest.fixture
def gpu_build_available():
    """What onnxruntime-gpu reports on a GPU node: the EPs are compiled in, whether or not their libraries load."""
    return lambda: [TENSORRT_EP, CUDA_EP, CPU_EP]
