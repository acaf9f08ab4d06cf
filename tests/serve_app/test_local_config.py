"""configs/local.yaml is a valid Serve config whose args validate, whose import path is the builder, and whose
deployment entries name deployments the builder creates (a typo would silently configure nothing)."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import parse_args

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"
STAGES = {"Ingress", "Preprocess", "VisionEncoder", "Decoder"}


def load() -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))


def test_schema_and_args_validate():
    (app,) = load().applications
    args = parse_args(app.args)
    assert args.model.preset == "demo" and app.route_prefix == "/"


def test_import_path_is_the_builder():
    (app,) = load().applications
    module, _, attr = app.import_path.partition(":")
    from serve_app.builder import build_app
    assert getattr(importlib.import_module(module), attr) is build_app


def test_deployment_names_and_fractional_cpus_fit_one_small_machine():
    (app,) = load().applications
    names = {d.name for d in app.deployments}
    assert names == STAGES
    cpus = {d.name: d.ray_actor_options.num_cpus for d in app.deployments}
    assert all(0 < c < 1 for c in cpus.values()) and sum(cpus.values()) <= 2.0
    vision = next(d for d in app.deployments if d.name == "VisionEncoder")
    assert vision.max_ongoing_requests >= app.args["vision"]["max_batch_size"]  # batching's one place: the args
    assert "user_config" not in vision.model_fields_set  # not a second place for it
