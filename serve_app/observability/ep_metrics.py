"""The EP a stage's replica actually runs on, as a Ray metric: one gauge series per (stage, provider) set to 1.

Serve adds the deployment and replica tags. A dashboard panel on `mmserve_active_execution_provider` shows at a
glance when GPU replicas silently run on CPU.
"""

from __future__ import annotations

_GAUGE = None


def report_active_ep(stage: str, provider: str, variant: str | None, int8: str | None = None) -> None:
    """Set the gauge for this replica. Must run inside a Ray worker (a replica's __init__). `int8`: the weight
    encoding an int8 variant runs on this CPU (u8s8 or u8u8, mmcore/runtime/int8_kernels.py), "" otherwise."""
    global _GAUGE
    from ray.serve.metrics import Gauge  # adds deployment and replica tags; imported here for Ray-free unit tests

    if _GAUGE is None:
        _GAUGE = Gauge("mmserve_active_execution_provider",
                       description="1 for the ONNX Runtime execution provider this replica's stage session runs on",
                       tag_keys=("stage", "provider", "variant", "int8"))
    _GAUGE.set(1, tags={"stage": stage, "provider": provider, "variant": variant or "", "int8": int8 or ""})
