"""Artifact fetches at replica start as a Ray metric: `mmserve_artifact_fetches_total{outcome}`, one increment per
replica start that resolved `model.artifacts_uri`.

    outcome="downloaded"  this replica downloaded and verified the artifact into its node's cache
    outcome="cached"      the node's cache already held it (another replica on the node fetched it first)

Each node's Prometheus endpoint exports the series of the replicas on it (Serve adds the deployment, replica and
application tags), so "downloads per node" is a sum over one node's series: one per node per artifact when the
cache works, more when nodes re-download (a cache_dir that is not node-persistent, or one shared by mistake).
"""

from __future__ import annotations

_COUNTER = None


def count_fetch(outcome: str) -> None:
    """Count one fetch; a no-op outside a Ray worker (a driver script resolving a URI has no metrics agent)."""
    global _COUNTER
    import ray

    if not ray.is_initialized():
        return
    from ray.serve.metrics import Counter  # adds deployment and replica tags inside a replica

    if _COUNTER is None:
        _COUNTER = Counter("mmserve_artifact_fetches_total", tag_keys=("outcome",),
                           description="replica starts that resolved model.artifacts_uri, by whether this node's "
                                       "cache already held the artifact (cached) or it was downloaded")
    _COUNTER.inc(tags={"outcome": outcome})
