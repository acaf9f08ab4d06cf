"""Read and validate an Idefics3 / SmolVLM checkpoint directory as `save_pretrained` writes it, into the LLaVA
family's typed `Checkpoint` (so its decoder graph, weights reader, gates and calibration run unchanged) plus what
Idefics3 adds: the pixel-shuffle factor and the image plan (crops + global view) the preprocess stage follows.

    config.json            model_type idefics3 | smolvlm; vision_config (the SigLIP-style tower), scale_factor,
                           image_token_id; text_config read by llava's reader (Llama/Qwen2/Mistral)
    processor_config.json  `image_processor` (transformers 5) and `image_seq_len`, or the older
                           preprocessor_config.json (flat) beside a processor_config.json holding image_seq_len
    tokenizer files        llava's reader: eos ids, chat template; plus Idefics3's special tokens
    generation_config.json llava's reader

The plan is the planner's own spec, mmcore.image_plan.idefics3.spec_from_hf on those files (transformers' class
defaults for absent keys), with SmolVLM's wrapper tokens as its tokenizer names them; the planner refuses what its
views or its prompt text could not reproduce (a crop side other than the tower's image_size, a size other than
`longest_edge`, a shuffle that does not fold the patch grid, an image_seq_len other than the connector's rows per
view, do_convert_rgb false...). Every view is then exactly S x S and HF's pixel_attention_mask is all ones for real
views (it pads only whole missing views, which the model drops): the graph takes (views, 3, S, S) with no mask, and
the positions are HF's fixed ids for a full S x S grid (read from transformers at load, family.py).

Refused besides (one line naming file and field, before anything is written): another model type, a rescale other
than 1/255 or a resample filter the manifest's preprocessing cannot name (as llava), missing special tokens.
Video: SmolVLM's video processor files are not read; images are the only input this family serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graphs.families.idefics3 import MODEL_TYPES
from graphs.families.llava.checkpoint import (ACTIVATIONS, Checkpoint, CheckpointError, PreprocessSpec, VisionSpec,
                                              _Fields, _read_json, _text, _tokenizer, config_fields, plan_spec,
                                              processor_fields)
from graphs.families.llava.tokenizer_files import cleans_up_spaces
from mmcore.image_plan.idefics3 import Idefics3PlanSpec, spec_from_hf

VISION_TYPES = ("idefics3_vision", "smolvlm_vision")
RESAMPLE_SERVED = ("lanczos", "bicubic", "bilinear", "nearest")  # the filters the manifest's Preprocessing names
END_OF_UTTERANCE = "<end_of_utterance>"
TOKEN_FIELDS = {"image": "image_token", "fake_image": "fake_image_token", "global_image": "global_image_token"}


@dataclass(frozen=True)
class Idefics3Vision(VisionSpec):
    scale_factor: int = 1  # the connector's pixel shuffle: (n/s)^2 rows of s^2 * hidden per view

    @property
    def features_per_image(self) -> int:  # per view: image_seq_len
        return self.positions // self.scale_factor ** 2


@dataclass(frozen=True)
class Idefics3Checkpoint(Checkpoint):
    architecture: str = "Idefics3ForConditionalGeneration"  # the transformers class the reference loads
    plan: dict = field(default_factory=dict)  # the manifest's VisionSpec.plan: an Idefics3PlanSpec dump

    @property
    def plan_spec(self) -> Idefics3PlanSpec:
        return Idefics3PlanSpec.model_validate(self.plan)


def _vision(f: _Fields, top: _Fields) -> Idefics3Vision:
    """The tower; the shuffle's fit to its patch grid is the plan spec's to check."""
    f.choice("model_type", VISION_TYPES)
    image, patch = f.get("image_size", int), f.get("patch_size", int)
    if image % patch:
        f.fail("image_size", f"{image} is not a multiple of patch_size {patch}")
    if f.get("num_channels", int, 3) != 3:
        f.fail("num_channels", "only 3-channel images are supported")
    hidden, heads = f.get("hidden_size", int), f.get("num_attention_heads", int)
    layers = f.get("num_hidden_layers", int)
    if hidden % heads:
        f.fail("num_attention_heads", f"{heads} does not divide hidden_size {hidden}")
    # every encoder layer runs, then post_layernorm: the connector reads the last hidden state
    return Idefics3Vision(kind="siglip", hidden=hidden, intermediate=f.get("intermediate_size", int), layers=layers,
                          heads=heads, image_size=image, patch_size=patch, act=f.choice("hidden_act", ACTIVATIONS),
                          eps=f.get("layer_norm_eps", float, 1e-6), feature_layers=(layers,), drop_cls=False,
                          scale_factor=top.get("scale_factor", int, 2))


def _preprocess(directory: Path, spec: Idefics3PlanSpec) -> PreprocessSpec:
    """llava's PreprocessSpec from the plan spec: rescale + mean/std, which the graph folds in (and the reference
    applies); the resizes are the plan's. Refuses what llava's graph and the manifest refuse too."""
    f = processor_fields(directory)
    if spec.resample not in RESAMPLE_SERVED:
        f.fail("resample", f"{spec.resample} is not supported (supported: PIL {', '.join(RESAMPLE_SERVED)})")
    if abs(spec.rescale_factor * 255 - 1) > 1e-6:
        f.fail("rescale_factor", f"{spec.rescale_factor} is not supported (only 1/255)")
    if min(spec.image_std) <= 0:
        f.fail("image_std", f"{list(spec.image_std)}: every channel's std must be > 0")
    return PreprocessSpec(resize="longest_edge", size=spec.longest_edge or 0, crop=None, resample=spec.resample,
                          rescale_factor=spec.rescale_factor, mean=spec.image_mean, std=spec.image_std,
                          convert_rgb=True)


def _special_tokens(directory: Path, image_token_id: int, config: _Fields, model_type: str) -> dict[str, str]:
    """The plan spec's wrapper tokens ({field: text}) as the processor writes them around each view's rows.
    Idefics3Processor has them fixed (the spec's defaults); SmolVLMProcessor reads them from the tokenizer
    (tokenizer_config.json, at the top or under extra_special_tokens). `<image>` must be image_token_id; the fake
    token and end of utterance must be tokens already (the processor would add them past the model's vocabulary);
    the global tag may be plain text, tokenized as written, as are the row/column tags (the planner writes
    `<row_R_col_C>`, as both processors do)."""
    from tokenizers import Tokenizer

    defaults = Idefics3PlanSpec.model_fields
    tokens = {key: defaults[name].default for key, name in TOKEN_FIELDS.items()}
    tokens["end_of_utterance"] = END_OF_UTTERANCE
    if model_type == "smolvlm":
        cfg = _read_json(directory / "tokenizer_config.json")
        extra = cfg.get("extra_special_tokens") if isinstance(cfg.get("extra_special_tokens"), dict) else {}
        for key in tokens:
            value = cfg.get(f"{key}_token", extra.get(f"{key}_token"))
            tokens[key] = value if isinstance(value, str) else tokens[key]
    path = directory / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))  # llava's _tokenizer has already checked it reads
    if tok.id_to_token(image_token_id) != tokens["image"]:
        config.fail("image_token_id", f"{image_token_id} is {tok.id_to_token(image_token_id)!r} in {path}, "
                                      f"not {tokens['image']!r}")
    for key in ("fake_image", "end_of_utterance"):
        if tok.token_to_id(tokens[key]) is None:
            raise CheckpointError(f"{path}: added_tokens: {tokens[key]!r} missing (the processor's {key} token)")
    return {name: tokens[key] for key, name in TOKEN_FIELDS.items()}


def read_checkpoint(directory: str | Path) -> Idefics3Checkpoint:
    directory = Path(directory)
    top = config_fields(directory)
    model_type = top.choice("model_type", tuple(MODEL_TYPES))
    vision = _vision(top.sub("vision_config"), top)
    text_f = top.sub("text_config")
    tied = top.get("tie_word_embeddings", bool, False) or text_f.get("tie_word_embeddings", bool, False)
    text = _text(text_f, tied)
    image_token = top.get("image_token_id", int)
    if not 0 <= image_token < text.vocab_size:
        top.fail("image_token_id", f"{image_token} is outside the vocabulary of {text.vocab_size}")
    spec = plan_spec(directory, spec_from_hf)
    preprocess = _preprocess(directory, spec)
    eos, template, files = _tokenizer(directory)
    tokens = _special_tokens(directory, image_token, top, model_type)
    spec = Idefics3PlanSpec.model_validate(spec.model_dump() | tokens)
    from graphs.families.llava.generation import read_generation

    return Idefics3Checkpoint(
        directory=directory, vision=vision, text=text, projector_act="none", projector_bias=False,
        image_token_id=image_token, eos_token_ids=eos, chat_template=template, preprocess=preprocess,
        tokenizer_files=files, clean_up_tokenization_spaces=cleans_up_spaces(directory / "tokenizer.json",
                                                                             directory / "tokenizer_config.json"),
        generation=read_generation(directory).defaults_dict(), architecture=MODEL_TYPES[model_type],
        plan=spec.model_dump(mode="json"))
