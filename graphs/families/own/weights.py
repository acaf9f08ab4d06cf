"""Weights: seeded random, or loaded from a safetensors file with every name and shape checked."""

from __future__ import annotations

from pathlib import Path

from graphs.families.own.config import ModelConfig
from graphs.families.own.model import MultimodalModel


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the tensor."""


def load_model(cfg: ModelConfig, weights: str | Path | None = None) -> MultimodalModel:
    """The reference model for `cfg`: seeded random weights, or the tensors of a safetensors file."""
    model = MultimodalModel.seeded(cfg)
    if weights is None:
        return model
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"{path}: missing tensor {missing[0]!r}{more}")
    if unexpected:
        raise WeightsError(f"{path}: unexpected tensor {unexpected[0]!r} for preset {cfg.name}")
    for name, ref in expected.items():
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise WeightsError(f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                               f"preset {cfg.name} needs {tuple(ref.shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model.eval()


def save_weights(model: MultimodalModel, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
