"""mmserve's Ray Serve application: an OpenAI-compatible ingress orchestrating preprocess, vision and decoder
stages, each its own deployment. Config files point at `serve_app:build_app`.

The names are resolved lazily so that importing a submodule (the engine, a stage) does not import Ray Serve and
every stage with it.
"""

from __future__ import annotations

__all__ = ["AppArgs", "ConfigError", "build_app"]


def __getattr__(name: str):
    if name == "build_app":
        from serve_app.builder import build_app

        return build_app
    if name in ("AppArgs", "ConfigError"):
        from serve_app import config

        return getattr(config, name)
    raise AttributeError(f"module 'serve_app' has no attribute {name!r}")
