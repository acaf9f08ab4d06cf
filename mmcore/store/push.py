"""`push_artifacts(dir, uri)`: upload a built artifact directory so that no reader ever sees half of it.

    check the local files against the manifest (a corrupt build is refused here, not at every replica)
    read the manifest already at `uri`:  same bytes -> already pushed, done;  different -> refuse unless force
    upload every file the manifest names, then the manifest itself, last

Readers find an artifact by its manifest, so until the last upload lands there is nothing at `uri` that looks
complete. Overwriting (force) a live URI in place is safe in one direction only: a replica that read the old
manifest and then downloads a new file fails its sha256 check and says so. Pushing each build to its own URI and
deploying that URI is the upgrade path that never fails a start (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from mmcore.manifest import MANIFEST
from mmcore.store.backends import open_backend
from mmcore.store.fetch import manifest_files
from mmcore.store.retry import RetryPolicy, with_retries
from mmcore.store.uri import StoreError, parse_uri

log = logging.getLogger("mmserve.store")


def push_artifacts(src_dir: str | Path, uri: str, *, force: bool = False, endpoint_url: str | None = None,
                   retry: RetryPolicy = RetryPolicy()) -> str:
    """Upload `src_dir` to `uri`, manifest last; returns "pushed" or "unchanged" (the same artifact was there)."""
    src = Path(src_dir).expanduser()
    try:
        raw = (src / MANIFEST).read_bytes()
    except OSError as e:
        raise StoreError(f"{src}: no readable {MANIFEST} ({e.strerror or e}); build it with `mmserve build`") from None
    files = manifest_files(str(src / MANIFEST), raw)
    _check_local(src, files)
    backend = open_backend(parse_uri(uri), endpoint_url)
    there = with_retries(f"read {uri}/{MANIFEST}", lambda: backend.get_bytes(MANIFEST), retry)
    if there == raw and not force:  # force re-uploads even the same artifact: it repairs a damaged object
        return "unchanged"
    if there is not None and not force:
        raise StoreError(f"{uri}: holds a different artifact (manifest sha256 {hashlib.sha256(there).hexdigest()}); "
                         "push to a new URI, or pass --force to replace it")
    for name in files:
        with_retries(f"upload {uri}/{name}", lambda name=name: backend.put_file(src / name, name), retry)
        log.info("mmserve: pushed %s/%s", uri, name)
    with_retries(f"upload {uri}/{MANIFEST}", lambda: backend.put_bytes(raw, MANIFEST), retry)
    return "pushed"


def _check_local(src: Path, files: dict[str, str]) -> None:
    for name, want in files.items():
        digest = hashlib.sha256()
        try:
            with open(src / name, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError as e:
            raise StoreError(f"{src / name}: named in the manifest but unreadable: {e.strerror or e}") from None
        if digest.hexdigest() != want:
            raise StoreError(f"{src / name}: sha256 does not match the manifest; rebuild with `mmserve build`")
