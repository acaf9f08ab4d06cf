"""A v2 manifest for unit tests that bring their own small graphs (no build): the specs serving reads, with the
own family's prompt format."""

from __future__ import annotations

from pathlib import Path

from graphs.families.own.family import CHAT_TEMPLATE, IMAGE_TOKEN
from mmcore.manifest import (DecoderSpec, GraphEntry, Manifest, Positions, Preprocessing, PromptSpec, TensorSpec,
                             VisionSpec)


def vision_spec(image_size: int, features: int = 1, width: int = 1, resize: str = "crop") -> VisionSpec:
    return VisionSpec(image_size=image_size, patch_size=1, features_per_image=features, feature_dim=width,
                      preprocessing=Preprocessing(resize=resize, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))


def fake_manifest(graphs: dict[str, GraphEntry], image_size: int, features: int, width: int,
                  vocab: int = 8, max_positions: int = 128) -> Manifest:
    decoder = DecoderSpec(layers=1, heads=1, kv_heads=1, head_dim=width, hidden_size=width, vocab_size=vocab,
                          max_positions=max_positions, positions=Positions(scheme="learned"), eos_token_ids=[1],
                          embeddings=TensorSpec(name="token_embeddings.npy", dtype="float32", shape=[vocab, width]))
    vision = vision_spec(image_size, features, width)
    prompt = PromptSpec(chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, image_features=features)
    return Manifest(family="own", preset="fake", decoder=decoder, vision=vision, prompt=prompt,
                    tokenizer_file="tokenizer.json", graphs=graphs)


def write_fake_manifest(directory: Path, graphs: dict[str, GraphEntry], **dims) -> None:
    fake_manifest(graphs, **dims).write(Path(directory))
