"""Model dimensions and the named presets the build command accepts.

A preset fixes every dimension of the LLaVA-style model: a ViT encoder whose patch features, projected to the
decoder width, are prepended as input embeddings to a GPT-2-style decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# ImageNet statistics: the de-facto default for ViT encoders. They are folded into the first MatMul of the vision
# graph, so serving passes raw uint8 pixels and these numbers never leave the build.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VisionConfig:
    image_size: int  # square input, pixels
    patch_size: int  # non-overlapping square patches
    width: int  # embedding width of the ViT
    heads: int
    layers: int
    mlp_ratio: int = 4
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:  # flattened (C, p, p) patch
        return 3 * self.patch_size * self.patch_size


@dataclass(frozen=True)
class DecoderConfig:
    width: int
    heads: int
    layers: int
    vocab_size: int
    max_positions: int  # learned position table; also the longest context a sequence may reach
    mlp_ratio: int = 4

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class ModelConfig:
    name: str
    vision: VisionConfig
    decoder: DecoderConfig
    seed: int = 0  # seeds random weights when no weights file is given
    layer_norm_eps: float = 1e-5

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_patches

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        v, d = self.vision, self.decoder
        if v.image_size % v.patch_size:
            raise ValueError(f"preset {self.name}: image_size {v.image_size} is not a multiple of patch_size")
        if v.width % v.heads or d.width % d.heads:
            raise ValueError(f"preset {self.name}: width must be a multiple of heads")
        if self.num_image_tokens >= d.max_positions:
            raise ValueError(f"preset {self.name}: {self.num_image_tokens} image tokens leave no room for text")


PRESETS: dict[str, ModelConfig] = {
    # The dimensions the performance targets are stated on.
    "reference": ModelConfig(
        name="reference",
        vision=VisionConfig(image_size=224, patch_size=16, width=384, heads=6, layers=6),
        decoder=DecoderConfig(width=384, heads=6, layers=6, vocab_size=8192, max_positions=512),
    ),
    # Small enough that a full build (export, fuse, quantize, parity) and the e2e tests take seconds.
    "tiny": ModelConfig(
        name="tiny",
        vision=VisionConfig(image_size=32, patch_size=8, width=64, heads=2, layers=2),
        decoder=DecoderConfig(width=64, heads=2, layers=2, vocab_size=512, max_positions=128),
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None
