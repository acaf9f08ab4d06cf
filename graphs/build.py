"""Build an artifact directory: reference weights -> every graph variant -> parity gate -> manifest, atomically.

    build_artifacts(source, out_dir)     always builds; out_dir appears complete or not at all. `source` is a
                                         preset name or a checkpoint directory (`mmserve build --hf DIR`)
    ensure_artifacts(preset, cache_dir)  returns a cached complete build for the same inputs and code, else builds
                                         (a file lock makes two processes asking at once build it once)

Everything is written into a temporary directory beside the target and renamed into place at the end, so a failed
build (bad weights, a graph with no variant within tolerance, a full disk) leaves nothing behind. A variant past its
parity bounds alone is left out and recorded as rejected (graphs/gate.py has the rules). Same inputs -> same bytes:
weights are seeded, graphs are emitted in a fixed order, float reductions run on a fixed thread count
(graphs/determinism.py), and nothing time-, path- or host-dependent is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from graphs.determinism import fixed_build_threads
from graphs.emit.inspect import file_name, fusion_counts, ort_optimized_counts
from graphs.families import family_for_source
from graphs.families.base import Family, Progress, Source, SourceError
from graphs.gate import GateResult, settle
from mmcore import manifest as manifest_module
from mmcore.manifest import (CPU_EP, MANIFEST, DecoderSpec, GraphEntry, Manifest, ManifestError, RejectedVariant,
                             TensorSpec, Variant)

TOKEN_EMBEDDINGS = "token_embeddings.npy"
TOKENIZER = "tokenizer.json"
# Sources whose change changes the artifacts (every module of graphs/ but the demo's training code and the CLI, and
# the manifest format in mmcore): their hash is part of ensure_artifacts' cache key.
_NOT_BUILD_SOURCES = ("demo", "cli.py")
_MANIFEST_SOURCE = Path(manifest_module.__file__)


class BuildError(RuntimeError):
    """A build that cannot proceed; the message names the file, tensor or setting at fault."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resolve(preset: str, weights, tokenizer) -> tuple[Family, Source]:
    try:
        family = family_for_source(str(preset))
        source = family.resolve(str(preset), None if weights is None else Path(weights),
                                None if tokenizer is None else Path(tokenizer))
    except ValueError as e:  # SourceError included: a bad checkpoint fails here, before anything is written
        raise BuildError(str(e)) from None
    if source.weights is not None and not source.weights.is_file():
        from graphs.families.own.weights import WeightsError  # imports torch; a cache hit should not pay for it

        raise WeightsError(f"{source.weights}: weights file not found")
    return family, source


