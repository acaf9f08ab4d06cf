"""The build's one door for serving: everything serve_app may ask of graphs/, and nothing else (an import-linter
contract in pyproject.toml holds serve_app to this module).

    source_names()                          the buildable preset names, for validating a model source
    check_checkpoint(directory)             a checkpoint directory the build can use (LLaVA, LLaVA-NeXT,
                                            LLaVA-OneVision, Idefics3/SmolVLM), or a ValueError naming the file
                                            (config and tokenizer files only: no torch)
    build_into_cache(source, cache_dir)     build a preset or checkpoint into this node's cache unless it is there
                                            (under the cache's file lock) -> the artifact directory

Importing this module is cheap: the family registry's light packages only. The build pipeline (torch, the graph
emitters) is imported inside `build_into_cache`, so a replica whose artifacts are cached never loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from graphs.families import source_names

__all__ = ["build_into_cache", "check_checkpoint", "source_names"]


def check_checkpoint(directory: str | Path) -> None:
    """Raise CheckpointError (a ValueError, so pydantic names the field) unless a family can build `directory`."""
    from graphs.families import check_checkpoint as check  # no torch: config and tokenizer files only

    check(Path(directory).expanduser())


def build_into_cache(source: str, cache_dir: str | Path, progress: Callable[[str], None] | None = None) -> Path:
    """The artifact directory for `source` (a preset name or a checkpoint directory) in `cache_dir`: found there, or
    built now, once per node however many replicas ask at the same time."""
    from graphs.build import ensure_artifacts  # the build pipeline and torch: only when a build may be needed

    return Path(ensure_artifacts(source, cache_dir, progress=progress))
