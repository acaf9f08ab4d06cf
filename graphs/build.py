"""Build an artifact directory: reference weights -> every graph variant -> parity gate -> manifest, atomically.

    build_artifacts(preset, out_dir)     always builds; out_dir appears complete or not at all
    ensure_artifacts(preset, cache_dir)  returns a cached complete build for the same inputs and code, else builds
                                         (a file lock makes two processes asking at once build it once)

Everything is written into a temporary directory beside the target and renamed into place at the end, so a failed
build (bad weights, parity past tolerance, a full disk) leaves nothing behind. Same inputs -> same bytes: weights
are seeded, graphs are emitted in a fixed order, and nothing time- or host-dependent is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from graphs.config import ModelConfig, get_preset
from graphs.manifest import CPU_EP, MANIFEST, GraphEntry, Manifest, TensorSpec, TokenizerEntry, Variant
from graphs.tokenizer import EOS, ROLE_TOKENS, build_tokenizer, load_tokenizer, token_id
from graphs.variants import VARIANTS, file_name, fusion_counts, ort_optimized_counts

Progress = Callable[[str], None]
DEMO_ASSETS = Path(__file__).parent / "assets" / "demo"
TOKEN_EMBEDDINGS = "token_embeddings.npy"
TOKENIZER = "tokenizer.json"
# Sources whose change changes the artifacts: their hash is part of ensure_artifacts' cache key.
_BUILD_SOURCES = ("build.py", "config.py", "decoder_graph.py", "model.py", "onnx_ops.py", "parity.py",
                  "quantize.py", "tokenizer.py", "variants.py", "verify.py", "vision_graph.py", "weights.py")


class BuildError(RuntimeError):
    """A build that cannot proceed; the message names the file, tensor or setting at fault."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _default_inputs(preset: str, weights, tokenizer) -> tuple[Path | None, Path | None]:
    """The demo preset ships trained weights and its tokenizer; use them unless others are given."""
    if preset == "demo" and weights is None and (DEMO_ASSETS / "model.safetensors").is_file():
        weights = DEMO_ASSETS / "model.safetensors"
        if tokenizer is None and (DEMO_ASSETS / TOKENIZER).is_file():
            tokenizer = DEMO_ASSETS / TOKENIZER
    return (None if weights is None else Path(weights)), (None if tokenizer is None else Path(tokenizer))


def _check_weights_file(weights: Path | None) -> None:
    if weights is not None and not weights.is_file():
        from graphs.weights import WeightsError  # imports torch; a cache hit should not pay for it

        raise WeightsError(f"{weights}: weights file not found")


