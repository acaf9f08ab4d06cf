"""LLaVA checkpoints (CLIP/SigLIP + Llama/Qwen2/Mistral) built from a save_pretrained directory
(graphs/families/llava/family.py). Its sources are checkpoint directories (`accepts`) and the named checkpoints the
package ships (`SOURCES`): `demo`, the trained captioner in graphs/assets/demo-llava (graphs/demo trains it), so
`mmserve build --preset demo` runs exactly what `mmserve build --hf graphs/assets/demo-llava` runs."""

from pathlib import Path

SHIPPED: dict[str, Path] = {"demo": Path(__file__).resolve().parents[2] / "assets" / "demo-llava"}
SOURCES: tuple[str, ...] = tuple(SHIPPED)


def accepts(path: Path) -> bool:
    """A directory with a config.json: a checkpoint for this family (read_checkpoint refuses the wrong kind)."""
    return (path / "config.json").is_file()


def check(path: Path) -> None:
    """CheckpointError (a ValueError naming the file and field) unless the build can use it; no torch."""
    from graphs.families.llava.checkpoint import read_checkpoint
    from graphs.families.llava.preprocessing import preprocessing

    preprocessing(read_checkpoint(path))  # the base view's resize: what the build's resolve refuses too
