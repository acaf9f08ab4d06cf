"""`build_app(args) -> Application`: the one entry point Serve config files name in `import_path`.

    args (dict) --validate--> AppArgs
      -> Preprocess, VisionEncoder, Decoder deployments (each its own replicas and resources)
      -> Ingress bound to their handles

The builder never builds and never reads artifacts: it may run on a node whose disk is not the replicas'. Each
replica resolves the model source itself at start (serve_app/artifacts.py).

Resources, replica counts and autoscaling come from the config file's `deployments:` entries, which override the
code defaults by deployment name (Ingress, Preprocess, VisionEncoder, Decoder).

Upgrades: a redeploy with another model source restarts every replica. `max_surge_percent=100` starts each new
replica before its old one stops (Serve's default stops first: a one-replica stage would go away for its whole
start), so old and new replicas overlap; the model key on every stage call keeps a request on one model.
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
SURGE = 100  # percent of a deployment's replicas started anew before old ones stop, in a rolling update


def build_app(args: dict | AppArgs | None = None) -> Application:
    """Validate `args` (a bad field fails here, named) and bind the four stages to the model source."""
    cfg = parse_args(args)
    source = cfg.model.model_dump()
    log.info("mmserve: serving %s", cfg.model.artifacts_uri or cfg.model.artifacts_dir or f"preset {cfg.model.preset}")
    preprocess = Preprocess.options(max_surge_percent=SURGE).bind(source, cfg.preprocess.model_dump())
    vision = VisionEncoder.options(user_config=cfg.vision.batching(), max_surge_percent=SURGE).bind(
        source, cfg.vision.model_dump())
    decoder = Decoder.options(max_surge_percent=SURGE).bind(source, cfg.decoder)
    return Ingress.options(max_surge_percent=SURGE).bind(source, cfg.ingress.model_dump(), cfg.decoder.max_context,
                                                        preprocess, vision, decoder)
