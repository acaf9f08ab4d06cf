"""Continuous-batching decoder engine (no Ray inside): the Decoder stage wraps it in a deployment."""

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import Engine
from serve_app.engine.loader import load_engine
from serve_app.engine.metrics import EngineMetrics, NullMetrics

__all__ = ["Engine", "EngineConfig", "EngineMetrics", "NullMetrics", "load_engine"]