def _specs(values) -> list[TensorSpec]:
    def dims(t):
        return [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
    return [TensorSpec(name=t.name, dtype=onnx.helper.tensor_dtype_to_np_dtype(t.type.tensor_type.elem_type).name,
                       shape=dims(t)) for t in values]


def _selected(family: Family, variants: list[str] | None) -> dict[str, list[str]]:
    """graph -> variant names to build: all, or the `graph/name`s asked for (at least one per graph) and their
    same-weights siblings."""
    known = [f"{g}/{n}" for g, vs in family.variants.items() for n in vs]
    wanted = known if variants is None else list(variants)
    unknown = [v for v in wanted if v not in known]
    if unknown:
        raise BuildError(f"--variants: unknown {unknown[0]!r} (known: {', '.join(known)})")
    # a quantized-cache variant is gated against its float-cache sibling, so asking for it builds both; the gate's
    # own partners (the family's fp32 pair) are built whenever it runs
    wanted += [p for p in family.gate_partners if p not in wanted]
    wanted += [f"{g}/{s.same_weights_as}" for g, vs in family.variants.items() for n, s in vs.items()
               if f"{g}/{n}" in wanted and s.same_weights_as is not None]
    picked = {g: [n for n in vs if f"{g}/{n}" in wanted] for g, vs in family.variants.items()}
    missing = [g for g, names in picked.items() if not names]
    if missing:
        raise BuildError(f"--variants: need at least one {missing[0]} variant")
    return picked


def _build_graphs(family: Family, model, tmp: Path, progress: Progress,
                  picked: dict[str, list[str]]) -> dict[str, dict[str, onnx.ModelProto]]:
    built: dict[str, dict[str, onnx.ModelProto]] = {}
    for graph, variants in family.variants.items():
        for name, spec in variants.items():
            if name not in picked[graph]:
                continue
            progress(f"emit {graph} {name}")
            proto = spec.build(model)
            (tmp / file_name(graph, name)).write_bytes(proto.SerializeToString())
            built.setdefault(graph, {})[name] = proto
    return built


def _signature(specs: list[TensorSpec], kv_cache, decoder: DecoderSpec) -> list[TensorSpec]:
    """The entry's signature as a variant with its own quantized cache (`kv_cache`) must have it."""
    if kv_cache is None:
        return specs
    cache = set(decoder.cache_names())
    return [t.model_copy(update={"dtype": kv_cache.dtype, "shape": [*t.shape[:-1], kv_cache.last_dim(t.shape[-1])]})
            if t.name in cache else t for t in specs]


def _rejected(family: Family, graph: str, gate: GateResult, reasons: dict[str, str]) -> dict[str, RejectedVariant]:
    return {name: RejectedVariant(providers=list(family.variants[graph][name].providers),
                                  precision=family.variants[graph][name].precision,
                                  parity=gate.figures[graph][name], reason=reason) for name, reason in reasons.items()}


def _graph_entries(family: Family, built, tmp: Path, gate: GateResult, rejected: dict[str, dict[str, str]],
                   decoder: DecoderSpec) -> dict[str, GraphEntry]:
    """built: the variants kept (graph -> name -> proto); rejected: graph -> name -> reason for those left out."""
    entries = {}
    for graph, protos in built.items():
        # the signature the entry lists: the first variant's with the decoder spec's own cache dtype
        first = next(p for n, p in protos.items() if family.variants[graph][n].kv_cache is None)
        ins, outs = _specs(first.graph.input), _specs(first.graph.output)
        variants = {}
        for name, proto in protos.items():
            spec, f = family.variants[graph][name], file_name(graph, name)
            if _specs(proto.graph.input) != _signature(ins, spec.kv_cache, decoder) or \
                    _specs(proto.graph.output) != _signature(outs, spec.kv_cache, decoder):
                raise BuildError(f"{f}: inputs/outputs differ from the other {graph} variants'")
            ort_counts = ort_optimized_counts(tmp / f) if CPU_EP in spec.providers else {}
            variants[name] = Variant(file=f, sha256=_sha256(tmp / f), providers=list(spec.providers),
                                     precision=spec.precision, fusions=fusion_counts(proto),
                                     parity=gate.figures[graph][name], ort_optimized=ort_counts,
                                     kv_cache=spec.kv_cache)
        entries[graph] = GraphEntry(inputs=ins, outputs=outs, variants=variants,
                                    rejected=_rejected(family, graph, gate, rejected.get(graph, {})))
    return entries


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _leave_out(built: dict[str, dict[str, onnx.ModelProto]], rejected: dict[str, dict[str, str]], tmp: Path,
               progress: Progress) -> None:
    """Delete each rejected variant's graph file and proto: one progress line per variant, naming the reason."""
    for graph, reasons in rejected.items():
        for name, reason in reasons.items():
            progress(f"rejected {graph}/{name}: {reason}")
            (tmp / file_name(graph, name)).unlink()
            del built[graph][name]


def _write_artifacts(family: Family, source: Source, tmp: Path, progress: Progress,
                     picked: dict[str, list[str]], named: set[str] | None) -> Manifest:
    progress("load weights")
    try:
        model = family.load(source)
    except SourceError as e:  # e.g. a checkpoint's missing shard or wrong tensor shape
        raise BuildError(str(e)) from None
    progress("tokenizer")
    try:
        family.write_tokenizer(source, model, tmp / TOKENIZER)
    except SourceError as e:
        raise BuildError(str(e)) from None
    wte = family.embeddings(model)  # (V, D)
    np.save(tmp / TOKEN_EMBEDDINGS, wte)
    specs = family.specs(source, model, tmp / TOKENIZER, TOKEN_EMBEDDINGS)
    built = _build_graphs(family, model, tmp, progress, picked)
    gate = family.parity_gate(model, {g: {n: p.SerializeToString() for n, p in ps.items()}
                                      for g, ps in built.items()}, specs.decoder, progress)
    rejected = settle(family.variants, gate, named)  # ParityError when the build cannot keep enough
    _leave_out(built, rejected, tmp, progress)
    manifest = Manifest(
        family=family.name, preset=source.name, decoder=specs.decoder, vision=specs.vision, prompt=specs.prompt,
        tokenizer_file=TOKENIZER, graphs=_graph_entries(family, built, tmp, gate, rejected, specs.decoder),
        source=specs.source,
        versions=_versions(), weights_sha256=None if source.weights is None else _sha256(source.weights),
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


def build_artifacts(source: str | Path, out_dir: str | Path, weights: str | Path | None = None,
                    tokenizer: str | Path | None = None, progress: Progress | None = None,
                    variants: list[str] | None = None) -> Manifest:
    """Build every variant (or the `graph/name`s in `variants`) of `source` -- a preset name or a checkpoint
    directory -- into out_dir, leaving out (and recording as rejected) each variant past its parity bounds. Raises
    BuildError/WeightsError/ParityError with one-line messages (ParityError: a graph with no variant left, or a
    rejected one named in `variants`); on any failure out_dir is left as it was."""
    progress = progress or (lambda _msg: None)
    family, src = _resolve(source, weights, tokenizer)
    picked = _selected(family, variants)
    out = Path(out_dir).absolute()
    _check_replaceable(out)
    tmp = _make_temp_dir(out)
    try:
        named = None if variants is None else set(variants)
        with fixed_build_threads():  # same bytes under any load (graphs/determinism.py says why)
            manifest = _write_artifacts(family, src, tmp, progress, picked, named)
        progress("write")
        _move_into_place(tmp, out)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_code_version() -> str:
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in _NOT_BUILD_SOURCES:
            h.update(str(rel).encode() + b"\0" + path.read_bytes())
    h.update(b"mmcore/manifest.py\0" + _MANIFEST_SOURCE.read_bytes())
    return h.hexdigest()[:16]


def _is_complete(directory: Path) -> bool:
    try:
        manifest = Manifest.read(directory)
    except (FileNotFoundError, ManifestError):  # absent, or written by another format version: rebuild
        return False
    return all((directory / f).is_file() for f in manifest.files())


def checkpoint_sha256(directory: Path) -> str:
    """Content hash of a checkpoint directory: every file's name and bytes, in name order (subfolders included)."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode() + b"\0" + _sha256(path).encode())
    return h.hexdigest()


def ensure_artifacts(preset: str, cache_dir: str | Path, weights: str | Path | None = None,
                     tokenizer: str | Path | None = None, progress: Progress | None = None) -> Path:
    """A complete artifact dir for (source, weights, tokenizer, build code): cached, or built now under a lock.
    `preset` is a preset name or a checkpoint directory; a checkpoint (a directory, or a shipped one like `demo`)
    is keyed by its files' content, so an edited or retrained checkpoint builds anew, whatever its path."""
    from filelock import FileLock

    _, source = _resolve(preset, weights, tokenizer)
    weights, tokenizer = source.weights, source.tokenizer
    if tokenizer is not None and not tokenizer.is_file():
        raise BuildError(f"{tokenizer}: tokenizer file not found")
    key = {"preset": source.name, "code": build_code_version(),
           "weights": None if weights is None else _sha256(weights),
           "tokenizer": None if tokenizer is None else _sha256(tokenizer),
           "checkpoint": None if source.directory is None else checkpoint_sha256(source.directory)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{source.name}-{digest}"  # a checkpoint directory's folder name, not its path
    with FileLock(str(cache / f"{source.name}-{digest}.lock")):
        if not _is_complete(target):
            build_artifacts(preset, target, source.weights, source.tokenizer, progress)
    return target
