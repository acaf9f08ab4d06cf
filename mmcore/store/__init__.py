"""Artifacts at a URI (s3://, gs://, file://, a path): fetched into a node-local verified cache, pushed manifest last.

    fetch_artifacts(uri, cache_dir) -> Path   what a replica calls at start; the local directory to serve
    push_artifacts(dir, uri, force=False)     what `mmserve push` calls
    artifact_key(dir) -> str                  sha256 of the manifest: the artifact's identity (to tag stage calls)

Imports neither ray nor torch; s3:// and gs:// need the [s3] extra (boto3), a path needs nothing.
"""

from mmcore.store.fetch import artifact_key, fetch_artifacts, fetch_events
from mmcore.store.push import push_artifacts
from mmcore.store.retry import RetryPolicy
from mmcore.store.uri import StoreError, parse_uri

__all__ = ["RetryPolicy", "StoreError", "artifact_key", "fetch_artifacts", "fetch_events", "parse_uri", "push_artifacts"]
