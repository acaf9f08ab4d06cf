"""The Grafana dashboard and the Prometheus config stay in step with the code: a row per stage with the panels an
operator needs, and every mmserve series the dashboard plots is one the code defines. (That Ray really exports each
plotted series is checked on a live instance in the e2e observability tests.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
DASHBOARD = json.loads((ROOT / "cluster" / "grafana" / "mmserve-dashboard.json").read_text())
STAGE_ROWS = {"ingress (Ingress)", "preprocess (Preprocess)", "vision (VisionEncoder)", "decoder (Decoder)"}


def rows() -> dict[str, list[str]]:
    """Row title -> titles of the panels under it."""
    out: dict[str, list[str]] = {}
    current = None
    for panel in DASHBOARD["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            out[current] = []
        else:
            out[current].append(panel["title"])
    return out


def defined_metric_names() -> set[str]:
    source = "\n".join(p.read_text() for p in (ROOT / "serve_app").rglob("*.py"))
    return set(re.findall(r'"(mmserve_[a-z_]+)"', source))


def test_one_row_per_stage_with_throughput_latency_fill_replicas_queue():
    by_row = rows()
    assert STAGE_ROWS <= set(by_row)
    for row in STAGE_ROWS:
        titles = " | ".join(by_row[row])
        assert "Throughput" in titles and "Latency percentiles" in titles and "Replicas and queue" in titles, row
    assert "Batch fill" in by_row["vision (VisionEncoder)"] and "Batch fill" in by_row["decoder (Decoder)"]


def test_every_plotted_mmserve_series_is_defined_in_the_code():
    text = json.dumps(DASHBOARD)
    plotted = {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"ray_(mmserve_[a-z_]+[a-z])", text)}
    assert plotted, "the dashboard plots no mmserve series"
    assert plotted <= defined_metric_names(), sorted(plotted - defined_metric_names())


def test_every_target_uses_the_datasource_variable_and_application_filter():
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'application=~"$application"' in target["expr"], target["expr"]


def test_prometheus_scrapes_ray_service_discovery():
    config = yaml.safe_load((ROOT / "cluster" / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]  # one job: two would scrape every node twice
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]


def test_readme_points_at_the_observability_docs():
    assert "docs/observability.md" in (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "observability.md").is_file()
