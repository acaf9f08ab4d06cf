"""The project's own family: a ViT encoder whose patch features, projected to the decoder width, come before a
GPT-2-style decoder's prompt (learned positions, LayerNorm, GELU, one EOS, its own role tokens).

Source: a preset (graphs/families/own/config.py), seeded weights or a safetensors file (the default model, `demo`,
is a LLaVA checkpoint: graphs/families/llava). Prompt: every image first, then `<|role|> text <|end|>` per
message and `<|assistant|>` (graphs/families/own/tokenizer.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from graphs.families.base import Progress, Source, SourceError, Specs
from graphs.families.own.config import ModelConfig, get_preset
from graphs.families.own.tokenizer import EOS, ROLE_TOKENS, build_tokenizer, load_tokenizer, token_id
from graphs.families.own.variants import VARIANTS
from mmcore.manifest import DecoderSpec, Positions, Preprocessing, PromptSpec, TensorSpec, VisionSpec

if TYPE_CHECKING:  # graphs.gate imports this package
    from graphs.gate import GateResult

IMAGE_TOKEN = "<image>"  # text the template writes per image; split out before tokenizing, never a vocabulary entry

# Rendered with jinja2 the way transformers renders chat templates (trim_blocks, lstrip_blocks). It reproduces
# encode_chat exactly: all images first, in message order, then the turns. Text parts of one message join with "\n".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}{%- if message.content is not string -%}"
    "{%- for part in message.content if part.type == 'image' -%}" + IMAGE_TOKEN + "{%- endfor -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- for message in messages -%}<|{{ message.role }}|>"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{{ message.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') }}"
    "{%- endif -%}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


class OwnFamily:
    name = "own"
    variants = VARIANTS
    gate_partners = ("vision/cpu-fp32", "decoder/cpu-fp32")  # graphs/parity.py: the greedy checks' fp32 pair

    def config(self, source: Source) -> ModelConfig:
        return get_preset(source.name)

    def resolve(self, name: str, weights: Path | None, tokenizer: Path | None) -> Source:
        return Source(name, None if weights is None else Path(weights),
                      None if tokenizer is None else Path(tokenizer))

    def load(self, source: Source):
        from graphs.families.own.weights import load_model  # torch

        return load_model(self.config(source), source.weights)

    def write_tokenizer(self, source: Source, model, dst: Path) -> None:
        cfg, src = self.config(source), source.tokenizer
        if src is None:
            dst.write_text(build_tokenizer(cfg.decoder.vocab_size).to_str(pretty=True))
        else:
            if not src.is_file():
                raise SourceError(f"{src}: tokenizer file not found")
            shutil.copyfile(src, dst)
        try:
            tok = load_tokenizer(dst)
        except Exception as e:  # the tokenizers library raises a plain Exception on bad JSON
            raise SourceError(f"{src}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from None
        if tok.get_vocab_size() != cfg.decoder.vocab_size:
            raise SourceError(f"{src}: tokenizer has {tok.get_vocab_size()} tokens, preset {cfg.name} decoder "
                                  f"vocab_size is {cfg.decoder.vocab_size}")
        try:
            for t in (EOS, "<|pad|>", *ROLE_TOKENS.values()):
                token_id(tok, t)
        except ValueError as e:
            raise SourceError(f"{src}: {e}") from None

    def embeddings(self, model) -> np.ndarray:
        return model.decoder.wte.weight.detach().numpy().astype(np.float32)  # (V, D)

    def specs(self, source: Source, model, tokenizer_path: Path, embeddings_file: str) -> Specs:
        cfg = self.config(source)
        tok = load_tokenizer(tokenizer_path)
        d, v = cfg.decoder, cfg.vision
        decoder = decoder_spec(cfg, eos_token_ids=[token_id(tok, EOS)], pad_token_id=token_id(tok, "<|pad|>"),
                               embeddings_file=embeddings_file)
        vision = VisionSpec(image_size=v.image_size, patch_size=v.patch_size, features_per_image=cfg.num_image_tokens,
                            feature_dim=d.width,
                            preprocessing=Preprocessing(resize="crop", resample="bicubic", mean=v.mean, std=v.std))
        prompt = PromptSpec(chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
                            image_features=cfg.num_image_tokens, eos_token=EOS)
        return Specs(decoder, vision, prompt, source=cfg.to_dict())

    def parity_gate(self, model, built: dict[str, dict[str, bytes]], decoder: DecoderSpec,
                    progress: Progress) -> GateResult:
        from graphs.parity import run_parity_gate  # torch

        return run_parity_gate(model, built, progress, decoder)


def decoder_spec(cfg: ModelConfig, eos_token_ids: list[int], pad_token_id: int | None = None,
                 embeddings_file: str = "token_embeddings.npy") -> DecoderSpec:
    """The runtime shape of this family's decoder: multi-head attention (kv_heads == heads), learned positions."""
    d = cfg.decoder
    return DecoderSpec(layers=d.layers, heads=d.heads, kv_heads=d.heads, head_dim=d.head_dim, hidden_size=d.width,
                       vocab_size=d.vocab_size, max_positions=d.max_positions, positions=Positions(scheme="learned"),
                       eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                       embeddings=TensorSpec(name=embeddings_file, dtype="float32", shape=[d.vocab_size, d.width]))


FAMILY = OwnFamily()
