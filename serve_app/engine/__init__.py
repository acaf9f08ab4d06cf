"""Continuous-batching decoder engine (no Ray inside): the Decoder stage wraps it in a deployment.

The names are resolved lazily, so that importing `serve_app.engine.config` (the stage options do, to validate an
application's args) does not load the engine's loader and ONNX Runtime with it.
"""

from __future__ import annotations

import importlib

__all__ = ["Engine", "EngineConfig", "EngineMetrics", "NullMetrics", "load_engine"]

_WHERE = {"Engine": "engine", "EngineConfig": "config", "EngineMetrics": "metrics", "NullMetrics": "metrics",
          "load_engine": "loader"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'serve_app.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"serve_app.engine.{_WHERE[name]}"), name)
