"""generation_config.json: its sampling keys read at build into the manifest's DecoderSpec.generation (do_sample
false = greedy), a key of the wrong type or range refused naming the file and key, and the parity gate unmoved by
the checkpoint's defaults (its reference is the raw model's greedy, as the graph's is)."""

from __future__ import annotations

import json

import pytest

from graphs.build import BuildError, build_artifacts
from graphs.families.llava.checkpoint import CheckpointError, read_checkpoint
from mmcore.manifest import GenerationDefaults, Manifest


def write_generation(ck, **keys) -> None:
    path = ck / "generation_config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(data | keys))


def test_keys_saved_by_transformers_are_read(clip_llama, copy_of):
    from transformers import GenerationConfig

    ck = copy_of(clip_llama)
    GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.1,
                     max_new_tokens=30, eos_token_id=[2, 5]).save_pretrained(ck)
    read = read_checkpoint(ck)
    assert read.generation == dict(temperature=0.6, top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.1,
                                   max_new_tokens=30)
    assert read.eos_token_ids == (2, 5)


def test_do_sample_false_means_greedy_and_absent_keys_stay_absent(clip_llama, copy_of):
    ck = copy_of(clip_llama)
    assert read_checkpoint(ck).generation == {}  # save_pretrained's file: bos/eos only
    write_generation(ck, do_sample=False, temperature=0.7, top_p=0.8)
    assert read_checkpoint(ck).generation == dict(temperature=0.0, top_p=0.8)
    write_generation(ck, do_sample=True)
    assert read_checkpoint(ck).generation["temperature"] == 0.7


@pytest.mark.parametrize("key,value,needle", [
    ("temperature", "hot", "expected float"), ("top_k", 2.5, "expected int"), ("do_sample", "no", "expected bool"),
    ("top_p", 1.5, "not in (0, 1]"), ("repetition_penalty", 0, "not > 0"), ("max_new_tokens", 0, "not >= 1"),
    ("eos_token_id", ["2"], "expected a token id"), ("min_p", True, "expected float")])
def test_a_bad_key_is_a_build_error_naming_the_file_and_key(clip_llama, copy_of, tmp_path, key, value, needle):
    ck = copy_of(clip_llama)
    write_generation(ck, **{key: value})
    out = tmp_path / "out"
    with pytest.raises((BuildError, CheckpointError)) as e:
        build_artifacts(ck, out)
    msg = str(e.value)
    assert "\n" not in msg and "generation_config.json" in msg and f"{key}:" in msg and needle in msg, msg
    assert not out.exists()


def test_the_manifest_carries_the_defaults_and_the_gate_passes(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    # a repetition penalty the reference's generate() would apply to its greedy tokens if it read the file
    write_generation(ck, do_sample=False, top_k=20, repetition_penalty=1.3, max_new_tokens=9)
    out = tmp_path / "artifacts"
    build_artifacts(ck, out, variants=["vision/cpu-fp32", "decoder/cpu-fp32"])
    assert Manifest.read(out).decoder.generation == GenerationDefaults(temperature=0.0, top_k=20,
                                                                       repetition_penalty=1.3, max_new_tokens=9)


def test_a_manifest_without_defaults_reads_as_none_set():
    assert GenerationDefaults().model_dump() == dict.fromkeys(GenerationDefaults.model_fields)
