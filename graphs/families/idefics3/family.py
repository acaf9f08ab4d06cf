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
    def reference(self):
        """transformers' Idefics3 (or SmolVLM) model for this checkpoint; llava's gate and calibration use it."""
        from graphs.families.idefics3.reference import Reference

        return Reference(self.ck)


def vision_spec(ck: Idefics3Checkpoint) -> VisionSpec:
    """One view: S x S raw pixels in, image_seq_len rows out; `plan`: the planner's own spec
    (mmcore.image_plan.idefics3.Idefics3PlanSpec, kind "idefics3"), which cuts an image into views and writes the
    text around each view's rows as the checkpoint's processor does. The preprocessing's resample and mean/std are
    the plan's (serving resizes by the plan; the graph folds mean/std in)."""
    v, p = ck.vision, ck.preprocess
    pre = Preprocessing(resize="resize", resample=p.resample, mean=p.mean, std=p.std)
    return VisionSpec(image_size=v.image_size, patch_size=v.patch_size, features_per_image=v.features_per_image,
                      feature_dim=ck.text.hidden, preprocessing=pre, plan=ck.plan)


class Idefics3Family(LlavaFamily):
    name = "idefics3"
    variants = VARIANTS

    def resolve(self, name: str, weights: Path | None, tokenizer: Path | None) -> Source:
        if weights is not None or tokenizer is not None:
            raise SourceError("--weights/--tokenizer: not used with a checkpoint directory (it has its own)")
        directory = Path(name).absolute()
        ck = self.load_checkpoint(directory).ck
        if ck.chat_template is None:
            raise SourceError(f"{directory / 'tokenizer_config.json'}: chat_template: missing (nor "
                              f"chat_template.jinja)")
        return Source(directory.name, directory=directory)

    @staticmethod
    def load_checkpoint(directory: Path, weights: bool = False) -> Idefics3Loaded:
        from graphs.families.idefics3.reference import position_ids
        from graphs.families.idefics3.weights import load_weights

        ck = read_checkpoint(directory)
        if not weights:
            return Idefics3Loaded(ck, {})
        w = load_weights(ck)
        # the rows HF adds to a full view, in patch order: llava's embeddings then add the table as it stands
        w[POSITIONS] = w[POSITIONS][position_ids(ck)]
        return Idefics3Loaded(ck, w)

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
