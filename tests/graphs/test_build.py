"""The build command end to end on the tiny preset: artifact layout, manifest, atomicity, reproducibility, errors."""

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from graphs.build import BuildError, build_artifacts, ensure_artifacts
from graphs.cli import main
from graphs.families.own.config import PRESETS
from graphs.families.own.model import MultimodalModel
from graphs.families.own.weights import WeightsError, save_weights
from mmcore.manifest import CPU_EP, TENSORRT_EP, Manifest

TINY = PRESETS["tiny"]


def _hashes(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_artifact_dir_holds_exactly_what_the_manifest_names(tiny_artifacts):
    out, manifest = tiny_artifacts
    assert Manifest.read(out) == manifest
    named = {"manifest.json", manifest.tokenizer_file, manifest.decoder.embeddings.name}
    for entry in manifest.graphs.values():
        for v in entry.variants.values():
            named.add(v.file)
            assert hashlib.sha256((out / v.file).read_bytes()).hexdigest() == v.sha256
    assert {p.name for p in out.iterdir()} == named
    assert {p.name for p in out.parent.iterdir()} == {"tiny"}  # no temp dir left beside it


def test_manifest_describes_dims_io_and_variants(tiny_artifacts):
    out, manifest = tiny_artifacts
    d = TINY.decoder
    assert manifest.format_version == 2 and manifest.family == "own" and manifest.preset == "tiny"
    assert manifest.vision.features_per_image == manifest.prompt.image_features == TINY.num_image_tokens
    assert manifest.vision.image_size == TINY.vision.image_size and manifest.vision.preprocessing.resize == "crop"
    dec = manifest.decoder
    assert (dec.layers, dec.heads, dec.kv_heads, dec.head_dim, dec.hidden_size, dec.max_positions) == \
        (d.layers, d.heads, d.heads, d.head_dim, d.width, d.max_positions)
    assert dec.positions.scheme == "learned" and dec.io.position_ids == "position_ids"
    tok = Tokenizer.from_file(str(out / manifest.tokenizer_file))
    assert dec.eos_token_ids == [tok.token_to_id("<|end|>")]
    emb = np.load(out / dec.embeddings.name)
    assert emb.shape == (d.vocab_size, d.width) and emb.dtype == np.float32
    vision, decoder = manifest.graphs["vision"], manifest.graphs["decoder"]
    assert [(t.name, t.dtype, t.shape) for t in vision.inputs] == [("pixels", "uint8", ["batch", 3, 32, 32])]
    assert [(t.name, t.shape) for t in vision.outputs] == [("image_features", ["batch", 16, d.width])]
    assert decoder.outputs[0].name == "logits" and decoder.outputs[0].shape == ["batch", d.vocab_size]
    assert [t.name for t in decoder.inputs[:4]] == ["inputs_embeds", "position_ids", "seqlens_k",
                                                    "total_sequence_length"]
    assert {"cpu-fp32", "portable-fp32", "portable-fp16"} <= set(vision.variants)
    assert "cpu-fp32" in decoder.variants
    assert vision.variant_for(CPU_EP)[0].startswith("cpu-")
    assert vision.variant_for(TENSORRT_EP)[0].startswith("portable-")
    assert set(manifest.versions) == {"torch", "onnx", "onnxruntime"}


def test_build_is_reproducible(tiny_artifacts, tmp_path):
    out, _ = tiny_artifacts
    build_artifacts("tiny", tmp_path / "again")
    assert _hashes(tmp_path / "again") == _hashes(out)


def test_cli_builds_and_reports(tmp_path, capsys):
    assert main(["build", "--preset", "tiny", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert "graph variants passed the parity gate" in capsys.readouterr().out
    assert (tmp_path / "a" / "manifest.json").is_file()


def _cli_error(tmp_path, capsys, *args):
    code = main(["build", "--out", str(tmp_path / "out"), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("mmserve build: error:")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dir left behind
    return err


def test_unknown_preset_is_one_line_error(tmp_path, capsys):
    assert "unknown preset 'huge'" in _cli_error(tmp_path, capsys, "--preset", "huge")


def test_missing_weights_file_is_named(tmp_path, capsys):
    assert "nope.safetensors: weights file not found" in _cli_error(
        tmp_path, capsys, "--preset", "tiny", "--weights", str(tmp_path / "nope.safetensors"))


def test_corrupt_weights_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert "bad.safetensors: not a readable safetensors file" in _cli_error(
        tmp_path, capsys, "--preset", "tiny", "--weights", str(bad))


def test_wrong_tensor_shape_names_the_tensor(tmp_path, capsys):
    tensors = {k: v.contiguous() for k, v in MultimodalModel.seeded(TINY).state_dict().items()}
    tensors["decoder.lm_head.weight"] = torch.zeros(7, 64)
    save_file(tensors, str(tmp_path / "w.safetensors"))
    err = _cli_error(tmp_path, capsys, "--preset", "tiny", "--weights", str(tmp_path / "w.safetensors"))
    assert "'decoder.lm_head.weight' has shape (7, 64)" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir_is_named(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = main(["build", "--preset", "tiny", "--out", str(locked / "out"), "--quiet"])
    assert code != 0 and "cannot write output directory" in capsys.readouterr().err


def test_output_under_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = main(["build", "--preset", "tiny", "--out", str(tmp_path / "afile" / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "afile/out: cannot write output directory" in err and len(err.splitlines()) == 1


def test_given_weights_are_used_and_hashed(tmp_path):
    model = MultimodalModel.seeded(type(TINY)(**{**TINY.__dict__, "seed": 7}))
    save_weights(model, tmp_path / "w.safetensors")
    manifest = build_artifacts("tiny", tmp_path / "out", weights=tmp_path / "w.safetensors")
    emb = np.load(tmp_path / "out" / "token_embeddings.npy")
    assert np.array_equal(emb, model.decoder.wte.weight.detach().numpy())
    assert manifest.weights_sha256 == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()


def test_ensure_artifacts_reuses_a_complete_build(tmp_path):
    first = ensure_artifacts("tiny", tmp_path)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert ensure_artifacts("tiny", tmp_path) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp


def test_ensure_artifacts_rejects_bad_inputs(tmp_path):
    with pytest.raises(BuildError, match="unknown preset"):
        ensure_artifacts("huge", tmp_path)
    with pytest.raises(WeightsError, match="weights file not found"):
        ensure_artifacts("tiny", tmp_path, weights=tmp_path / "missing.safetensors")


def test_two_processes_ensuring_at_once_build_once(tmp_path):
    """Two processes ask for the same artifacts at the same moment: one builds, the other waits and reuses it."""
    import subprocess
    import sys

    script = ("import sys; from graphs.build import ensure_artifacts\n"
              "log = open(sys.argv[2], 'a')\n"
              "p = ensure_artifacts('tiny', sys.argv[1], progress=lambda s: (log.write(s + '\\n'), log.flush()))\n"
              "print(p)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache"), str(tmp_path / f"log{i}")],
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    paths = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1
    builds = sum((tmp_path / f"log{i}").read_text().count("load weights") for i in range(2)
                 if (tmp_path / f"log{i}").exists())
    assert builds == 1


def test_given_tokenizer_is_copied_and_checked(tmp_path):
    from graphs.families.own.tokenizer import build_tokenizer

    tok_path = tmp_path / "tok.json"
    build_tokenizer(TINY.decoder.vocab_size, corpus=["a different corpus gives different merges"]).save(str(tok_path))
    manifest = build_artifacts("tiny", tmp_path / "out", tokenizer=tok_path)
    assert (tmp_path / "out" / manifest.tokenizer_file).read_bytes() == tok_path.read_bytes()
    wrong = tmp_path / "wrong.json"
    build_tokenizer(1024).save(str(wrong))
    with pytest.raises(BuildError, match="wrong.json: tokenizer has 1024 tokens"):
        build_artifacts("tiny", tmp_path / "out2", tokenizer=wrong)
    assert not (tmp_path / "out2").exists()


def test_rebuilding_replaces_an_existing_artifact_dir(tmp_path):
    build_artifacts("tiny", tmp_path / "out")
    (tmp_path / "out" / "stale.onnx").write_text("old")
    build_artifacts("tiny", tmp_path / "out")
    assert not (tmp_path / "out" / "stale.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_demo_preset_builds_the_shipped_llava_checkpoint(demo_artifacts):
    """`--preset demo` is `--hf graphs/assets/demo-llava` under the name demo: the LLaVA family, its files."""
    from graphs.families.llava import SHIPPED

    manifest = Manifest.read(demo_artifacts)
    assert manifest.family == "llava" and manifest.preset == "demo"
    assert manifest.source["directory"] == SHIPPED["demo"].name  # a name, not this checkout's path
    assert (demo_artifacts / "tokenizer.json").read_bytes() == (SHIPPED["demo"] / "tokenizer.json").read_bytes()
    assert "demo" not in PRESETS  # the own family no longer claims it


def test_checkpoint_cache_key_is_its_content(tmp_path):
    from graphs.build import checkpoint_sha256
    from graphs.families.llava import SHIPPED

    a, b = tmp_path / "a" / "demo-llava", tmp_path / "b" / "demo-llava"
    shutil.copytree(SHIPPED["demo"], a)
    shutil.copytree(SHIPPED["demo"], b)
    assert checkpoint_sha256(a) == checkpoint_sha256(b) == checkpoint_sha256(SHIPPED["demo"])
    (b / "chat_template.jinja").write_text((b / "chat_template.jinja").read_text() + " ")
    assert checkpoint_sha256(a) != checkpoint_sha256(b)


def test_refuses_to_replace_what_is_not_an_artifact_dir(tmp_path, capsys):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code = main(["build", "--preset", "tiny", "--out", str(precious), "--quiet"])
    assert code != 0 and "not an artifact directory" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildError, match="exists and is not a directory"):
        build_artifacts("tiny", tmp_path / "file")


def test_a_cache_hit_does_not_import_torch(tmp_path):
    """Serving replicas call ensure_artifacts at start; on a hit they must not pay torch's import time and memory."""
    import subprocess
    import sys

    ensure_artifacts("tiny", tmp_path)
    code = ("import sys; from graphs.build import ensure_artifacts; "
            f"ensure_artifacts('tiny', {str(tmp_path)!r}); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_corrupt_tokenizer_file_is_named(tmp_path, capsys):
    bad = tmp_path / "tok.json"
    bad.write_text("{not json")
    assert "tok.json: not a readable tokenizer.json" in _cli_error(
        tmp_path, capsys, "--preset", "tiny", "--tokenizer", str(bad))


def test_named_int8_variants_bring_the_fp32_pair_their_gate_runs(tmp_path):
    """The own family's gate checks greedy decoding through an fp32 pair: asking for int8 variants alone builds and
    gates that pair too (it failed with a KeyError on the missing partner)."""
    manifest = build_artifacts("tiny", tmp_path / "out", variants=["vision/cpu-int8", "decoder/cpu-int8"])
    assert {g: sorted(e.variants) for g, e in manifest.graphs.items()} == {
        "vision": ["cpu-fp32", "cpu-int8"], "decoder": ["cpu-fp32", "cpu-int8"]}
