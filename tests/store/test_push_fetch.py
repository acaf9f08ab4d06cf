"""Push a real built artifact to a real S3-compatible server (SeaweedFS on loopback), fetch it into node-local caches:
byte-identical, downloaded once per cache however many fetch at once, reused without touching the store."""

from __future__ import annotations

import shutil
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from graphs.cli import main
from mmcore.store import StoreError, artifact_key, fetch_artifacts, fetch_events, push_artifacts
from mmcore.store import backends
from tests.object_store import variant_of


def artifact_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def downloads(cache: Path) -> list[dict]:
    return [e for e in fetch_events(cache) if e["event"] == "download"]


def test_push_then_fetch_is_byte_identical(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    assert push_artifacts(tiny_artifacts_dir, s3_uri) == "pushed"
    got = fetch_artifacts(s3_uri, tmp_path / "cache")
    assert artifact_files(got) == artifact_files(tiny_artifacts_dir)
    assert got == tmp_path / "cache" / artifact_key(tiny_artifacts_dir) and not list(got.parent.glob(".*partial*"))
    (event,) = downloads(tmp_path / "cache")
    assert event["uri"] == s3_uri and event["files"] == len(artifact_files(tiny_artifacts_dir)) - 1


def test_later_fetch_reuses_the_cache_without_touching_the_store(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    push_artifacts(tiny_artifacts_dir, s3_uri)
    first = fetch_artifacts(s3_uri, tmp_path / "cache")
    client, prefix = aws_env.client(), s3_uri.split("/", 3)[3]
    for obj in client.list_objects_v2(Bucket=aws_env.bucket, Prefix=prefix)["Contents"]:  # the store forgets it
        client.delete_object(Bucket=aws_env.bucket, Key=obj["Key"])
    with pytest.raises(StoreError, match="no manifest.json there"):  # any read of the store now fails
        fetch_artifacts(s3_uri, tmp_path / "other-cache")
    assert fetch_artifacts(s3_uri, tmp_path / "cache") == first
    events = fetch_events(tmp_path / "cache")
    assert [e["event"] for e in events] == ["download", "reuse"] and events[1]["store_read"] is False


def _fetch(uri: str, cache: str) -> str:
    return str(fetch_artifacts(uri, cache))


def test_concurrent_fetches_on_one_node_download_once(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    push_artifacts(tiny_artifacts_dir, s3_uri)
    cache = tmp_path / "node-cache"
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:  # replicas are processes: so are these
        paths = list(pool.map(_fetch, [s3_uri] * 4, [str(cache)] * 4))
    assert len(set(paths)) == 1
    events = fetch_events(cache)
    assert len(events) == 4 and len(downloads(cache)) == 1
    assert len({e["pid"] for e in events}) == 4


def test_each_cache_dir_downloads_its_own_copy_once(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    push_artifacts(tiny_artifacts_dir, s3_uri)
    for node in ("gpu-node", "cpu-node"):
        for _ in range(2):
            fetch_artifacts(s3_uri, tmp_path / node)
        assert len(downloads(tmp_path / node)) == 1


def test_push_uploads_the_manifest_last(s3_uri, aws_env, tiny_artifacts_dir, monkeypatch):
    order: list[str] = []
    put_file, put_bytes = backends.S3Backend.put_file, backends.S3Backend.put_bytes
    monkeypatch.setattr(backends.S3Backend, "put_file", lambda self, p, n: (order.append(n), put_file(self, p, n)))
    monkeypatch.setattr(backends.S3Backend, "put_bytes", lambda self, d, n: (order.append(n), put_bytes(self, d, n)))
    push_artifacts(tiny_artifacts_dir, s3_uri)
    assert order[-1] == "manifest.json" and order.count("manifest.json") == 1
    assert sorted(order) == sorted(artifact_files(tiny_artifacts_dir))


def test_push_refuses_a_different_artifact_at_the_uri_unless_forced(s3_uri, aws_env, tiny_artifacts_dir, tmp_path,
                                                                   capsys):
    assert push_artifacts(tiny_artifacts_dir, s3_uri) == "pushed"
    assert push_artifacts(tiny_artifacts_dir, s3_uri) == "unchanged"
    other = variant_of(tiny_artifacts_dir, tmp_path / "other")
    with pytest.raises(StoreError, match=f"{s3_uri}: holds a different artifact.*--force"):
        push_artifacts(other, s3_uri)
    assert main(["push", str(other), s3_uri]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmserve push: error: ") and err.count("\n") == 1
    assert main(["push", str(other), s3_uri, "--force"]) == 0
    got = fetch_artifacts(s3_uri, tmp_path / "cache")
    assert (got / "manifest.json").read_bytes() == (other / "manifest.json").read_bytes()


def test_push_refuses_a_local_file_that_does_not_match_its_manifest(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    bad = shutil.copytree(tiny_artifacts_dir, tmp_path / "bad")
    (bad / "tokenizer.json").write_text("{}")
    with pytest.raises(StoreError, match=r"tokenizer\.json: sha256 does not match the manifest"):
        push_artifacts(bad, s3_uri)
    assert aws_env.client().list_objects_v2(Bucket=aws_env.bucket, Prefix=s3_uri.split("/", 3)[3]).get(
        "KeyCount") == 0


def test_file_uri_and_plain_path_push_and_fetch(tiny_artifacts_dir, tmp_path):
    shared = tmp_path / "nfs" / "tiny-v1"
    assert main(["push", str(tiny_artifacts_dir), f"file://{shared}"]) == 0
    a = fetch_artifacts(f"file://{shared}", tmp_path / "cache")
    b = fetch_artifacts(str(shared), tmp_path / "cache")
    assert a == b and artifact_files(a) == artifact_files(tiny_artifacts_dir)
    assert len(downloads(tmp_path / "cache")) == 1  # same manifest, same cache entry, whichever spelling


def test_on_fetch_reports_downloaded_once_then_cached(tiny_artifacts_dir, tmp_path):
    """What the replica's fetch counter (mmserve_artifact_fetches_total) is fed: one outcome per successful fetch."""
    shared = tmp_path / "nfs" / "tiny-v1"
    push_artifacts(tiny_artifacts_dir, f"file://{shared}")
    outcomes: list[str] = []
    for uri in (f"file://{shared}", f"file://{shared}", str(shared)):  # the index hit, then the manifest-key hit
        fetch_artifacts(uri, tmp_path / "cache", on_fetch=outcomes.append)
    assert outcomes == ["downloaded", "cached", "cached"]
    bad = variant_of(tiny_artifacts_dir, tmp_path / "bad", note="corrupt")
    (bad / "tokenizer.json").write_text("{}")
    with pytest.raises(StoreError, match=r"tokenizer\.json: sha256 .* does not match"):
        fetch_artifacts(str(bad), tmp_path / "cache", on_fetch=outcomes.append)
    assert outcomes == ["downloaded", "cached", "cached"]  # a failed fetch is not counted as either
