"""Read and validate an Idefics3 / SmolVLM checkpoint directory as `save_pretrained` writes it, into the LLaVA
family's typed `Checkpoint` (so its decoder graph, weights reader, gates and calibration run unchanged) plus what
Idefics3 adds: the pixel-shuffle factor and the image plan (crops + global view) the preprocess stage follows.

    config.json            model_type idefics3 | smolvlm; vision_config (the SigLIP-style tower), scale_factor,
                           image_token_id; text_config read by llava's reader (Llama/Qwen2/Mistral)
    processor_config.json  `image_processor` (transformers 5) and `image_seq_len`, or the older
                           preprocessor_config.json (flat) beside a processor_config.json holding image_seq_len
    tokenizer files        llava's reader: eos ids, chat template; plus Idefics3's special tokens
    generation_config.json llava's reader

Views. With do_image_splitting the processor resizes to multiples of max_image_size (M) and cuts M x M crops plus
a global view resized to M x M; without it, every image is resized to M x M. So every view is exactly M x M and
HF's pixel_attention_mask is all ones for real views (it pads only whole missing views, which the model drops):
the graph takes (views, 3, M, M) with no mask. M must equal the tower's image_size (refused otherwise): the
positions are then HF's fixed ids for a full M x M grid (read from transformers at load, family.py).

Refused (one line naming file and field, before anything is written): another model type, a tower at a size the
crops do not match, a grid the shuffle factor does not divide, a size other than `longest_edge`, a rescale other
than 1/255, do_convert_rgb false, a resample filter serving does not run, a processor image_seq_len that disagrees
with the model's, missing special tokens. Video: SmolVLM's video processor files are not read; images are the
only input this family serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graphs.families.idefics3 import MODEL_TYPES
from graphs.families.llava.checkpoint import (ACTIVATIONS, RESAMPLE, Checkpoint, CheckpointError, PreprocessSpec,
                                              VisionSpec, _Fields, _read_json, _text, _tokenizer, cleans_up_spaces,
                                              config_fields, normalization)

VISION_TYPES = ("idefics3_vision", "smolvlm_vision")
RESAMPLE_SERVED = ("lanczos", "bicubic", "bilinear", "nearest")  # PIL filters the preprocess stage runs
IMAGE_TOKEN, FAKE_TOKEN, GLOBAL_TOKEN = "<image>", "<fake_token_around_image>", "<global-img>"
END_OF_UTTERANCE, ROW_COL = "<end_of_utterance>", "<row_{row}_col_{col}>"
PROCESSOR, PREPROCESSOR = "processor_config.json", "preprocessor_config.json"


@dataclass(frozen=True)
class Idefics3Vision(VisionSpec):
    scale_factor: int = 1  # the connector's pixel shuffle: (n/s)^2 rows of s^2 * hidden per view

    @property
    def features_per_image(self) -> int:  # per view: image_seq_len
        return self.positions // self.scale_factor ** 2


@dataclass(frozen=True)
class Idefics3Checkpoint(Checkpoint):
    architecture: str = "Idefics3ForConditionalGeneration"  # the transformers class the reference loads
    plan: dict = field(default_factory=dict)  # the manifest's VisionSpec.plan (family.py)


def _vision(f: _Fields, top: _Fields, scale: int) -> Idefics3Vision:
    f.choice("model_type", VISION_TYPES)
    image, patch = f.get("image_size", int), f.get("patch_size", int)
    if image % patch:
        f.fail("image_size", f"{image} is not a multiple of patch_size {patch}")
    if scale < 1 or (image // patch) % scale:
        top.fail("scale_factor", f"{scale} does not divide the {image // patch} patches a side of "
                                 f"vision_config.image_size {image} / patch_size {patch}")
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
                          scale_factor=scale)


def _processor_files(directory: Path) -> tuple[_Fields, int | None]:
    """-> (image processor settings, the processor's image_seq_len or None)."""
    top_path = directory / PROCESSOR
    top = _read_json(top_path, required=False) or {}
    seq = _Fields(top_path, top).get("image_seq_len", int, None)
    if "image_processor" in top:
        return _Fields(top_path, top).sub("image_processor"), seq
    path = directory / PREPROCESSOR
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (nor {PROCESSOR} with an image_processor)")
    return _Fields(path, _read_json(path)), seq


def _edge(f: _Fields, key: str) -> int:
    raw = f.get(key, dict)
    if set(raw) != {"longest_edge"} or not isinstance(raw["longest_edge"], int) or raw["longest_edge"] < 1:
        f.fail(key, f"unsupported {raw!r} (supported: {{longest_edge: N}})")
    return raw["longest_edge"]


def _image_processor(f: _Fields, v: Idefics3Vision, config: Path) -> tuple[PreprocessSpec, dict]:
    """-> (llava's PreprocessSpec: rescale + mean/std, which the graph folds in; the plan's resize settings)."""
    side = _edge(f, "max_image_size")
    if side != v.image_size:
        f.fail("max_image_size", f"longest_edge {side} differs from {config}'s vision_config.image_size "
                                 f"{v.image_size} (every view must be one tower input)")
    do_resize = f.get("do_resize", bool, True)
    longest = _edge(f, "size") if do_resize else None
    resample = f.get("resample", int, 1)
    if RESAMPLE.get(resample) not in RESAMPLE_SERVED:
        f.fail("resample", f"{resample} is not supported (supported: PIL {', '.join(RESAMPLE_SERVED)})")
    rescale = f.get("rescale_factor", float, 1 / 255) if f.get("do_rescale", bool, True) else 1.0
    if abs(rescale * 255 - 1) > 1e-6:
        f.fail("rescale_factor", f"{rescale} is not supported (only 1/255)")
    if not f.get("do_convert_rgb", bool, True):
        f.fail("do_convert_rgb", "false is not supported (serving converts every image to RGB)")
    mean, std = normalization(f)
    spec = PreprocessSpec(resize="longest_edge", size=longest or 0, crop=None, resample=RESAMPLE[resample],
                          rescale_factor=rescale, mean=mean, std=std, convert_rgb=True)
    plan = {"do_resize": do_resize, "longest_edge": longest, "max_image_size": side,
            "do_image_splitting": f.get("do_image_splitting", bool, True), "resample": RESAMPLE[resample]}
    return spec, plan


def _special_tokens(directory: Path, image_token_id: int, config: _Fields, model_type: str) -> dict:
    """The wrapper texts the processor writes around each view's rows. Idefics3Processor has them fixed; SmolVLM's
    reads them from the tokenizer (tokenizer_config.json, at the top or under extra_special_tokens). `<image>`
    must be image_token_id; the fake token and end of utterance must be tokens already (Idefics3Processor would
    add them past the model's vocabulary); global and row/col tags may be plain text, tokenized as written."""
    from tokenizers import Tokenizer

    tokens = {"image": IMAGE_TOKEN, "fake_image": FAKE_TOKEN, "global_image": GLOBAL_TOKEN, "row_col": ROW_COL,
              "end_of_utterance": END_OF_UTTERANCE}
    if model_type == "smolvlm":
        cfg = _read_json(directory / "tokenizer_config.json")
        extra = cfg.get("extra_special_tokens") if isinstance(cfg.get("extra_special_tokens"), dict) else {}
        for key in ("image", "fake_image", "global_image", "end_of_utterance"):
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
    return tokens


def read_checkpoint(directory: str | Path) -> Idefics3Checkpoint:
    directory = Path(directory)
    top = config_fields(directory)
    path = top.path
    model_type = top.choice("model_type", tuple(MODEL_TYPES))
    vision = _vision(top.sub("vision_config"), top, top.get("scale_factor", int, 2))
    text_f = top.sub("text_config")
    tied = top.get("tie_word_embeddings", bool, False) or text_f.get("tie_word_embeddings", bool, False)
    text = _text(text_f, tied)
    image_token = top.get("image_token_id", int)
    if not 0 <= image_token < text.vocab_size:
        top.fail("image_token_id", f"{image_token} is outside the vocabulary of {text.vocab_size}")
    preprocess_f, processor_seq = _processor_files(directory)
    preprocess, plan = _image_processor(preprocess_f, vision, path)
    if processor_seq is not None and processor_seq != vision.features_per_image:
        raise CheckpointError(f"{directory / PROCESSOR}: image_seq_len: {processor_seq} differs from the "
                              f"{vision.features_per_image} rows per view {path} implies ((image_size / patch_size)^2 "
                              f"/ scale_factor^2)")
    eos, template, files = _tokenizer(directory)
    tokens = _special_tokens(directory, image_token, top, model_type)
    from graphs.families.llava.generation import read_generation

    plan |= {"kind": "idefics3", "scale_factor": vision.scale_factor, "image_seq_len": vision.features_per_image,
             "tokens": tokens}
    return Idefics3Checkpoint(
        directory=directory, vision=vision, text=text, projector_act="none", projector_bias=False,
        image_token_id=image_token, eos_token_ids=eos, chat_template=template, preprocess=preprocess,
        tokenizer_files=files, clean_up_tokenization_spaces=cleans_up_spaces(directory / "tokenizer.json",
                                                                             directory / "tokenizer_config.json"),
        generation=read_generation(directory).defaults_dict(), architecture=MODEL_TYPES[model_type], plan=plan)
