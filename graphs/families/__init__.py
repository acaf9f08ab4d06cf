"""Model families, by name: each a folder with its source loading, reference, graph variants, tokenizer and prompt
format (graphs/families/base.py).

A family's package (`__init__.py`) stays light: it names the sources it builds (`SOURCES`), which serving's config
check imports. Its `family` module defines `FAMILY` and is imported only by a build.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# name -> package; a new family adds one line here and its own folder. Checkpoint families are asked in this order
# whether they accept a directory: llava accepts any config.json (it names the wrong model_type), so it comes last.
FAMILIES: dict[str, str] = {
    "own": "graphs.families.own",
    "llava_next": "graphs.families.llava_next",
    "idefics3": "graphs.families.idefics3",
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


def _accepting(path: Path):
    """The light package of the first family that accepts checkpoint directory `path`, or None."""
    for package in FAMILIES.values():
        module = importlib.import_module(package)
        accepts = getattr(module, "accepts", None)
        if accepts is not None and accepts(path):
            return module
    return None


def check_checkpoint(path: Path) -> None:
    """A ValueError naming the file and field unless some family can build checkpoint directory `path` (config and
    tokenizer files only: no torch)."""
    (_accepting(path) or importlib.import_module(FAMILIES["llava"])).check(path)


def family_for_source(source: str):
    """The Family that builds `source`: a preset name, or a checkpoint directory that a family's package `accepts`."""
    path = Path(source)
    module = _accepting(path) if path.is_dir() else None
    if module is not None:
        return get_family(next(name for name, package in FAMILIES.items() if package == module.__name__))
    names = source_names()
    if source not in names:
        raise ValueError(f"unknown preset {source!r}; choose one of: {', '.join(sorted(names))}")
    return get_family(names[source])
