"""The vision encoder's ONNX Runtime side, with no Ray inside: open the session on the first execution provider that
really loads (with the graph variant built for it, its inputs and outputs checked against the manifest) and run
batches of uint8 pixels through it.

    open_vision_session(artifacts_dir, options)   -> OpenedSession (session, provider, variant, fallbacks)
    VisionRunner(artifacts_dir, opened, threads)   run((B,3,H,W) uint8) -> (B,P,D) float32; profilable live

Shapes: in `pixels` (B,3,H,W) uint8; out `image_features` (B,P,D) float32, split into (P,D) per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from mmcore.manifest import Manifest, check_session_io
from mmcore.runtime.ort_session import OpenedSession, open_stage_session
from mmcore.runtime.profiling import ProfilableSession
from mmcore.runtime.providers import BatchProfile, ProviderSpec


class SessionChoice(Protocol):
    """Which session to open; the vision stage's options (serve_app/stages/options.py) are one."""

    providers: list[ProviderSpec]  # best first
    strict: bool  # refuse any fallback from the first provider
    ort_threads: int  # ORT intra-op threads (`threads` resolved on the replica's node)
    prefer_variants: list[str]  # graph variants, best first, among those built for the loaded EP

    def profile(self, manifest: Manifest) -> BatchProfile:
        """The TensorRT profile over the batch dim."""


def open_vision_session(artifacts_dir: str | Path, options: SessionChoice) -> OpenedSession:
    """The session on the first provider that really loads, with that provider's variant (see ort_session), its
    inputs and outputs checked against the manifest."""
    manifest = Manifest.read(artifacts_dir)
    entry = manifest.graphs["vision"]
    opened = open_stage_session(str(artifacts_dir), entry, options.providers, strict=options.strict,
                                threads=options.ort_threads, profile=options.profile(manifest),
                                prefer=options.prefer_variants, stage="vision")
    check_session_io(Path(artifacts_dir) / entry.variants[opened.variant].file, entry, opened.session)
    return opened


class VisionRunner:
    """One opened vision session, ready to run batches; `session` can be armed for ORT profiling."""

    def __init__(self, artifacts_dir: str | Path, opened: OpenedSession, threads: int):
        manifest = Manifest.read(artifacts_dir)
        self.variant, self.provider, self.fallbacks = opened.variant, opened.provider, list(opened.fallbacks)
        self.int8_reason = opened.int8.reason if opened.int8 else None
        model_path = Path(artifacts_dir) / manifest.graphs["vision"].variants[self.variant].file
        self.session = ProfilableSession(opened.session, model_path, threads, stage="vision", source=opened.source)
        self.int8 = opened.int8.encoding if opened.int8 else None  # the int8 weight encoding it runs, if any
        self.io = manifest.vision.io

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([self.io.features], {self.io.pixels: pixels})[0]  # (B,3,H,W) -> (B,P,D)


def split_features(features: np.ndarray) -> list[np.ndarray]:
    """(B,P,D) -> B contiguous (P,D) arrays: each travels to its own caller through Ray's object store."""
    return [np.ascontiguousarray(f) for f in features]
