"""`fetch_artifacts(uri, cache_dir) -> Path`: an artifact from a store, in a node-local cache, every file verified.

    read the index (uri -> manifest hash)  --hit, directory complete-->  return it; the store is not touched
    read manifest.json from the store (retried)
    cache key = sha256(manifest bytes): a manifest names every file with its sha256, so equal manifests mean equal
                artifacts, whichever URI they came from
    under <cache>/<key>.lock (replicas on one node download once; the others wait, then reuse):
        download every file into <cache>/.<key>.partial-XXXX, hashing as it streams; a mismatch fails, naming it
        write the manifest last, fsync, rename the partial directory to <cache>/<key>
    record the uri in the index; append one line to <cache>/fetch.log (`fetch_events` reads it back) and tell
    `on_fetch` the outcome, "downloaded" or "cached" (the replica turns it into a Prometheus counter)

A directory named <key> exists only after every file in it matched its hash, so a crash mid-download leaves a
partial directory that nothing trusts (the next fetch for that key removes it). Cached artifacts are not re-hashed
on reuse: the cache is written only through that rename, and re-reading gigabytes at every replica start is what
the cache exists to avoid. Old keys stay until removed by hand, which is what makes a rollback instant.

This module imports neither ray nor torch: it runs at replica start and in the `mmserve push` CLI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock
from pydantic import ValidationError

from mmcore.manifest import FORMAT_VERSION, MANIFEST, Manifest
from mmcore.store.backends import Backend, open_backend
from mmcore.store.retry import RetryPolicy, with_retries
from mmcore.store.uri import StoreError, endpoint_for, parse_uri

log = logging.getLogger("mmserve.store")
FETCH_LOG = "fetch.log"


def fetch_artifacts(uri: str, cache_dir: str | Path, *, endpoint_url: str | None = None,
                    retry: RetryPolicy = RetryPolicy(), on_fetch: Callable[[str], None] | None = None) -> Path:
    """The local, verified artifact directory for `uri`, downloading it into `cache_dir` unless already there;
    `on_fetch("downloaded" | "cached")` once it is in place (never for a fetch that failed)."""
    on_fetch = on_fetch or (lambda outcome: None)
    parsed = parse_uri(uri)
    cache = _writable_cache(cache_dir)
    index = cache / "uris" / hashlib.sha256(f"{_endpoint(parsed.scheme, endpoint_url)}\n{uri}".encode()).hexdigest()
    known = _indexed(cache, index)
    if known is not None:
        _record(cache, "reuse", uri, known.name, store_read=False)
        on_fetch("cached")
        return known
    backend = open_backend(parsed, endpoint_url)
    raw = with_retries(f"read {uri}/{MANIFEST}", lambda: backend.get_bytes(MANIFEST), retry)
    if raw is None:
        raise StoreError(f"{uri}: no {MANIFEST} there; upload an artifact with `mmserve push DIR {uri}`")
    files = manifest_files(f"{uri}/{MANIFEST}", raw)
    key = hashlib.sha256(raw).hexdigest()
    target = cache / key
    with FileLock(str(cache / f"{key}.lock")):
        if _complete(target, files):
            _record(cache, "reuse", uri, key, store_read=True)  # another replica fetched it while we waited
            outcome = "cached"
        else:
            stats = _download_all(backend, uri, raw, files, cache, target, retry)
            _record(cache, "download", uri, key, **stats)
            outcome = "downloaded"
    _write_atomically(index, key.encode())
    on_fetch(outcome)
    return target


def manifest_files(where: str, raw: bytes) -> dict[str, str]:
    """File name -> sha256 for every file `raw` (a manifest's bytes) names; StoreError naming what is wrong."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{where}: not JSON ({e})") from None
    version = data.get("format_version", 1) if isinstance(data, dict) else None  # as Manifest.read: none = 1
    if version != FORMAT_VERSION:  # before the fields: an older build fails on its version, not on a field
        raise StoreError(f"{where}: format_version {version}, this mmserve reads {FORMAT_VERSION}; rebuild with "
                         "`mmserve build` and push again")
    try:
        manifest = Manifest.model_validate(data)
        files = manifest.files()
    except (ValidationError, ValueError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        detail = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else str(e)
        raise StoreError(f"{where}: not a valid mmserve manifest: {detail}") from None
    for name, digest in files.items():
        if name != Path(name).name or name in ("", ".", "..", MANIFEST) or name.startswith(".") or "\\" in name:
            raise StoreError(f"{where}: file name {name!r} is not a plain file name inside the artifact")
        if not digest:
            raise StoreError(f"{where}: {name} has no sha256 in the manifest (built before files_sha256); rebuild "
                             "it with `mmserve build` and push again")
    return files


def artifact_key(directory: str | Path) -> str:
    """sha256 of an artifact's manifest: its identity (and its cache directory's name), whatever URI it came from."""
    path = Path(directory) / MANIFEST
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise StoreError(f"{path}: {e.strerror or e}") from None


def fetch_events(cache_dir: str | Path) -> list[dict]:
    """What fetches into `cache_dir` did, one dict per fetch: {"event": "download" | "reuse", "uri", "key", ...}.

    A "reuse" with store_read False is a start that did not touch the store at all."""
    path = Path(cache_dir).expanduser() / FETCH_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _endpoint(scheme: str, override: str | None) -> str:
    """Two stores may hold a bucket of the same name: the endpoint is part of what a URI means."""
    return endpoint_for(scheme, override) or ""


def _writable_cache(cache_dir: str | Path) -> Path:
    root = Path(cache_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
    except OSError as e:
        raise StoreError(f"cache_dir {root}: not writable: {e.strerror or e}") from None
    return root


def _indexed(cache: Path, index: Path) -> Path | None:
    try:
        key = index.read_text().strip()
    except OSError:
        return None
    target = cache / key
    try:
        raw = (target / MANIFEST).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(raw).hexdigest() != key:
        return None
    try:
        return target if _complete(target, manifest_files(str(target), raw)) else None
    except StoreError:
        return None


def _complete(target: Path, files: dict[str, str]) -> bool:
    return (target / MANIFEST).is_file() and all((target / name).is_file() for name in files)


def _download_all(backend: Backend, uri: str, raw: bytes, files: dict[str, str], cache: Path, target: Path,
                  retry: RetryPolicy) -> dict:
    """Download and verify into a partial directory, then rename it to `target`; on any failure remove it."""
    key = target.name
    for stale in cache.glob(f".{key}.partial-*"):  # left by a process that died holding this lock
        shutil.rmtree(stale, ignore_errors=True)
    started, total = time.monotonic(), 0
    partial = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=cache))
    try:
        for name, want in files.items():
            total += _download_one(backend, uri, name, partial / name, want, retry)
        _write_file(partial / MANIFEST, raw)  # last: a directory with a manifest had every file verified first
        partial.chmod(0o755)  # mkdtemp makes 0700; replicas may run as other users
        if target.exists():  # complete-looking but not: a file was removed by hand
            shutil.rmtree(target)
        partial.rename(target)
    except OSError as e:
        raise StoreError(f"cache_dir {cache}: writing {uri}: {e.strerror or e}") from None
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    seconds = time.monotonic() - started
    log.info("mmserve: fetched %s (%d files, %d bytes) into %s in %.1fs", uri, len(files), total, target, seconds)
    return {"files": len(files), "bytes": total, "seconds": round(seconds, 3)}


def _download_one(backend: Backend, uri: str, name: str, dst: Path, want: str, retry: RetryPolicy) -> int:
    def once() -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with open(dst, "wb") as f:
            for chunk in backend.read_chunks(name):
                digest.update(chunk)
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        return digest.hexdigest(), size

    got, size = with_retries(f"download {uri}/{name}", once, retry)
    if got != want:
        raise StoreError(f"{uri}/{name}: sha256 {got} does not match the manifest's {want}: the object is corrupt "
                         "or was overwritten after the manifest; push the artifact again")
    return size


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    _write_file(tmp, data)
    os.replace(tmp, path)


def _record(cache: Path, event: str, uri: str, key: str, **extra) -> None:
    """One JSON line per fetch; O_APPEND lines this short are written whole even by concurrent replicas."""
    line = json.dumps({"event": event, "uri": uri, "key": key, "pid": os.getpid(), "time": time.time(), **extra})
    with open(cache / FETCH_LOG, "a") as f:
        f.write(line + "\n")
    if event == "reuse":
        log.info("mmserve: %s already in %s%s", uri, cache / key, "" if extra["store_read"] else
                 "; the store was not read")
