"""Reading a manifest: another format version, a missing field or a graph whose tensors differ from the declared
ones is a one-line error naming the file and the field, at replica start."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphs.emit.onnx_ops import IR_VERSION
from mmcore.manifest import MANIFEST, GraphEntry, Manifest, ManifestError, TensorSpec, check_session_io
from tests.fake_manifest import write_fake_manifest


def _write(tmp_path, data: dict) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps(data))


def test_an_older_format_asks_for_a_rebuild(tmp_path):
    write_fake_manifest(tmp_path, {}, image_size=4, features=2, width=8)
    data = json.loads((tmp_path / MANIFEST).read_text())
    _write(tmp_path, {**data, "format_version": 1})
    with pytest.raises(ManifestError) as e:
        Manifest.read(tmp_path)
    assert str(e.value) == (f"{tmp_path / MANIFEST}: format_version 1, this mmserve reads 2; rebuild with "
                            "`mmserve build`")


def test_a_v1_manifest_is_not_a_key_error(tmp_path):
    _write(tmp_path, {"preset": "tiny", "model": {"decoder": {}}, "num_image_tokens": 16})  # v1 had no version field
    with pytest.raises(ManifestError, match="format_version 1"):
        Manifest.read(tmp_path)


def test_a_missing_field_is_named(tmp_path):
    write_fake_manifest(tmp_path, {}, image_size=4, features=2, width=8)
    data = json.loads((tmp_path / MANIFEST).read_text())
    del data["decoder"]["kv_heads"]
    _write(tmp_path, data)
    with pytest.raises(ManifestError) as e:
        Manifest.read(tmp_path)
    assert str(e.value) == f"{tmp_path / MANIFEST}: decoder.kv_heads: Field required"


def _session(tmp_path, in_name: str, in_type=TensorProto.UINT8) -> ort.InferenceSession:
    graph = helper.make_graph([helper.make_node("Cast", [in_name], ["image_features"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info(in_name, in_type, ["batch", 4])],
                              [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    path = tmp_path / "vision.x.onnx"
    onnx.save(model, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


ENTRY = GraphEntry(inputs=[TensorSpec(name="pixels", dtype="uint8", shape=["batch", 4])],
                   outputs=[TensorSpec(name="image_features", dtype="float32", shape=["batch", 4])], variants={})


def test_graph_tensors_match_the_manifest(tmp_path):
    check_session_io(tmp_path / "vision.x.onnx", ENTRY, _session(tmp_path, "pixels"))


@pytest.mark.parametrize("name,dtype,message", [
    ("image", TensorProto.UINT8, "graph inputs: declares 'pixels', the graph has no such tensor"),
    ("pixels", TensorProto.FLOAT, "graph inputs: 'pixels' is float32 in the graph, uint8 in the manifest"),
])
def test_a_graph_that_differs_from_the_manifest_is_named(tmp_path, name, dtype, message):
    path = tmp_path / "vision.x.onnx"
    with pytest.raises(ManifestError) as e:
        check_session_io(path, ENTRY, _session(tmp_path, name, dtype))
    assert str(e.value) == f"{path}: {message}"