def _write_tokenizer(cfg: ModelConfig, src: Path | None, dst: Path) -> TokenizerEntry:
    if src is None:
        dst.write_text(build_tokenizer(cfg.decoder.vocab_size).to_str(pretty=True))
    else:
        if not src.is_file():
            raise BuildError(f"{src}: tokenizer file not found")
        shutil.copyfile(src, dst)
    try:
        tok = load_tokenizer(dst)
    except Exception as e:  # the tokenizers library raises a plain Exception on bad JSON
        raise BuildError(f"{src}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from None
    if tok.get_vocab_size() != cfg.decoder.vocab_size:
        raise BuildError(f"{src}: tokenizer has {tok.get_vocab_size()} tokens, preset {cfg.name} decoder "
                         f"vocab_size is {cfg.decoder.vocab_size}")
    try:
        roles = {role: token_id(tok, t) for role, t in ROLE_TOKENS.items()}
        return TokenizerEntry(file=TOKENIZER, eos_token_id=token_id(tok, EOS), pad_token_id=token_id(tok, "<|pad|>"),
                              role_token_ids=roles)
    except ValueError as e:
        raise BuildError(f"{src}: {e}") from None


def _specs(values) -> list[TensorSpec]:
    def dims(t):
        return [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
    return [TensorSpec(name=t.name, dtype=onnx.helper.tensor_dtype_to_np_dtype(t.type.tensor_type.elem_type).name,
                       shape=dims(t)) for t in values]


def _build_graphs(model, tmp: Path, progress: Progress) -> dict[str, dict[str, onnx.ModelProto]]:
    built: dict[str, dict[str, onnx.ModelProto]] = {}
    for graph, variants in VARIANTS.items():
        for name, spec in variants.items():
            progress(f"emit {graph} {name}")
            proto = spec.build(model)
            (tmp / file_name(graph, name)).write_bytes(proto.SerializeToString())
            built.setdefault(graph, {})[name] = proto
    return built


def _graph_entries(built, tmp: Path, parity: dict) -> dict[str, GraphEntry]:
    entries = {}
    for graph, protos in built.items():
        first = next(iter(protos.values()))
        variants = {}
        for name, proto in protos.items():
            spec, f = VARIANTS[graph][name], file_name(graph, name)
            ort_counts = ort_optimized_counts(tmp / f) if CPU_EP in spec.providers else {}
            variants[name] = Variant(file=f, sha256=_sha256(tmp / f), providers=list(spec.providers),
                                     precision=spec.precision, fusions=fusion_counts(proto),
                                     parity=parity[graph][name], ort_optimized=ort_counts)
        entries[graph] = GraphEntry(inputs=_specs(first.graph.input), outputs=_specs(first.graph.output),
                                    variants=variants)
    return entries


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _write_artifacts(cfg: ModelConfig, weights: Path | None, tokenizer: Path | None, tmp: Path,
                     progress: Progress) -> Manifest:
    from graphs.parity import run_parity_gate  # torch: imported only when a build actually runs
    from graphs.weights import load_model

    progress("load weights")
    model = load_model(cfg, weights)
    progress("tokenizer")
    tok_entry = _write_tokenizer(cfg, tokenizer, tmp / TOKENIZER)
    wte = model.decoder.wte.weight.detach().numpy().astype(np.float32)  # (V, D)
    np.save(tmp / TOKEN_EMBEDDINGS, wte)
    built = _build_graphs(model, tmp, progress)
    parity = run_parity_gate(model, {g: {n: p.SerializeToString() for n, p in ps.items()} for g, ps in built.items()},
                             progress)
    manifest = Manifest(
        preset=cfg.name, model=cfg.to_dict(), num_image_tokens=cfg.num_image_tokens, image_size=cfg.vision.image_size,
        tokenizer=tok_entry, token_embeddings=TensorSpec(name=TOKEN_EMBEDDINGS, dtype="float32", shape=list(wte.shape)),
        graphs=_graph_entries(built, tmp, parity), versions=_versions(),
        weights_sha256=None if weights is None else _sha256(weights),
        files_sha256={f.name: _sha256(f) for f in sorted(tmp.iterdir()) if f.is_file() and f.name != MANIFEST})
    manifest.write(tmp)
    return Manifest.read(tmp)  # exactly what serving will read back (JSON turns tuples into lists)


def _make_temp_dir(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    except OSError as e:
        raise BuildError(f"{out}: cannot write output directory ({e.strerror or e})") from None


def _check_replaceable(out: Path) -> None:
    """An existing out is replaced only if it is an artifact directory (or empty): never a file or someone's folder."""
    if out.is_file() or out.is_symlink():
        raise BuildError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BuildError(f"{out}: not an artifact directory (no {MANIFEST}); refusing to replace it")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out is swapped aside first, put back if the rename fails, else removed."""
    tmp.chmod(0o755)  # mkdtemp makes 0700; the artifact dir is read by serving replicas as other users too
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(old / "previous")
    try:
        tmp.rename(out)
    except OSError:
        (old / "previous").rename(out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def build_artifacts(preset: str, out_dir: str | Path, weights: str | Path | None = None,
                    tokenizer: str | Path | None = None, progress: Progress | None = None) -> Manifest:
    """Build every variant of `preset` into out_dir. Raises BuildError/WeightsError/ParityError with one-line
    messages; on any failure out_dir is left as it was."""
    progress = progress or (lambda _msg: None)
    try:
        cfg = get_preset(preset)
    except ValueError as e:
        raise BuildError(str(e)) from None
    weights, tokenizer = _default_inputs(preset, weights, tokenizer)
    _check_weights_file(weights)
    out = Path(out_dir).absolute()
    _check_replaceable(out)
    tmp = _make_temp_dir(out)
    try:
        manifest = _write_artifacts(cfg, weights, tokenizer, tmp, progress)
        progress("write")
        _move_into_place(tmp, out)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_code_version() -> str:
    h = hashlib.sha256()
    for name in _BUILD_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def _is_complete(directory: Path) -> bool:
    try:
        manifest = Manifest.read(directory)
    except (FileNotFoundError, ValueError):  # absent, or written by another format version: rebuild
        return False
    files = [manifest.tokenizer.file, manifest.token_embeddings.name]
    files += [v.file for g in manifest.graphs.values() for v in g.variants.values()]
    return all((directory / f).is_file() for f in files)


def ensure_artifacts(preset: str, cache_dir: str | Path, weights: str | Path | None = None,
                     tokenizer: str | Path | None = None, progress: Progress | None = None) -> Path:
    """A complete artifact dir for (preset, weights, tokenizer, build code): cached, or built now under a lock."""
    from filelock import FileLock

    try:
        get_preset(preset)
    except ValueError as e:
        raise BuildError(str(e)) from None
    weights, tokenizer = _default_inputs(preset, weights, tokenizer)
    _check_weights_file(weights)
    if tokenizer is not None and not tokenizer.is_file():
        raise BuildError(f"{tokenizer}: tokenizer file not found")
    key = {"preset": preset, "code": build_code_version(),
           "weights": None if weights is None else _sha256(weights),
           "tokenizer": None if tokenizer is None else _sha256(tokenizer)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{preset}-{digest}"
    with FileLock(str(cache / f"{preset}-{digest}.lock")):
        if not _is_complete(target):
            build_artifacts(preset, target, weights, tokenizer, progress)
    return target
