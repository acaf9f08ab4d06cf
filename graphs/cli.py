"""`mmserve build (--preset P | --hf DIR) --out DIR [--weights F] [--tokenizer F] [--variants V ...]`: the one build
command. `--preset` builds a named source (the own family's presets; `demo`, the shipped LLaVA checkpoint); `--hf` a
local HuggingFace LLaVA checkpoint directory.
`mmserve push DIR URI [--force]`: upload a built artifact to s3://, gs:// or a shared path, manifest last.

Progress goes to stderr, one line per step; any failure is one line `mmserve build: error: ...` naming the file,
tensor or setting, with exit status 1 (2 for bad arguments, argparse's convention) and no artifact left behind.
A variant that fails its parity gate is left out of the artifact, one line `rejected graph/name: reason` (printed
with --quiet too); the build fails only when a graph keeps no variant or a variant named in --variants fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from graphs.families import source_names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmserve", description="Build and serve LLaVA-style multimodal models.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an artifact directory (ONNX graph variants, tokenizer, manifest)")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help=f"a named source: one of {', '.join(sorted(source_names()))} (demo: the "
                                         f"shipped LLaVA captioner, as --hf graphs/assets/demo-llava builds it)")
    source.add_argument("--hf", metavar="DIR", help="a LLaVA, LLaVA-NeXT, LLaVA-OneVision, Idefics3 or SmolVLM "
                                                     "checkpoint directory as save_pretrained writes it")
    b.add_argument("--variants", nargs="+", default=None,
                   help="graph/variant names to build (default: all, leaving out any that fails its parity "
                        "gate; a named one that fails fails the build), e.g. decoder/cpu-int4")
    b.add_argument("--out", required=True, help="artifact directory to write (replaced atomically)")
    b.add_argument("--weights", default=None, help="own-family presets: a safetensors file; default: seeded random "
                                                   "weights")
    b.add_argument("--tokenizer", default=None, help="tokenizer.json; default: built for the preset's vocabulary")
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    u = sub.add_parser("push", help="upload a built artifact directory to s3://bucket/prefix, gs://bucket/prefix "
                                    "or a shared path")
    u.add_argument("dir", help="artifact directory written by `mmserve build`")
    u.add_argument("uri", help="s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL), gs://bucket/prefix (GCS, "
                               "HMAC keys in the AWS key variables), file:///path or a path")
    u.add_argument("--force", action="store_true", help="replace a different artifact already at URI (or re-upload the same one)")
    return p


class _ProgressLine:
    """Prints `[  1.2s] step` per build step to stderr."""

    def __init__(self, quiet: bool):
        self.quiet, self.start = quiet, time.monotonic()

    def __call__(self, step: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.start:6.1f}s] {step}", file=sys.stderr, flush=True)


def _build(args) -> int:
    from graphs.build import BuildError, build_artifacts
    from graphs.verify import ParityError
    from graphs.families.own.weights import WeightsError

    if args.hf is not None and not Path(args.hf).is_dir():
        print(f"mmserve build: error: {args.hf}: not a checkpoint directory", file=sys.stderr)
        return 1
    try:
        manifest = build_artifacts(args.hf or args.preset, args.out, args.weights, args.tokenizer,
                                   _ProgressLine(args.quiet), args.variants)
    except (BuildError, WeightsError, ParityError) as e:
        print(f"mmserve build: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the disk fills while writing: name the file
        print(f"mmserve build: error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    n = sum(len(g.variants) for g in manifest.graphs.values())
    rejected = [(f"{graph}/{name}", r.reason) for graph, g in manifest.graphs.items() for name, r in g.rejected.items()]
    if args.quiet:  # the progress lines named them otherwise
        for name, reason in rejected:
            print(f"rejected {name}: {reason}", file=sys.stderr)
    what = f"{manifest.family} checkpoint {args.hf}" if args.hf else f"preset {manifest.preset}"
    left_out = f"; left out, past their parity bounds: {', '.join(n for n, _ in rejected)}" if rejected else ""
    print(f"built {args.out}: {what}, {n} graph variants passed the parity gate{left_out}")
    return 0


def _push(args) -> int:
    from mmcore.store import StoreError, push_artifacts  # the serving side's store code: one implementation

    try:
        outcome = push_artifacts(args.dir, args.uri, force=args.force)
    except StoreError as e:
        print(f"mmserve push: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.uri}: {'already holds this artifact' if outcome == 'unchanged' else f'pushed {args.dir}'}")
    return 0


COMMANDS = {"build": _build, "push": _push}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
