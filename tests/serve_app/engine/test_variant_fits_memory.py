"""The decoder's default variant order: the float KV cache first (cheaper prefill), the int8 cache only where the
float one would not fit the node's available memory, with a warning; a plan that fits neither fails naming the
fields, as before. Real tiny artifacts; only the node's available memory is stood in for."""

from __future__ import annotations

import logging

import pytest

from mmcore.manifest import Manifest
from serve_app.engine import loader
from serve_app.engine.config import EngineConfig
from serve_app.engine.kv_plan import KvPlanError, bytes_per_position

SLOTS = 4


def _cache_bytes(artifacts, variant: str) -> int:
    man = Manifest.read(artifacts)
    per_position = bytes_per_position(man.decoder, man.graphs["decoder"].variants[variant].kv_cache)
    return (SLOTS + 1) * man.decoder.max_positions * per_position


def _open(artifacts, monkeypatch, available: int | None):
    monkeypatch.setattr(loader, "available_memory_bytes", lambda: available)
    return loader.open_planned_runner(artifacts, EngineConfig(slots=SLOTS))


def test_the_float_cache_variant_comes_first(tiny_artifacts_dir, monkeypatch):
    assert _open(tiny_artifacts_dir, monkeypatch, None).variant == "cpu-int8"


def test_the_int8_cache_takes_over_where_the_float_one_does_not_fit(tiny_artifacts_dir, monkeypatch, caplog):
    float_bytes, int8_bytes = _cache_bytes(tiny_artifacts_dir, "cpu-int8"), _cache_bytes(tiny_artifacts_dir,
                                                                                         "cpu-int8-kv8")
    assert int8_bytes < float_bytes
    with caplog.at_level(logging.WARNING, logger="serve_app.engine.loader"):
        opened = _open(tiny_artifacts_dir, monkeypatch, (int8_bytes + float_bytes) // 2)
    assert (opened.variant, opened.plan.slots) == ("cpu-int8-kv8", SLOTS)
    assert any("cpu-int8 does not fit" in r.getMessage() and "trying cpu-int8-kv8" in r.getMessage()
               for r in caplog.records)


def test_a_cache_that_fits_no_variant_fails_naming_the_fields(tiny_artifacts_dir, monkeypatch):
    with pytest.raises(KvPlanError, match="decoder.slots 4 x decoder.max_context .* set decoder.kv_cache_gib"):
        _open(tiny_artifacts_dir, monkeypatch, 1024)
