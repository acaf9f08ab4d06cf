"""Artifact URIs: where a built artifact directory lives, and the errors every store operation raises.

    s3://bucket/prefix   any S3-compatible store; the endpoint comes from AWS_ENDPOINT_URL (or an explicit override)
    gs://bucket/prefix   Google Cloud Storage through its S3-compatible XML API (interoperability, HMAC keys in
                         AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): the same client at https://storage.googleapis.com,
                         whatever AWS_ENDPOINT_URL says (that one names the s3:// store)
    file:///abs/path     a directory on a filesystem every node mounts (NFS, a hostPath)
    /abs/path, rel/path  the same as file://
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

GCS_ENDPOINT = "https://storage.googleapis.com"  # GCS's XML API, which speaks S3 (SigV4 with HMAC keys)


class StoreError(RuntimeError):
    """One line naming the URI or file at fault; a fetch or push that raises it leaves nothing to be trusted."""


class TransientStoreError(StoreError):
    """A failure worth retrying (connection refused or reset, timeout, 5xx, throttling)."""


@dataclass(frozen=True)
class ArtifactURI:
    scheme: str  # "s3", "gs" or "file"
    bucket: str  # s3/gs only; "" for file
    prefix: str  # s3/gs: key prefix without slashes at either end; file: absolute directory path
    text: str  # the URI as given, for messages

    def key(self, name: str) -> str:
        """The object key (s3) or path (file) of file `name` inside the artifact."""
        if self.scheme == "file":
            return str(Path(self.prefix) / name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        """File `name` as a URI, for messages."""
        return self.key(name) if self.scheme == "file" else f"{self.scheme}://{self.bucket}/{self.key(name)}"

    def __str__(self) -> str:
        return self.text


def parse_uri(uri: str) -> ArtifactURI:
    """Parse `uri`; anything but s3://, gs://, file:// or a path is a one-line StoreError naming it."""
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
    if scheme in ("s3", "gs"):
        if not parsed.netloc:
            raise StoreError(f"{text}: no bucket; expected {scheme}://bucket/prefix")
        if parsed.query or parsed.fragment:
            raise StoreError(f"{text}: query strings are not part of an artifact URI"
                             + ("; set the endpoint with AWS_ENDPOINT_URL" if scheme == "s3" else ""))
        return ArtifactURI(scheme, parsed.netloc, parsed.path.strip("/"), text)
    raise StoreError(f"{text}: unknown scheme {scheme!r}; use s3://, gs://, file:// or a plain path")


def endpoint_for(scheme: str, override: str | None = None) -> str | None:
    """The object store's endpoint for a URI of `scheme`: the override, else gs:// -> GCS, s3:// -> the AWS
    environment's (None: AWS itself). Not boto3's own lookup for gs://: AWS_ENDPOINT_URL names the s3:// store, and
    a gs:// URI sent there would read another store's bucket of the same name."""
    if override:
        return override
    if scheme == "gs":
        return GCS_ENDPOINT
    if scheme == "s3":
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return None
