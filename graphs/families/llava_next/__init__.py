"""LLaVA-NeXT (`llava_next`) and LLaVA-OneVision (`llava_onevision`) checkpoints built from a save_pretrained
directory (graphs/families/llava_next/family.py). No shipped checkpoints: its sources are directories (`accepts`)."""

import json
from pathlib import Path

SOURCES: tuple[str, ...] = ()
MODEL_TYPES = ("llava_next", "llava_onevision")


def accepts(path: Path) -> bool:
    """A checkpoint directory whose config.json names one of MODEL_TYPES."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") in MODEL_TYPES
    except (OSError, ValueError, AttributeError):
        return False


def check(path: Path) -> None:
    """CheckpointError (a ValueError naming the file and field) unless the build can use it; no torch."""
    from graphs.families.llava_next.checkpoint import read_anyres_checkpoint

    read_anyres_checkpoint(path)
