"""Reading Ray's Prometheus export in tests: scrape the node's metrics agent, parse the text format, sum series."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics_url() -> str:
    """The export port of the (single) node's metrics agent: Ray picks one at start when none is given."""
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            samples.append((m["name"], dict(_LABEL.findall(m["labels"] or "")), float(m["value"])))
    return samples


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    return parse(httpx.get(url, timeout=10).text)


def total(samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels` (replicas, workers...)."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == want for k, want in labels.items()))


def wait_for(url: str, ready: Callable[[list], bool], timeout_s: float = 60.0) -> list:
    """Scrape until `ready(samples)`: replicas push metrics to the agent every few seconds."""
    deadline = time.monotonic() + timeout_s
    samples: list = []
    while time.monotonic() < deadline:
        samples = scrape(url)
        if ready(samples):
            return samples
        time.sleep(1.0)
    return samples  # the caller's assertions say what is missing


def integer_sum(samples, name: str, **labels: str) -> float:
    """Sum of the observations of a histogram whose buckets are exact up to its largest observation: one bucket
    per integer (`le` 1, 2, 3, ...). Ray exports `_sum` from bucket midpoints, an approximation, so exact
    checks read the buckets."""
    cumulative: dict[float, float] = {}
    for n, lab, v in samples:
        if n == f"{name}_bucket" and all(lab.get(k) == want for k, want in labels.items()):
            le = float(lab["le"])
            cumulative[le] = cumulative.get(le, 0.0) + v
    total_sum, previous, below = 0.0, 0.0, 0.0
    for le in sorted(cumulative):
        in_bucket, exact = cumulative[le] - below, le != float("inf") and le == int(le) and le - previous == 1
        if in_bucket and not exact:
            raise ValueError(f"{name}: observations in bucket le={le} are not exact integers")
        total_sum += le * in_bucket if in_bucket else 0.0
        previous, below = le, cumulative[le]
    return total_sum
