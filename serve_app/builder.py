"""`build_app(args) -> Application`: the one entry point Serve config files name in `import_path`.

    args (dict) --validate--> AppArgs --resolve--> artifact dir (built on first start when missing)
      -> Preprocess, VisionEncoder, Decoder deployments (each its own replicas and resources)
      -> Ingress bound to their handles

Resources, replica counts and autoscaling come from the config file's `deployments:` entries, which override the
code defaults by deployment name (Ingress, Preprocess, VisionEncoder, Decoder).
"""

from __future__ import annotations

import logging

from ray.serve import Application

from graphs.manifest import Manifest
from serve_app.config import AppArgs, parse_args, resolve_artifacts
from serve_app.api.ingress import Ingress
from serve_app.stages.decoder import Decoder
from serve_app.stages.preprocess import Preprocess
from serve_app.stages.vision import VisionEncoder

log = logging.getLogger("ray.serve")


def build_app(args: dict | AppArgs | None = None) -> Application:
    """Validate `args` (a bad field fails here, named), make sure the artifacts exist, bind the four stages."""
    cfg = parse_args(args)
    artifacts = resolve_artifacts(cfg.model)
    manifest = Manifest.read(artifacts)
    model_name = cfg.model.name(manifest.preset)
    log.info("mmserve: serving %s from %s", model_name, artifacts)
    preprocess = Preprocess.bind(manifest.image_size, cfg.preprocess.model_dump())
    vision = VisionEncoder.options(user_config={"max_batch_size": cfg.vision.max_batch_size,
                                                "batch_wait_timeout_s": cfg.vision.batch_wait_timeout_s}
                                   ).bind(str(artifacts), cfg.vision.model_dump())
    decoder = Decoder.bind(str(artifacts), cfg.decoder)
    return Ingress.bind(str(artifacts), model_name, cfg.ingress.model_dump(), preprocess, vision, decoder)
