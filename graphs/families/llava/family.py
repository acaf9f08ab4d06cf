"""LLaVA checkpoints as a model family: a CLIP or SigLIP vision tower + projector whose features replace the
image placeholder tokens of a Llama/Qwen2/Mistral decoder (rotary positions, grouped-query attention).

Source: a checkpoint directory as `save_pretrained` writes it (`mmserve build --hf DIR`); read_checkpoint validates
it before anything is written. Reference: transformers' LlavaForConditionalGeneration in fp32 (reference.py).
Manifest: rotary positions with the checkpoint's theta and scaling, every eos id, the checkpoint's chat template,
its image token as the placeholder (expanding to the tower's features per image), and the image processor's
resize/crop as the preprocessing spec (rescale and mean/std are folded into the vision graph).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphs.families.base import Progress, Source, SourceError, Specs
from graphs.families.llava import SHIPPED
from graphs.families.llava.checkpoint import Checkpoint, CheckpointError, read_checkpoint
from graphs.families.llava.tokenizer_files import effective_tokenizer_json, same_tokenizer
from graphs.families.llava.driver import decoder_spec
from graphs.families.llava.preprocessing import preprocessing
from graphs.families.llava.variants import VARIANTS
from graphs.gate import GateResult
from mmcore.manifest import DecoderSpec, PromptSpec, VisionSpec



@dataclass(frozen=True)
class Loaded:
    ck: Checkpoint
    weights: dict  # canonical key -> np.ndarray (weights.py)

    def reference(self):
        """transformers' model for this checkpoint (reference.py); build time only."""
        from graphs.families.llava.reference import Reference

        return Reference(self.ck)


class LlavaFamily:
    name = "llava"
    variants = VARIANTS
    gate_partners = ()  # every check compares a variant with transformers alone

    def resolve(self, name: str, weights: Path | None, tokenizer: Path | None) -> Source:
        """`name` is a checkpoint directory or a shipped checkpoint's name (SHIPPED: its directory, the source
        keeping the name, so the manifest says `demo`); read and validated here, before the build writes anything."""
        if weights is not None or tokenizer is not None:
            raise SourceError("--weights/--tokenizer: not used with a checkpoint directory (it has its own)")
        directory = (SHIPPED[name] if name in SHIPPED else Path(name)).absolute()
        ck = self.load_checkpoint(directory).ck
        preprocessing(ck)
        if ck.chat_template is None:
            raise SourceError(f"{directory / 'tokenizer_config.json'}: chat_template: missing (nor "
                              f"chat_template.jinja)")
        return Source(name if name in SHIPPED else directory.name, directory=directory)

    @staticmethod
    def load_checkpoint(directory: Path, weights: bool = False) -> Loaded:
        """The checkpoint read and validated, and its weights when asked (else an empty dict)."""
        from graphs.families.llava.weights import load_weights

        ck = read_checkpoint(directory)
        return Loaded(ck, load_weights(ck) if weights else {})

    def load(self, source: Source) -> Loaded:
        return self.load_checkpoint(source.directory, weights=True)

    def write_tokenizer(self, source: Source, model: Loaded, dst: Path) -> None:
        """The checkpoint's tokenizer.json verbatim when transformers runs it as written, else as transformers runs
        it (see effective_tokenizer_json)."""
        original = model.ck.directory / "tokenizer.json"
        effective = effective_tokenizer_json(model.ck.directory)
        if same_tokenizer(effective, original.read_text(encoding="utf-8")):
            shutil.copyfile(original, dst)
        else:
            dst.write_text(effective, encoding="utf-8")

    def embeddings(self, model: Loaded) -> np.ndarray:
        return model.weights["text.embed_tokens.weight"].astype(np.float32)  # (V, D)

    def specs(self, source: Source, model: Loaded, tokenizer_path: Path, embeddings_file: str) -> Specs:
        from tokenizers import Tokenizer

        ck, tok = model.ck, Tokenizer.from_file(str(tokenizer_path))
        v = ck.vision
        vision = VisionSpec(image_size=v.image_size, patch_size=v.patch_size, features_per_image=v.features_per_image,
                            feature_dim=ck.text.hidden, preprocessing=preprocessing(ck))
        prompt = PromptSpec(chat_template=ck.chat_template, image_token=tok.id_to_token(ck.image_token_id),
                            image_features=v.features_per_image, eos_token=tok.id_to_token(ck.eos_token_ids[0]),
                            clean_up_tokenization_spaces=ck.clean_up_tokenization_spaces)
        return Specs(decoder_spec(ck, embeddings_file), vision, prompt, source=ck.to_dict())

    def parity_gate(self, model: Loaded, built: dict[str, dict[str, bytes]], decoder: DecoderSpec,
                    progress: Progress) -> GateResult:
        from graphs.families.llava import parity
        from graphs.signed_check import u8s8_figures

        ref = model.reference()
        progress(f"reference: transformers {ref.MODEL}")
        inputs = parity.Inputs(ref)
        out = GateResult({})
        for graph, protos in built.items():
            forced: dict[str, np.ndarray] = {}  # decoder variant -> its forced-decode logits, for kv siblings
            # float-cache siblings first: a -kv8 variant is measured against its sibling's logits
            for name in sorted(protos, key=lambda n: self.variants[graph][n].same_weights_as is not None):
                spec = self.variants[graph][name]
                progress(f"parity {graph} {name}")
                if graph == "vision":
                    figures, px, got = self.vision_figures(ref, protos[name])
                    run = lambda b: parity.run_views(b, px)  # noqa: E731
                    figures |= u8s8_figures(protos[name], run, got) if spec.precision == "int8" else {}
                else:
                    figures, forced[name] = parity.decoder_run(model.ck, inputs, protos[name], spec.kv_cache)
                    run = lambda b: parity.decoder_run(model.ck, inputs, b, spec.kv_cache)[1]  # noqa: E731
                    figures |= u8s8_figures(protos[name], run, forced[name]) if spec.precision == "int8" else {}
                    if spec.kv_cache is not None:
                        figures |= self._kv_figures(model, ref, inputs, (forced[name], figures), spec,
                                                   (forced, out.figures[graph]))
                out.add(graph, name, figures, parity.failures(spec.precision, figures))
        return out

    @staticmethod
    def vision_figures(ref, proto: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
        """-> (the vision graph's figures against the reference, the pixels they were measured on, its features)."""
        from graphs.families.llava import parity

        return parity.vision_run(ref, proto)

    @staticmethod
    def _kv_figures(model: Loaded, ref, inputs, mine: tuple, spec, siblings: tuple) -> dict:
        """mine: (forced logits, figures) of the kv variant; siblings: (forced logits, figures) by variant name."""
        from graphs.families.llava import kv_calibration, kv_parity

        quant = kv_calibration.calibrate(model, spec.kv_cache.bits)
        clipped = kv_parity.clipped_fraction(ref, inputs, quant)
        sib, key = spec.same_weights_as, "forced_logits_rms_err_over_std"
        return kv_parity.kv_figures(mine[0], siblings[0][sib], mine[1][key], siblings[1][sib][key], clipped)


FAMILY = LlavaFamily()
__all__ = ["FAMILY", "CheckpointError", "Loaded", "LlavaFamily", "preprocessing"]
