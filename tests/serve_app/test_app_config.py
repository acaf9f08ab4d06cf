"""Application args: every field described, bad config fails before deploy naming the field."""

from __future__ import annotations

import os

import pytest
from pydantic import BaseModel, ValidationError

from serve_app.artifacts import ArtifactsError, resolve_model
from serve_app.config import API_KEYS_ENV, AppArgs, ConfigError, IngressOptions, ModelSource, parse_args
from serve_app.stages.options import DecoderOptions, VisionOptions


def all_fields(model: type[BaseModel], prefix=""):
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from all_fields(ann, f"{prefix}{name}.")


def test_every_field_has_a_description():
    missing = [name for name, f in all_fields(AppArgs) if not f.description]
    assert missing == []


def test_defaults_serve_the_demo_model():
    args = parse_args({})
    assert args.model.preset == "demo" and args.model.name() == "mmserve-demo"
    assert args.model.name("tiny") == "mmserve-tiny"  # prebuilt artifacts name the model after their preset
    assert parse_args({"model": {"served_name": "captioner"}}).model.name("tiny") == "captioner"


@pytest.mark.parametrize("args,field", [
    ({"vision": {"max_batch_size": 0}}, "vision.max_batch_size"),
    ({"model": {"preset": "huge"}}, "model.preset"),
    ({"decoder": {"slots": "many"}}, "decoder.slots"),
    ({"preprocess": {"max_image_bytes": -1}}, "preprocess.max_image_bytes"),
    ({"preprocess": {"max_bytes": 5}}, "preprocess.max_bytes"),
    ({"ingress": {"api_keys": "abc"}}, "ingress.api_keys"),
    ({"vison": {}}, "vison"),
])
def test_bad_args_name_the_field(args, field):
    with pytest.raises(ConfigError) as e:
        parse_args(args)
    assert f"{field}:" in str(e.value)


def test_api_keys_from_config_and_env(monkeypatch):
    monkeypatch.setenv(API_KEYS_ENV, " k2 , k3,")
    assert IngressOptions(api_keys=["k1"]).keys() == {"k1", "k2", "k3"}
    monkeypatch.delenv(API_KEYS_ENV)
    assert IngressOptions().keys() == frozenset()


def test_a_checkpoint_that_is_not_llava_is_refused_naming_the_field(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    for bad in (tmp_path, tmp_path / "missing"):
        with pytest.raises(ConfigError, match=r"model\.checkpoint: .*(model_type|not a checkpoint directory)"):
            parse_args({"model": {"checkpoint": str(bad)}})


def test_a_llava_checkpoint_is_served_under_its_folder_name():
    from graphs.families.llava import SHIPPED

    model = parse_args({"model": {"checkpoint": str(SHIPPED["demo"])}}).model
    assert model.checkpoint == str(SHIPPED["demo"]) and model.name() == "mmserve-demo-llava"


def test_artifacts_dir_without_manifest_is_named(tmp_path):
    with pytest.raises(ArtifactsError, match="model.artifacts_dir"):
        resolve_model(ModelSource(artifacts_dir=str(tmp_path)))


def test_decoder_admission_is_checked_against_the_deployed_max_ongoing_requests():
    # A config file may raise the Decoder's max_ongoing_requests: the args alone cannot refuse 1000 + 64 ...
    opts = DecoderOptions(slots=1000, max_queue=64)
    opts.check_admission(2048)
    # ... and a lowered one must refuse what the code default would have let through.
    with pytest.raises(ValueError, match="max_ongoing_requests 8"):
        DecoderOptions(slots=4, max_queue=8).check_admission(8)


@pytest.mark.parametrize("options", [VisionOptions, DecoderOptions])
def test_threads_auto_is_every_core_the_replica_may_run_on(options):
    """`auto` travels as the word (a config validated by the driver must not carry the driver's core count to a
    replica on another node) and is resolved where the replica runs, from its CPU affinity."""
    auto = options.model_validate({"threads": "auto"})
    assert auto.model_dump()["threads"] == "auto"
    assert auto.ort_threads == len(os.sched_getaffinity(0))
    assert options.model_validate({"threads": 3}).ort_threads == 3
    for bad in (0, "all", 1.5):
        with pytest.raises(ValidationError, match="threads"):
            options.model_validate({"threads": bad})
