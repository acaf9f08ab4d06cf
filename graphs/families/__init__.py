"""Model families, by name: each a folder with its source loading, reference, graph variants, tokenizer and prompt
format (graphs/families/base.py).

A family's package (`__init__.py`) stays light: it names the sources it builds (`SOURCES`), which serving's config
check imports. Its `family` module defines `FAMILY` and is imported only by a build.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# name -> package; a new family adds one line here and its own folder.
FAMILIES: dict[str, str] = {
    "own": "graphs.families.own",
    "idefics3": "graphs.families.idefics3",  # before llava, which accepts any directory with a config.json
    "llava": "graphs.families.llava",
}


def get_family(name: str):
    """The Family (graphs.families.base.Family) registered as `name`; imports its build code."""
    try:
        package = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose one of: {', '.join(sorted(FAMILIES))}") from None
    return importlib.import_module(f"{package}.family").FAMILY


def source_names() -> dict[str, str]:
    """Every buildable source (preset) name -> its family's name, without importing any build code."""
    return {src: name for name, package in FAMILIES.items() for src in importlib.import_module(package).SOURCES}


def family_for_checkpoint(path: Path) -> str | None:
    """The name of the first family (registry order) whose package `accepts` the directory, or None. Light: each
    family's `checkpoint` module then reads the directory without torch (graphs/entry.py)."""
    for name, package in FAMILIES.items():
        accepts = getattr(importlib.import_module(package), "accepts", None)
        if accepts is not None and accepts(path):
            return name
    return None


def family_for_source(source: str):
    """The Family that builds `source`: a preset name, or a checkpoint directory that a family's package `accepts`."""
    path = Path(source)
    if path.is_dir() and (name := family_for_checkpoint(path)) is not None:
        return get_family(name)
    names = source_names()
    if source not in names:
        raise ValueError(f"unknown preset {source!r}; choose one of: {', '.join(sorted(names))}")
    return get_family(names[source])
