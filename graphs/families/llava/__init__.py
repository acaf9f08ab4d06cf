"""LLaVA checkpoints (CLIP/SigLIP + Llama/Qwen2/Mistral) built from a save_pretrained directory
(graphs/families/llava/family.py). No preset names: its sources are checkpoint directories (`accepts`)."""

from pathlib import Path

SOURCES: tuple[str, ...] = ()


def accepts(path: Path) -> bool:
    """A directory with a config.json: a checkpoint for this family (read_checkpoint refuses the wrong kind)."""
    return (path / "config.json").is_file()
