"""Bad input at replica start: one-line errors naming the URI or file, in bounded time, and nothing left in the
cache that a later start would trust."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mmcore.store import RetryPolicy, StoreError, fetch_artifacts, fetch_events, push_artifacts
from mmcore.store import backends
from mmcore.store.uri import TransientStoreError
from tests.object_store import free_port

QUICK = RetryPolicy(attempts=3, base_delay_s=0.05, max_delay_s=0.1, deadline_s=5)


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def trusted_entries(cache: Path) -> list[str]:
    """What a later fetch could pick up: anything but the lock files, the log, the probe and partials."""
    if not cache.exists():
        return []
    names = [p.name for p in cache.iterdir() if not p.name.endswith(".lock") and p.name != "fetch.log"]
    index = cache / "uris"
    return [n for n in names if n != "uris"] + ([p.name for p in index.iterdir()] if index.exists() else [])


def key_of(s3_uri: str, aws_env) -> str:
    return s3_uri.split("/", 3)[3]


def test_corrupted_object_fails_naming_the_file_and_leaves_nothing_trusted(s3_uri, aws_env, tiny_artifacts_dir,
                                                                          tmp_path):
    push_artifacts(tiny_artifacts_dir, s3_uri)
    aws_env.client().put_object(Bucket=aws_env.bucket, Key=f"{key_of(s3_uri, aws_env)}/decoder.cpu-fp32.onnx",
                                Body=b"not the graph")
    cache = tmp_path / "cache"
    with pytest.raises(StoreError) as e:
        fetch_artifacts(s3_uri, cache)
    assert one_line(e).startswith(f"{s3_uri}/decoder.cpu-fp32.onnx: sha256 ")
    assert trusted_entries(cache) == [] and fetch_events(cache) == []
    push_artifacts(tiny_artifacts_dir, s3_uri, force=True)  # the repair: the same artifact pushed again
    assert (fetch_artifacts(s3_uri, cache) / "decoder.cpu-fp32.onnx").read_bytes() == (
        tiny_artifacts_dir / "decoder.cpu-fp32.onnx").read_bytes()


def test_failure_mid_download_leaves_nothing_trusted(s3_uri, aws_env, tiny_artifacts_dir, tmp_path, monkeypatch):
    push_artifacts(tiny_artifacts_dir, s3_uri)
    real, seen = backends.S3Backend.read_chunks, []

    def dies_on_third_file(self, name):
        seen.append(name)
        if len(seen) == 3:
            raise StoreError(f"{name}: the node lost its disk")  # what a crash looks like to the cache: no rename
        yield from real(self, name)

    monkeypatch.setattr(backends.S3Backend, "read_chunks", dies_on_third_file)
    with pytest.raises(StoreError, match="lost its disk"):
        fetch_artifacts(s3_uri, tmp_path / "cache")
    assert trusted_entries(tmp_path / "cache") == []
    monkeypatch.setattr(backends.S3Backend, "read_chunks", real)
    assert fetch_artifacts(s3_uri, tmp_path / "cache").is_dir()


def test_partial_directory_left_by_a_crash_is_ignored_and_removed(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    push_artifacts(tiny_artifacts_dir, s3_uri)
    first = fetch_artifacts(s3_uri, tmp_path / "a")
    crashed = tmp_path / "b" / f".{first.name}.partial-dead"  # a process killed before its rename
    crashed.mkdir(parents=True)
    (crashed / "manifest.json").write_bytes((first / "manifest.json").read_bytes())
    got = fetch_artifacts(s3_uri, tmp_path / "b")
    assert got == tmp_path / "b" / first.name and not crashed.exists()
    assert [e["event"] for e in fetch_events(tmp_path / "b")] == ["download"]


def test_cached_file_removed_by_hand_is_fetched_again(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    push_artifacts(tiny_artifacts_dir, s3_uri)
    got = fetch_artifacts(s3_uri, tmp_path / "cache")
    (got / "tokenizer.json").unlink()
    assert (fetch_artifacts(s3_uri, tmp_path / "cache") / "tokenizer.json").is_file()
    assert [e["event"] for e in fetch_events(tmp_path / "cache")] == ["download", "download"]


def test_a_transient_error_is_retried(s3_uri, aws_env, tiny_artifacts_dir, tmp_path, monkeypatch):
    push_artifacts(tiny_artifacts_dir, s3_uri)
    real, failed = backends.S3Backend.read_chunks, []

    def flaky(self, name):
        if not failed:
            failed.append(name)
            raise TransientStoreError(f"{name}: connection reset")
        yield from real(self, name)

    monkeypatch.setattr(backends.S3Backend, "read_chunks", flaky)
    assert fetch_artifacts(s3_uri, tmp_path / "cache", retry=QUICK).is_dir() and failed


@pytest.mark.parametrize("policy", [QUICK, RetryPolicy()], ids=["quick", "default"])
def test_store_down_gives_a_clear_error_after_bounded_retries(aws_env, tmp_path, monkeypatch, policy):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StoreError) as e:
        fetch_artifacts(f"s3://{aws_env.bucket}/tiny", tmp_path / "cache", retry=policy)
    elapsed = time.monotonic() - start
    message = one_line(e)
    assert message.startswith(f"s3://{aws_env.bucket}/tiny/manifest.json: store unreachable")
    assert f"after {policy.attempts} tries" in message
    # the sleeps the policy allows, plus slack for a loaded machine: a hang would not fit in either
    bound = sum(min(policy.max_delay_s, policy.base_delay_s * 2 ** i) for i in range(policy.attempts)) + 30
    assert elapsed < bound


def test_missing_credentials(s3_uri, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError) as e:
        fetch_artifacts(s3_uri, tmp_path / "cache", retry=QUICK)
    assert one_line(e).startswith(f"{s3_uri}/manifest.json: no S3 credentials")


def test_wrong_credentials(s3_uri, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StoreError, match=r"manifest\.json: access denied"):
        fetch_artifacts(s3_uri, tmp_path / "cache", retry=QUICK)


def test_uri_with_no_manifest(s3_uri, tmp_path):
    with pytest.raises(StoreError) as e:
        fetch_artifacts(s3_uri, tmp_path / "cache")
    assert one_line(e) == f"{s3_uri}: no manifest.json there; upload an artifact with `mmserve push DIR {s3_uri}`"


def test_no_such_bucket(aws_env, tmp_path):
    with pytest.raises(StoreError, match="no bucket 'no-such-bucket'"):
        fetch_artifacts("s3://no-such-bucket/x", tmp_path / "cache", retry=QUICK)


@pytest.mark.parametrize("uri,expected", [
    ("hdfs://cluster/x", "hdfs://cluster/x: unknown scheme 'hdfs'; use s3://, gs://, file:// or a plain path"),
    ("s3:///x", "s3:///x: no bucket; expected s3://bucket/prefix"),
    ("gs:///x", "gs:///x: no bucket; expected gs://bucket/prefix"),
    ("", "artifacts_uri '': empty"),
])
def test_bad_uris(uri, expected, tmp_path):
    with pytest.raises(StoreError) as e:
        fetch_artifacts(uri, tmp_path / "cache")
    assert one_line(e).startswith(expected)


def test_cache_dir_not_writable(tiny_artifacts_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError) as e:
        fetch_artifacts(str(tiny_artifacts_dir), tmp_path / "a-file" / "cache")
    assert one_line(e).startswith(f"cache_dir {tmp_path / 'a-file' / 'cache'}: not writable")


def _manifest_with(tiny_artifacts_dir: Path, dst: Path, change) -> Path:
    dst.mkdir()
    for f in tiny_artifacts_dir.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((dst / "manifest.json").read_text())
    change(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_manifest_without_hashes_for_every_file_is_refused(tiny_artifacts_dir, tmp_path):
    old = _manifest_with(tiny_artifacts_dir, tmp_path / "old", lambda m: m.pop("files_sha256"))
    with pytest.raises(StoreError) as e:
        fetch_artifacts(str(old), tmp_path / "cache")
    assert "tokenizer.json has no sha256 in the manifest" in one_line(e)
    assert trusted_entries(tmp_path / "cache") == []


def test_manifest_naming_a_path_outside_the_artifact_is_refused(tiny_artifacts_dir, tmp_path):
    evil = _manifest_with(tiny_artifacts_dir, tmp_path / "evil",
                          lambda m: m["files_sha256"].update({"../escape": "0" * 64}))
    with pytest.raises(StoreError, match="'../escape' is not a plain file name"):
        fetch_artifacts(str(evil), tmp_path / "cache")


def test_manifest_that_is_not_a_manifest(s3_uri, aws_env, tmp_path):
    aws_env.client().put_object(Bucket=aws_env.bucket, Key=f"{key_of(s3_uri, aws_env)}/manifest.json",
                                Body=b'{"format_version": 2}')
    with pytest.raises(StoreError) as e:
        fetch_artifacts(s3_uri, tmp_path / "cache")
    assert one_line(e).startswith(f"{s3_uri}/manifest.json: not a valid mmserve manifest: family: Field required")


@pytest.mark.parametrize("body, version", [(b"{}", "1"), (b'{"format_version": 1, "preset": "tiny"}', "1"),
                                           (b'{"format_version": 3}', "3")])
def test_manifest_of_another_format_version_names_it(s3_uri, aws_env, tmp_path, body, version):
    aws_env.client().put_object(Bucket=aws_env.bucket, Key=f"{key_of(s3_uri, aws_env)}/manifest.json", Body=body)
    with pytest.raises(StoreError) as e:
        fetch_artifacts(s3_uri, tmp_path / "cache")
    assert one_line(e).startswith(f"{s3_uri}/manifest.json: format_version {version}, this mmserve reads 2; rebuild")
