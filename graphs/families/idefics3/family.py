"""Idefics3 / SmolVLM checkpoints as a model family: llava's family (graphs/families/llava/family.py) with this
family's checkpoint reader, weights mapping, vision graph and transformers reference; its decoder variants, tokenizer
handling, parity gate and KV calibration are llava's, unchanged.

Source: a checkpoint directory as `save_pretrained` writes it (`mmserve build --hf DIR`), validated by
read_checkpoint before anything is written. Reference: transformers' Idefics3ForConditionalGeneration (or SmolVLM's
class) in fp32. Manifest: llava's decoder spec; a vision spec per view (features_per_image = image_seq_len rows of
decoder width per crop or global view) whose `plan` holds what the preprocess stage and the prompt need to cut an
image into views and wrap each view's rows in its tokens, as the checkpoint's Idefics3Processor does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graphs.families.base import Source, SourceError, Specs
from graphs.families.idefics3.checkpoint import Idefics3Checkpoint, read_checkpoint
from graphs.families.idefics3.variants import VARIANTS
from graphs.families.llava.driver import decoder_spec
from graphs.families.llava.family import Loaded, LlavaFamily
from mmcore.manifest import Preprocessing, PromptSpec, VisionSpec

POSITIONS = "vision.embeddings.position_embedding.weight"


@dataclass(frozen=True)
class Idefics3Loaded(Loaded):
    @property
    def reference(self):  # llava's gate and calibration build their reference from this
        from graphs.families.idefics3.reference import Reference
        return Reference


def vision_spec(ck: Idefics3Checkpoint) -> VisionSpec:
    """One view: S x S raw pixels in, image_seq_len rows out; `plan` (kind "idefics3") for the planner:
        do_resize, longest_edge       first resize: the longest edge to this (aspect kept, the other edge even)
        max_image_size                crop side S (= the tower's image_size): splitting resizes to multiples of it
        do_image_splitting            crops + a global view, else one S x S view
        resample                      PIL filter of every resize
        max_longest_edge              transformers' cap on the first resize (MAX_IMAGE_SIZE)
        scale_factor, image_seq_len   the connector's shuffle and the <image> rows per view
        tokens                        the wrapper texts: image, fake_image, global_image, row_col (a format string
                                      with {row} and {col}, 1-based), end_of_utterance
    """
    from transformers.models.idefics3.image_processing_pil_idefics3 import MAX_IMAGE_SIZE

    v, p = ck.vision, ck.preprocess
    pre = Preprocessing(resize="resize", resample=p.resample, mean=p.mean, std=p.std)
    plan = ck.plan | {"max_longest_edge": MAX_IMAGE_SIZE}
    return VisionSpec(image_size=v.image_size, patch_size=v.patch_size, features_per_image=v.features_per_image,
                      feature_dim=ck.text.hidden, preprocessing=pre, plan=plan)


class Idefics3Family(LlavaFamily):
    name = "idefics3"
    variants = VARIANTS

    def resolve(self, name: str, weights: Path | None, tokenizer: Path | None) -> Source:
        if weights is not None or tokenizer is not None:
            raise SourceError("--weights/--tokenizer: not used with a checkpoint directory (it has its own)")
        directory = Path(name).absolute()
        ck = read_checkpoint(directory)
        if ck.chat_template is None:
            raise SourceError(f"{directory / 'tokenizer_config.json'}: chat_template: missing (nor "
                              f"chat_template.jinja)")
        return Source(directory.name, directory=directory)

    def load(self, source: Source) -> Idefics3Loaded:
        from graphs.families.idefics3.reference import position_ids
        from graphs.families.idefics3.weights import load_weights

        ck = read_checkpoint(source.directory)
        weights = load_weights(ck)
        # the rows HF adds to a full view, in patch order: llava's embeddings then add the table as it stands
        weights[POSITIONS] = weights[POSITIONS][position_ids(ck)]
        return Idefics3Loaded(ck, weights)

    def specs(self, source: Source, model: Idefics3Loaded, tokenizer_path: Path, embeddings_file: str) -> Specs:
        from tokenizers import Tokenizer

        ck, tok = model.ck, Tokenizer.from_file(str(tokenizer_path))
        prompt = PromptSpec(chat_template=ck.chat_template, image_token=tok.id_to_token(ck.image_token_id),
                            image_features=ck.vision.features_per_image,
                            eos_token=tok.id_to_token(ck.eos_token_ids[0]),
                            clean_up_tokenization_spaces=ck.clean_up_tokenization_spaces)
        return Specs(decoder_spec(ck, embeddings_file), vision_spec(ck), prompt, source=ck.to_dict())


FAMILY = Idefics3Family()
__all__ = ["FAMILY", "Idefics3Family", "Idefics3Loaded", "vision_spec"]
