"""Artifact URIs: where a built artifact directory lives, and the errors every store operation raises.

    s3://bucket/prefix   any S3-compatible store; the endpoint comes from AWS_ENDPOINT_URL (or an explicit override)
    file:///abs/path     a directory on a filesystem every node mounts (NFS, a hostPath)
    /abs/path, rel/path  the same as file://
    gs://bucket/prefix   refused with a pointer to GCS's S3-compatible endpoint (see `parse_uri`)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse


class StoreError(RuntimeError):
    """One line naming the URI or file at fault; a fetch or push that raises it leaves nothing to be trusted."""


class TransientStoreError(StoreError):
    """A failure worth retrying (connection refused or reset, timeout, 5xx, throttling)."""


@dataclass(frozen=True)
class ArtifactURI:
    scheme: str  # "s3" or "file"
    bucket: str  # s3 only; "" for file
    prefix: str  # s3: key prefix without slashes at either end; file: absolute directory path
    text: str  # the URI as given, for messages

    def key(self, name: str) -> str:
        """The object key (s3) or path (file) of file `name` inside the artifact."""
        if self.scheme == "file":
            return str(Path(self.prefix) / name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def __str__(self) -> str:
        return self.text


def parse_uri(uri: str) -> ArtifactURI:
    """Parse `uri`; anything but s3://, file:// or a path is a one-line StoreError naming it."""
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError(f"artifacts_uri {uri!r}: empty; give s3://bucket/prefix, file:///path or a path")
    text = uri.strip()
    if "://" not in text:
        return ArtifactURI("file", "", str(Path(text).expanduser().resolve()), text)
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"{text}: file:// URIs name a local path (file:///abs/path), not host {parsed.netloc!r}")
        return ArtifactURI("file", "", str(Path(unquote(parsed.path)).resolve()), text)
    if scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"{text}: no bucket; expected s3://bucket/prefix")
        if parsed.query or parsed.fragment:
            raise StoreError(f"{text}: query strings are not part of an artifact URI; set the endpoint with "
                             "AWS_ENDPOINT_URL")
        return ArtifactURI("s3", parsed.netloc, parsed.path.strip("/"), text)
    if scheme == "gs":
        # Not a second client library for one provider: GCS serves the same S3 API (interoperability mode).
        raise StoreError(f"{text}: gs:// is not built in; serve it through GCS's S3-compatible API: "
                         "s3://bucket/prefix with AWS_ENDPOINT_URL=https://storage.googleapis.com and HMAC keys "
                         "in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    raise StoreError(f"{text}: unknown scheme {scheme!r}; use s3://, file:// or a plain path")
