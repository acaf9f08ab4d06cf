"""Where a replica's artifacts come from: `resolve_model(source) -> artifact directory`, called by every stage
replica at its own start (Ingress, Preprocess, VisionEncoder, Decoder), on its own node.

    artifacts_uri  s3://bucket/prefix, gs://bucket/prefix, file:///path or a path written by `mmserve push`:
                   fetched into this node's <cache_dir>/fetched (mmcore.store.fetch_artifacts: a directory named by the manifest's sha256,
                   every file checked; replicas on one node download once under its file lock), counted in
                   `mmserve_artifact_fetches_total{outcome="downloaded"|"cached"}`
    artifacts_dir  a built directory on this node's disk: checked, never built
    checkpoint     a LLaVA checkpoint directory as save_pretrained writes it (the same path on every node): built
                   into this node's cache_dir when missing, keyed by the checkpoint files' content hash, under the
                   same file lock as a preset (graphs.entry.build_into_cache)
    preset         built into this node's cache_dir when missing (graphs.entry.build_into_cache under the cache's
                   file lock: replicas starting at once on one node build it once; torch is imported only then)

Why per replica and not in `build_app`: on a multi-node cluster the node that runs the builder is not the nodes
the replicas land on, and its disk is not theirs. `python -m serve_app` builds the default preset before
`serve run` only to show progress lines; the replicas then find it in the cache.

`cache_dir` is read on the replica's node; `~` and `$VARS` in it are expanded there, so one config can give each
node its own cache through that node's environment (e.g. `cache_dir: $MMSERVE_CACHE_DIR`, set per node at
`ray start`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from graphs import entry as build
from mmcore.manifest import MANIFEST

DEFAULT_CACHE_DIR = "~/.cache/mmserve"
FETCHED = "fetched"  # under cache_dir: artifacts fetched from a URI, one directory per manifest sha256


class ModelSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = Field(default="demo", description="model preset; its artifacts are built into cache_dir if missing")
    artifacts_dir: str | None = Field(default=None,
                                      description="a built artifact directory; overrides preset/cache_dir")
    artifacts_uri: str | None = Field(default=None,
                                      description="s3://bucket/prefix, gs://bucket/prefix, file:///path or a path "
                                                  "written by `mmserve push`; fetched into cache_dir/fetched on each "
                                                  "node, every file checked against the manifest; overrides preset "
                                                  "and artifacts_dir")
    checkpoint: str | None = Field(default=None,
                                   description="a local HF LLaVA checkpoint directory (save_pretrained files, "
                                               "tokenizer, chat template, preprocessor_config.json); built into "
                                               "cache_dir on first start, keyed by its files' content; overrides "
                                               "preset")
    cache_dir: str = Field(default=DEFAULT_CACHE_DIR, description="where artifacts for a preset are built and kept "
                                                                  "(on each node)")
    served_name: str | None = Field(default=None,
                                    description="model id in /v1/models and responses; default mmserve-<preset of the "
                                                "artifacts>")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        known = build.source_names()
        if v not in known:
            raise ValueError(f"unknown preset {v!r}; choose one of: {', '.join(sorted(known))}")
        return v

    @field_validator("checkpoint")
    @classmethod
    def _llava_checkpoint(cls, v: str | None) -> str | None:
        """Refused here, naming the file and field, when the directory is not a LLaVA checkpoint the build can use."""
        if v is not None:
            build.check_checkpoint(v)  # CheckpointError is a ValueError: pydantic names the field
        return v

    @field_validator("artifacts_uri")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is not None:
            from mmcore.store import StoreError, parse_uri

            try:
                parse_uri(v)
            except StoreError as e:
                raise ValueError(str(e)) from None
        return v

    def cache_path(self) -> Path:
        """cache_dir on this node: `~` and environment variables expanded where the replica runs."""
        return Path(os.path.expandvars(self.cache_dir)).expanduser()

    def name(self, built_preset: str | None = None) -> str:
        """The model id clients send; by default named after the preset the artifacts were built from."""
        default = Path(self.checkpoint).name if self.checkpoint else self.preset
        return self.served_name or f"mmserve-{built_preset or default}"


class ArtifactsError(ValueError):
    """A model source that gives no usable artifact directory; the message names the field."""


def model_key(artifacts: Path) -> str:
    """The loaded artifact's identity: sha256 of its manifest (which names every file's sha256), the same key the
    fetch cache uses. Every stage call carries the ingress's key; a replica of another model refuses it."""
    return hashlib.sha256((Path(artifacts) / MANIFEST).read_bytes()).hexdigest()


def _print_progress(preset: str):
    def progress(step: str) -> None:  # a first start builds for a while: show where it is
        print(f"mmserve: building {preset} artifacts: {step}", flush=True)
    return progress


def resolve_model(source: ModelSource) -> Path:
    """The artifact directory for `source` on this node: fetched from artifacts_uri, the given one (must have a
    manifest), or the checkpoint's or preset's, built into cache_dir if missing (progress lines on stdout)."""
    if source.artifacts_uri:
        from serve_app.observability.fetch_metrics import count_fetch
        from mmcore.store import StoreError, fetch_artifacts  # boto3 only when a store is used

        try:
            return fetch_artifacts(source.artifacts_uri, source.cache_path() / FETCHED, on_fetch=count_fetch)
        except StoreError as e:
            raise ArtifactsError(f"model.artifacts_uri: {e}") from None
    if source.artifacts_dir:
        path = Path(source.artifacts_dir).expanduser()
        if not (path / MANIFEST).is_file():
            raise ArtifactsError(f"model.artifacts_dir: {path} has no {MANIFEST}; build it with `mmserve build`")
        return path
    what = str(Path(source.checkpoint).expanduser()) if source.checkpoint else source.preset
    return build.build_into_cache(what, source.cache_path(), progress=_print_progress(Path(what).name))
