"""Read and validate a LLaVA checkpoint directory as `save_pretrained` writes it, into one typed `Checkpoint`.

    config.json (LlavaConfig)        -> VisionSpec, TextSpec, projector act/bias, image token, feature layer/strategy
    tokenizer.json (+ _config.json)  -> eos ids, chat template (tokenizer_config's `chat_template` or
                                        chat_template.jinja)
    processor_config.json | preprocessor_config.json -> PreprocessSpec
    generation_config.json           -> more eos ids and the sampling defaults, when present (generation.py)

Everything unsupported is refused here with a one-line `CheckpointError` naming the file and the field, before
anything is read from the weights or written anywhere. The weights themselves are read by `weights.py`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from graphs.families.base import SourceError

VISION_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
TEXT_TYPES = ("llama", "qwen2", "mistral")
# Activations the graphs can emit (graphs/families/llava/activations.py), by their transformers name.
ACTIVATIONS = ("gelu", "gelu_pytorch_tanh", "gelu_new", "quick_gelu", "relu", "silu")
ROPE_TYPES = ("default", "linear", "llama3")
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class CheckpointError(SourceError):
    """A checkpoint this family cannot build; the message is one line naming the file and field."""


@dataclass(frozen=True)
class VisionSpec:
    kind: str  # "clip" (class token, pre-layernorm) | "siglip" (no class token)
    hidden: int
    intermediate: int
    layers: int  # encoder layers the graph must run: up to the deepest feature layer
    heads: int
    image_size: int
    patch_size: int
    act: str
    eps: float
    feature_layers: tuple[int, ...]  # indices into hidden_states (0 = embeddings), resolved to non-negative
    drop_cls: bool  # vision_feature_select_strategy "default": the first position is dropped

    @property
    def positions(self) -> int:  # sequence length inside the tower
        return (self.image_size // self.patch_size) ** 2 + (self.kind == "clip")

    @property
    def features_per_image(self) -> int:
        return self.positions - self.drop_cls


@dataclass(frozen=True)
class TextSpec:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    eps: float
    rope_theta: float
    rope_scaling: dict | None  # None or {"rope_type": "linear"|"llama3", ...}
    qkv_bias: bool
    tied: bool


@dataclass(frozen=True)
class PreprocessSpec:
    """What the preprocess stage must do before the graph (which folds rescale + mean/std in itself)."""

    resize: str  # "shortest_edge" | "height_width" | "none"
    size: tuple[int, int] | int  # shortest edge, or (height, width)
    crop: tuple[int, int] | None  # center crop (height, width)
    resample: str
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    convert_rgb: bool


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    vision: VisionSpec
    text: TextSpec
    projector_act: str
    projector_bias: bool
    image_token_id: int
    eos_token_ids: tuple[int, ...]
    chat_template: str | None
    preprocess: PreprocessSpec
    tokenizer_files: tuple[str, ...] = field(default=())
    clean_up_tokenization_spaces: bool = False
    generation: dict = field(default_factory=dict)  # GenerationDefaults fields the generation_config sets

    def to_dict(self) -> dict:
        d = asdict(self)
        # the folder's name, not its path: the same checkpoint at another path (another node, a wheel's
        # site-packages) must build the same manifest, hence the same model key
        d["directory"] = self.directory.name
        return d


def _read_json(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: file not found")
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


class _Fields:
    """Typed access to one JSON object, failing with the file and the dotted field name."""

    def __init__(self, path: Path, data: dict, prefix: str = ""):
        self.path, self.data, self.prefix = path, data, prefix

    def fail(self, key: str, why: str):
        raise CheckpointError(f"{self.path}: {self.prefix}{key}: {why}")

    def get(self, key: str, kind, default=...):
        if key not in self.data or self.data[key] is None:
            if default is ...:
                self.fail(key, "missing")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(key, f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def choice(self, key: str, allowed, default=...):
        value = self.get(key, str, default)
        if value not in allowed:
            self.fail(key, f"unsupported {value!r} (supported: {', '.join(allowed)})")
        return value

    def sub(self, key: str) -> "_Fields":
        return _Fields(self.path, self.get(key, dict), f"{self.prefix}{key}.")


def _feature_layers(f: _Fields, layers: int) -> tuple[int, ...]:
    raw = f.get("vision_feature_layer", (int, list), -2)
    values = [raw] if isinstance(raw, int) else raw
    resolved = []
    for v in values:
        if not isinstance(v, int) or not -(layers + 1) <= v <= layers:
            f.fail("vision_feature_layer", f"{v!r} is not a hidden-state index of a {layers}-layer tower")
        resolved.append(v % (layers + 1))  # hidden_states has layers + 1 entries (0 = embeddings)
    return tuple(resolved)


def _vision(f: _Fields, top: _Fields) -> VisionSpec:
    kind = VISION_TYPES[f.choice("model_type", tuple(VISION_TYPES))]
    layers = f.get("num_hidden_layers", int)
    feature_layers = _feature_layers(top, layers)
    strategy = top.choice("vision_feature_select_strategy", ("default", "full"), "default")
    image, patch = f.get("image_size", int), f.get("patch_size", int)  # a remainder is dropped, as the conv does
    if image < patch:
        f.fail("image_size", f"{image} is smaller than patch_size {patch}")
    if f.get("num_channels", int, 3) != 3:
        f.fail("num_channels", "only 3-channel images are supported")
    hidden, heads = f.get("hidden_size", int), f.get("num_attention_heads", int)
    if hidden % heads:
        f.fail("num_attention_heads", f"{heads} does not divide hidden_size {hidden}")
    return VisionSpec(kind=kind, hidden=hidden, intermediate=f.get("intermediate_size", int),
                      layers=max(feature_layers), heads=heads, image_size=image, patch_size=patch,
                      act=f.choice("hidden_act", ACTIVATIONS),
                      eps=f.get("layer_norm_eps", float, 1e-5 if kind == "clip" else 1e-6),
                      feature_layers=feature_layers, drop_cls=strategy == "default")


def _rope(f: _Fields) -> tuple[float, dict | None]:
    """transformers 5 writes `rope_parameters`; older configs `rope_theta` + `rope_scaling`."""
    if "rope_parameters" in f.data and f.data["rope_parameters"] is not None:
        params, key = f.sub("rope_parameters"), "rope_parameters"
    elif f.data.get("rope_scaling") is not None:
        params, key = f.sub("rope_scaling"), "rope_scaling"
    else:
        return f.get("rope_theta", float, 10000.0), None
    theta = params.get("rope_theta", float, f.data.get("rope_theta", 10000.0))
    kind_key = "rope_type" if "rope_type" in params.data else "type"
    kind = params.choice(kind_key, ROPE_TYPES, "default")
    if kind == "default":
        return float(theta), None
    scaling = {"rope_type": kind, "factor": params.get("factor", float)}
    if kind == "llama3":
        for k in ("low_freq_factor", "high_freq_factor"):
            scaling[k] = params.get(k, float)
        scaling["original_max_position_embeddings"] = params.get("original_max_position_embeddings", int)
    for k in ("attention_factor", "mrope_section"):
        if params.data.get(k) is not None:
            params.fail(k, "unsupported")
    return float(theta), scaling


def _text(f: _Fields, tied: bool) -> TextSpec:
    model_type = f.choice("model_type", TEXT_TYPES)
    f.choice("hidden_act", ("silu",), "silu")
    hidden, heads = f.get("hidden_size", int), f.get("num_attention_heads", int)
    kv_heads = f.get("num_key_value_heads", int, heads)
    if heads % kv_heads:
        f.fail("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
    head_dim = f.get("head_dim", int, hidden // heads)
    if head_dim % 2:
        f.fail("head_dim", f"{head_dim} is odd; rotary embedding needs an even head_dim")
    if f.get("mlp_bias", bool, False):
        f.fail("mlp_bias", "MLP biases are not supported")
    if f.get("sliding_window", int, None) is not None and f.get("use_sliding_window", bool, model_type == "mistral"):
        f.fail("sliding_window", "sliding-window attention is not supported")
    theta, scaling = _rope(f)
    qkv_bias = model_type == "qwen2" or f.get("attention_bias", bool, False)
    return TextSpec(model_type=model_type, hidden=hidden, intermediate=f.get("intermediate_size", int),
                    layers=f.get("num_hidden_layers", int), heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                    vocab_size=f.get("vocab_size", int), max_positions=f.get("max_position_embeddings", int),
                    eps=f.get("rms_norm_eps", float, 1e-6), rope_theta=theta, rope_scaling=scaling,
                    qkv_bias=qkv_bias, tied=tied)


def _pair(f: _Fields, key: str, value) -> tuple[int, int] | int:
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and {"height", "width"} <= value.keys():
        return int(value["height"]), int(value["width"])
    f.fail(key, f"expected {{height, width}}, got {value!r}")


def processor_fields(directory: Path) -> _Fields:
    """The image processor's settings: processor_config.json's `image_processor`, or preprocessor_config.json (a
    processor_config.json without one holds only the processor's own settings, as older saves wrote it)."""
    combined, alone = (directory / n for n in PROCESSOR_FILES)
    data = _read_json(combined) if combined.is_file() else {}
    if "image_processor" in data or (combined.is_file() and not alone.is_file()):
        return _Fields(combined, data.get("image_processor", data),
                       "image_processor." if "image_processor" in data else "")
    if not alone.is_file():
        raise CheckpointError(f"{alone}: file not found (nor {combined.name})")
    return json_fields(alone)


def _preprocess(directory: Path, tiling: tuple[str, ...]) -> PreprocessSpec:
    """`tiling`: the processor options a family reads itself (anyres: do_pad, image_grid_pinpoints)."""
    f = processor_fields(directory)
    for key in ("do_pad", "do_image_splitting", "image_grid_pinpoints"):
        if f.data.get(key) and key not in tiling:
            f.fail(key, "unsupported")
    resize, size = "none", 0
    if f.get("do_resize", bool, True):
        raw = f.get("size", (dict, int))
        if isinstance(raw, dict) and set(raw) == {"shortest_edge"}:
            resize, size = "shortest_edge", int(raw["shortest_edge"])
        elif isinstance(raw, dict) and set(raw) == {"height", "width"}:
            resize, size = "height_width", _pair(f, "size", raw)
        elif isinstance(raw, int):
            resize, size = "height_width", (raw, raw)
        else:
            f.fail("size", f"unsupported {raw!r} (supported: shortest_edge, or height and width)")
    crop = _pair(f, "crop_size", f.get("crop_size", (dict, int))) if f.get("do_center_crop", bool, False) else None
    resample = f.get("resample", int, 3)
    if resample not in RESAMPLE:
        f.fail("resample", f"unknown PIL filter {resample}")
    rescale = f.get("rescale_factor", float, 1 / 255) if f.get("do_rescale", bool, True) else 1.0
    mean, std = (0.0,) * 3, (1.0,) * 3
    if f.get("do_normalize", bool, True):
        mean, std = f.get("image_mean", list), f.get("image_std", list)
        for key, v in (("image_mean", mean), ("image_std", std)):
            if len(v) != 3 or not all(isinstance(x, (int, float)) for x in v) or (key == "image_std" and min(v) <= 0):
                f.fail(key, f"expected 3 numbers (std > 0), got {v!r}")
    return PreprocessSpec(resize=resize, size=size, crop=crop, resample=RESAMPLE[resample], rescale_factor=rescale,
                          mean=tuple(map(float, mean)), std=tuple(map(float, std)),
                          convert_rgb=f.get("do_convert_rgb", bool, True))


def _tokenizer(directory: Path) -> tuple[tuple[int, ...], str | None, tuple[str, ...]]:
    """-> (eos ids from tokenizer_config + generation_config, chat template or None, files to copy)."""
    from tokenizers import Tokenizer

    path = directory / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (only fast tokenizers are supported)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise CheckpointError(f"{path}: not a readable tokenizer ({str(e).splitlines()[0]})") from None
    cfg_path = directory / "tokenizer_config.json"
    cfg = _Fields(cfg_path, _read_json(cfg_path))
    eos: list[int] = []
    token = cfg.get("eos_token", (str, dict), None)
    if isinstance(token, dict):
        token = token.get("content")
    if token is not None:
        if tok.token_to_id(token) is None:
            cfg.fail("eos_token", f"{token!r} is not in tokenizer.json")
        eos.append(tok.token_to_id(token))
    from graphs.families.llava.generation import read_generation  # noqa: PLC0415 -- it imports this module

    eos += [e for e in read_generation(directory).eos_token_ids if e not in eos]
    template = cfg.get("chat_template", str, None)
    files = ["tokenizer.json", "tokenizer_config.json"]
    if (directory / "chat_template.jinja").is_file():
        template, files = (directory / "chat_template.jinja").read_text(), files + ["chat_template.jinja"]
    elif (directory / "chat_template.json").is_file():  # what processors saved before chat_template.jinja
        path = directory / "chat_template.json"
        template, files = _Fields(path, _read_json(path)).get("chat_template", str), files + ["chat_template.json"]
    if not eos:
        cfg.fail("eos_token", "missing (and no eos_token_id in generation_config.json)")
    if template is not None:
        _check_template(template, directory / (files[-1] if len(files) > 2 else "tokenizer_config.json"))
    return tuple(eos), template, tuple(files)


def _check_template(template: str, path: Path) -> None:
    """A chat template that does not parse fails the build, naming its file and line, not the first request."""
    from jinja2.exceptions import TemplateSyntaxError

    from mmcore.chat_template import compile_chat_template

    try:
        compile_chat_template(template)
    except TemplateSyntaxError as e:
        raise CheckpointError(f"{path}: chat_template: line {e.lineno}: {e.message}") from None


def json_fields(path: Path) -> _Fields:
    """A JSON file's object, with typed access failing with the file and field (CheckpointError)."""
    return _Fields(path, _read_json(path))


def config_fields(directory: Path) -> _Fields:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    return json_fields(directory / "config.json")


def plan_spec(directory: Path, spec_from_hf):
    """A view planner's spec (mmcore.image_plan), read by its `spec_from_hf(image processor, processor, config)`
    from the checkpoint's own files (processor_config.json when saved); the planner's refusal (a ValueError, or
    pydantic's ValidationError, one) as a one-line CheckpointError naming the directory."""
    from pydantic import ValidationError

    saved = directory / PROCESSOR_FILES[0]
    files = processor_fields(directory).data, json_fields(saved).data if saved.is_file() else {}, \
        config_fields(directory).data  # their own errors name the file
    try:
        return spec_from_hf(*files)
    except ValidationError as e:
        why = "; ".join(str(err.get("ctx", {}).get("error", "")) or f"{'.'.join(map(str, err['loc']))}: "
                        f"{err['msg']}" for err in e.errors())
        raise CheckpointError(f"{directory}: {why}") from None
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from None


def read_checkpoint(directory: str | Path, model_types: tuple[str, ...] = ("llava",),
                    tiling: tuple[str, ...] = ()) -> Checkpoint:
    """`model_types`: the config.json model types the caller's family builds; `tiling`: the processor options it
    reads itself (refused here otherwise)."""
    directory = Path(directory)
    top = config_fields(directory)
    top.choice("model_type", model_types)
    vision = _vision(top.sub("vision_config"), top)
    text_f = top.sub("text_config")
    tied = top.get("tie_word_embeddings", bool, False) or text_f.get("tie_word_embeddings", bool, False)
    text = _text(text_f, tied)
    image_token = top.get("image_token_index", int, top.data.get("image_token_id", 32000))
    if not 0 <= image_token < text.vocab_size:
        top.fail("image_token_index", f"{image_token} is outside the vocabulary of {text.vocab_size}")
    eos, template, files = _tokenizer(directory)
    from graphs.families.llava.tokenizer_files import cleans_up_spaces  # noqa: PLC0415 -- it imports this module

    clean_up = cleans_up_spaces(directory / "tokenizer.json", directory / "tokenizer_config.json")
    from graphs.families.llava.generation import read_generation  # noqa: PLC0415 -- it imports this module

    return Checkpoint(directory=directory, vision=vision, text=text,
                      projector_act=top.choice("projector_hidden_act", ACTIVATIONS, "gelu"),
                      projector_bias=top.get("multimodal_projector_bias", bool, True), image_token_id=image_token,
                      eos_token_ids=eos, chat_template=template, preprocess=_preprocess(directory, tiling),
                      tokenizer_files=files, clean_up_tokenization_spaces=clean_up,
                      generation=read_generation(directory).defaults_dict())
