"""`build_app(args) -> Application`: the one entry point Serve config files name in `import_path`.

    args (dict) --validate--> AppArgs
      -> Preprocess, VisionEncoder, Decoder deployments (each its own replicas and resources)
      -> Ingress bound to their handles

The builder never builds and never reads artifacts: it may run on a node whose disk is not the replicas'. Each
replica resolves the model source itself at start (serve_app/artifacts.py).

Resources, replica counts and autoscaling come from the config file's `deployments:` entries, which override the
code defaults by deployment name (Ingress, Preprocess, VisionEncoder, Decoder).
"""

from __future__ import annotations

import logging

from ray.serve import Application

from serve_app.config import AppArgs, parse_args
from serve_app.api.ingress import Ingress
from serve_app.stages.decoder import Decoder
from serve_app.stages.preprocess import Preprocess
from serve_app.stages.vision import VisionEncoder

log = logging.getLogger("ray.serve")


def build_app(args: dict | AppArgs | None = None) -> Application:
    """Validate `args` (a bad field fails here, named) and bind the four stages to the model source."""
    cfg = parse_args(args)
    source = cfg.model.model_dump()
    log.info("mmserve: serving %s", cfg.model.artifacts_dir or f"preset {cfg.model.preset}")
    preprocess = Preprocess.bind(source, cfg.preprocess.model_dump())
    vision = VisionEncoder.options(user_config=cfg.vision.batching()).bind(source, cfg.vision.model_dump())
    decoder = Decoder.bind(source, cfg.decoder)
    return Ingress.bind(source, cfg.ingress.model_dump(), cfg.decoder.max_context, preprocess, vision, decoder)
