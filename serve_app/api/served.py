"""The model an ingress replica serves, and how it follows a rolling upgrade.

An ingress loads its model (tokenizer, prompt format, limits, key) at start. During a rollout the stages' old
replicas may all stop while an old ingress replica still routes requests (Serve rolls each deployment on its own);
its calls are then refused by every replica (ModelMismatch, which names the refusing replica's model source). Rather
than fail them, the ingress loads that model too -- from the node's cache, where the new replicas put it -- and runs
the request again, whole, on the new model. A request is prepared, encoded and decoded by one model, always.

Once the rollout is over (no stage deployment updating), every stage replica serves one model: the ingress then
forgets the others (their tokenizers and templates), so following many rollouts does not grow it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from jinja2.exceptions import TemplateSyntaxError
from tokenizers import Tokenizer

from mmcore.manifest import MANIFEST, Manifest, ManifestError
from serve_app.api.chat import ModelLimits
from serve_app.api.prompt import PromptRenderer
from serve_app.artifacts import ModelSource, model_key, resolve_model
from serve_app.contract import ModelMismatch

log = logging.getLogger("ray.serve")


def rollout_settled(deployments: dict) -> bool:
    """No deployment of the application (controller details: name -> {"status": ...}) is rolling out a change:
    its replicas all run one version, hence one model."""
    return not any(getattr(d["status"], "value", d["status"]) == "UPDATING" for d in deployments.values())


@dataclass(frozen=True)
class ServedModel:
    key: str  # manifest sha256: sent with every stage call
    name: str  # model id clients send
    fingerprint: str  # system_fingerprint of every answer
    prompt: PromptRenderer
    limits: ModelLimits


def load_served_model(source: ModelSource, max_context: int | None, max_images: int) -> ServedModel:
    artifacts = resolve_model(source)
    manifest = Manifest.read(artifacts)
    key = model_key(artifacts)
    try:
        prompt = PromptRenderer(manifest.prompt, Tokenizer.from_file(str(artifacts / manifest.tokenizer_file)))
    except TemplateSyntaxError as e:  # at replica start, one line naming the file, not a 500 per request
        raise ManifestError(f"{artifacts / MANIFEST}: prompt.chat_template: line {e.lineno}: {e.message}") from None
    return ServedModel(key, source.name(manifest.preset), f"mmserve-{key[:16]}", prompt,
                       ModelLimits.of(manifest, max_context, max_images))


class ServedModels:
    """The current model, and the others this replica has loaded while following rollouts (by key)."""

    def __init__(self, first: ServedModel, max_context: int | None, max_images: int):
        self.current, self._loaded = first, {first.key: first}
        self._max_context, self._max_images = max_context, max_images
        self._lock = asyncio.Lock()

    async def follow(self, refused: ModelMismatch) -> bool:
        """Switch to the model of the replica that refused a call; False when it named no source to load."""
        if refused.source is None:
            return False
        async with self._lock:
            model = self._loaded.get(refused.have)
            if model is None:
                source = ModelSource.model_validate(refused.source)
                model = await asyncio.to_thread(load_served_model, source, self._max_context, self._max_images)
                if model.key != refused.have:  # its source now resolves to a third model: do not guess
                    return False
                self._loaded[model.key] = model
            if self.current.key != model.key:
                log.warning("mmserve: the stages serve model %s now; this ingress follows from %s", model.key[:12],
                            self.current.key[:12])
                self.current = model
        return True

    @property
    def loaded_keys(self) -> frozenset[str]:
        return frozenset(self._loaded)

    async def forget_when_settled(self, settled: Callable[[], bool], period_s: float = 1.0) -> None:
        """After a follow: wait until `settled()` (a blocking controller read: run off the event loop) says no
        rollout is in progress, then forget every model but the current one; a replica still refusing with an
        older model's key later is followed again, from the node's cache."""
        while not await asyncio.to_thread(self._settled, settled):
            await asyncio.sleep(period_s)
        async with self._lock:
            gone = set(self._loaded) - {self.current.key}
            self._loaded = {self.current.key: self.current}
        if gone:
            log.info("mmserve: rollout over; this ingress forgets model(s) %s", ", ".join(k[:12] for k in gone))

    @staticmethod
    def _settled(settled: Callable[[], bool]) -> bool:
        try:
            return settled()
        except Exception as e:  # noqa: BLE001 -- the controller restarting: ask again later
            log.warning("mmserve: rollout state unknown (%s: %s)", type(e).__name__, e)
            return False
