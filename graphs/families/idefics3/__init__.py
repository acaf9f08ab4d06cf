"""Idefics3 / SmolVLM checkpoints (SigLIP-style tower at its crop size + pixel-shuffle connector + a Llama-style
decoder) built from a save_pretrained directory (graphs/families/idefics3/family.py). Sources: checkpoint
directories whose config.json says model_type `idefics3` or `smolvlm` (`accepts`); no shipped presets."""

import json
from pathlib import Path

SOURCES: tuple[str, ...] = ()
MODEL_TYPES = {"idefics3": "Idefics3ForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration"}


def accepts(path: Path) -> bool:
    """A directory whose config.json names one of MODEL_TYPES (read_checkpoint validates the rest). Light: JSON only,
    since serving's config check calls it."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") in MODEL_TYPES
    except (OSError, ValueError, AttributeError):  # no file, not JSON, not an object: not ours (llava reports it)
        return False


def check(path: Path) -> None:
    """CheckpointError (a ValueError naming the file and field) unless the build can use it; no torch."""
    from graphs.families.idefics3.checkpoint import read_checkpoint

    read_checkpoint(path)
