"""Stores an artifact can live in, behind one small interface: read a file, write a file, ask whether one exists.

Names are file names inside the artifact (`manifest.json`, `decoder.cpu-fp32.onnx`); each backend maps them to its
own keys under the URI's prefix. Every failure comes out as StoreError (one line naming the URI and file) or, when
a retry may succeed, TransientStoreError; a missing file is `None` from `get_bytes`, never an exception to parse.

The S3 client is boto3, an optional extra (`pip install mmserve[s3]`): it is AWS's own and well kept, it reads the
standard AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, profiles, instance and pod
roles) with no mmserve variable, and its transfer manager does multipart uploads of large graph files. pyarrow.fs
would bring a 100 MB wheel for two calls; fsspec/s3fs adds an async layer (aiobotocore) pinned to exact botocore
versions, which fights with anything else in the image that needs boto3.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterator, Protocol

from mmcore.store.uri import ArtifactURI, StoreError, TransientStoreError, endpoint_for

CHUNK = 1 << 20  # bytes per read: hashing and writing stream through this much memory at a time


class Backend(Protocol):
    uri: ArtifactURI

    def get_bytes(self, name: str) -> bytes | None: ...  # None when absent

    def read_chunks(self, name: str) -> Iterator[bytes]: ...

    def put_file(self, path: Path, name: str) -> None: ...

    def put_bytes(self, data: bytes, name: str) -> None: ...


def open_backend(uri: ArtifactURI, endpoint_url: str | None = None) -> Backend:
    return LocalBackend(uri) if uri.scheme == "file" else S3Backend(uri, endpoint_url)  # s3:// and gs://


class LocalBackend:
    """A directory on a filesystem (NFS, a hostPath) that every node mounts."""

    _TRANSIENT = {errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN}  # NFS hiccups, not a wrong path

    def __init__(self, uri: ArtifactURI):
        self.uri = uri

    def _error(self, name: str, e: OSError) -> StoreError:
        kind = TransientStoreError if e.errno in self._TRANSIENT else StoreError
        return kind(f"{self.uri.key(name)}: {e.strerror or e}")

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return Path(self.uri.key(name)).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._error(name, e) from None

    def read_chunks(self, name: str) -> Iterator[bytes]:
        try:
            with open(self.uri.key(name), "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        except FileNotFoundError:
            raise StoreError(f"{self.uri.key(name)}: named in the manifest but missing") from None
        except OSError as e:
            raise self._error(name, e) from None

    def put_file(self, path: Path, name: str) -> None:
        self._write(name, lambda dst: shutil.copyfile(path, dst))

    def put_bytes(self, data: bytes, name: str) -> None:
        self._write(name, lambda dst: Path(dst).write_bytes(data))

    def _write(self, name: str, write) -> None:
        dst = Path(self.uri.key(name))
        tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, dst)  # a reader sees the old file or the new one, never half of one
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise self._error(name, e) from None


class S3Backend:
    """Any S3-compatible store through boto3, GCS's XML API included (gs://): the endpoint is `endpoint_url` if
    given, else GCS for gs:// and AWS_ENDPOINT_URL (or AWS itself) for s3://."""

    def __init__(self, uri: ArtifactURI, endpoint_url: str | None = None):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StoreError(f"{uri}: {uri.scheme}:// needs boto3: pip install 'mmserve[s3]'") from None
        self.uri = uri
        custom = endpoint_for(uri.scheme, endpoint_url)
        config = Config(
            retries={"total_max_attempts": 1},  # fetch retries with its own bounded backoff; two layers multiply
            connect_timeout=5, read_timeout=60,
            # S3-compatible stores (SeaweedFS, MinIO, Ceph, GCS interop) answer path-style requests everywhere;
            # virtual-host style needs DNS for every bucket. AWS itself keeps its default.
            s3={"addressing_style": "path" if custom else "auto"},
            # Newer botocore sends CRC checksums by default, which several S3-compatible stores reject; integrity
            # is checked end to end by sha256 against the manifest anyway.
            request_checksum_calculation="when_required", response_checksum_validation="when_required")
        # botocore reads AWS_DEFAULT_REGION only; AWS_REGION is what the other AWS SDKs read, so honour both. GCS
        # signs with any region; "auto" is the one Google's own boto3 examples use.
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or (
            "auto" if uri.scheme == "gs" else None)
        self._client = boto3.session.Session().client("s3", endpoint_url=custom, region_name=region, config=config)

    def _error(self, name: str, e: Exception) -> StoreError:
        from botocore import exceptions as bx

        where = self.uri.url(name)
        if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
            return StoreError(f"{where}: no S3 credentials ({e}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                              "a profile or a role")
        if isinstance(e, (bx.ConnectionError, bx.HTTPClientError)):
            return TransientStoreError(f"{where}: store unreachable: {e}")
        if isinstance(e, bx.ClientError):
            err, meta = e.response.get("Error", {}), e.response.get("ResponseMetadata", {})
            code, status = str(err.get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
            if code == "NoSuchBucket":
                return StoreError(f"{where}: no bucket {self.uri.bucket!r}")
            if status in (401, 403) or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StoreError(f"{where}: access denied ({code or status}); check the credentials")
            if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                return TransientStoreError(f"{where}: store error {code or status}")
            return StoreError(f"{where}: {code or status}: {err.get('Message', e)}")
        if isinstance(e, bx.BotoCoreError):
            return StoreError(f"{where}: {e}")
        raise e

    @staticmethod
    def _missing(e: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(e, ClientError) and (e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404",
                                                                                          "NotFound"))

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return self._client.get_object(Bucket=self.uri.bucket, Key=self.uri.key(name))["Body"].read()
        except Exception as e:  # noqa: BLE001 - classified into StoreError kinds right here
            if self._missing(e):
                return None
            raise self._error(name, e) from None

    def read_chunks(self, name: str) -> Iterator[bytes]:
        try:
            body = self._client.get_object(Bucket=self.uri.bucket, Key=self.uri.key(name))["Body"]
            while chunk := body.read(CHUNK):
                yield chunk
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001
            if self._missing(e):
                raise StoreError(f"{self.uri.url(name)}: named in the manifest but missing") from None
            raise self._error(name, e) from None

    def put_file(self, path: Path, name: str) -> None:
        try:
            self._client.upload_file(str(path), self.uri.bucket, self.uri.key(name))
        except Exception as e:  # noqa: BLE001
            from boto3.exceptions import S3UploadFailedError

            if isinstance(e, S3UploadFailedError):  # the transfer manager wraps the ClientError's text
                raise StoreError(f"{self.uri.url(name)}: upload failed: {e}") from None
            raise self._error(name, e) from None

    def put_bytes(self, data: bytes, name: str) -> None:
        try:
            self._client.put_object(Bucket=self.uri.bucket, Key=self.uri.key(name), Body=data)
        except Exception as e:  # noqa: BLE001
            raise self._error(name, e) from None
