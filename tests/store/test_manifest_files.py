"""The manifest a build writes names every file of the artifact with its sha256: what a fetch checks downloads
against, and what makes the manifest's own hash a key for the whole artifact."""

from __future__ import annotations

import hashlib
import json

import pytest

from mmcore.manifest import MANIFEST, Manifest


def test_build_records_every_file_and_its_sha256(tiny_artifacts_dir):
    manifest = Manifest.read(tiny_artifacts_dir)
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in tiny_artifacts_dir.iterdir() if p.is_file() and p.name != MANIFEST}
    assert manifest.files() == on_disk
    assert {manifest.tokenizer_file, manifest.decoder.embeddings.name} <= set(manifest.files_sha256)


def test_a_variant_hash_that_disagrees_with_files_sha256_is_refused(tiny_artifacts_dir):
    raw = json.loads((tiny_artifacts_dir / MANIFEST).read_text())
    name = next(iter(raw["graphs"]["decoder"]["variants"]))
    raw["graphs"]["decoder"]["variants"][name]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="manifest gives two different sha256"):
        Manifest.model_validate(raw).files()
