"""The continuous-batching engine: one step loop per replica over a shared KV cache.

Lifecycle of a request:
    generate(request) -> enqueue (Overloaded when the bounded queue is full)
      -> admitted at a step: prefill [image features ; token embeddings] into a free slot; first token sampled
      -> every step: one decode call for all active slots; each new token is handed to its stream
      -> retired at the next step after EOS / max_tokens / context end / stop string / cancellation

Each step runs its ORT call in a worker thread, so while the graph runs (ORT releases the GIL) the event loop
detokenizes and forwards the previous step's tokens. A stream takes every token pending when it wakes, so a slow
consumer gets fewer, larger chunks instead of slowing the batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tokenizers import Tokenizer

from serve_app.engine.config import EngineConfig
from serve_app.engine.detokenize import IncrementalDetokenizer
from serve_app.engine.metrics import EngineMetrics, NullMetrics
from serve_app.engine.runner import StepRunner
from serve_app.engine.sampling import SamplingParams, sample_batch
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import Sequence
from serve_app.stages.messages import DecodeChunk, DecodeRequest


class Engine:
    def __init__(self, runner: StepRunner, token_embeddings: np.ndarray, tokenizer: Tokenizer, eos_id: int,
                 config: EngineConfig, metrics: EngineMetrics | None = None, variant: str = "custom"):
        self.runner = runner
        self.variant = variant  # the decoder graph variant the runner executes
        self.embeddings = token_embeddings  # (V,D) float32
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.config = config
        self.metrics = metrics or NullMetrics()
        self.scheduler = Scheduler(runner, config)
        self.steps = 0  # decode steps run so far: tests and benchmarks count latency in steps
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decoder-step")
        self._work = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    def update_config(self, config: EngineConfig) -> None:
        """Apply live knobs; the cache shape (slots, max_context) is fixed for the engine's life."""
        self.config = config
        self.scheduler.config = config

    # ---- the stream side -------------------------------------------------------------------------------------

    async def generate(self, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
        """Stream a completion. Leaving the iterator early (cancellation, disconnect) frees the slot."""
        seq = self.submit(request)
        detok = IncrementalDetokenizer(self.tokenizer, request.stop)
        sent = 0
        try:
            while True:
                await seq.ready.wait()
                seq.ready.clear()
                if seq.error is not None:
                    raise RuntimeError(f"decoder failed: {seq.error}") from seq.error
                ids, seq.pending = seq.pending, []
                text, ids = self._detokenize(detok, ids)
                sent += len(ids)
                finish = "stop" if detok.stopped else seq.finish_reason
                if finish is not None:
                    yield DecodeChunk(text + detok.flush(), ids, finish, request.prompt_len, sent)
                    return
                if ids:
                    yield DecodeChunk(text, ids, None, request.prompt_len, sent)
        finally:
            self.abort(seq)

    @staticmethod
    def _detokenize(detok: IncrementalDetokenizer, ids: list[int]) -> tuple[str, list[int]]:
        """Text for `ids`, cut at a stop string: tokens after the one completing it are dropped."""
        parts = []
        for k, tok in enumerate(ids):
            parts.append(detok.add([tok]))
            if detok.stopped:
                return "".join(parts), ids[:k + 1]
        return "".join(parts), ids

    def submit(self, request: DecodeRequest) -> Sequence:
        self._validate(request)
        params = SamplingParams(request.temperature, request.top_p, request.seed)
        seq = Sequence(request, params, params.make_rng())
        self.scheduler.enqueue(seq)
        self.metrics.set_queued(len(self.scheduler.waiting))
        self._ensure_loop()
        self._work.set()
        return seq

    def abort(self, seq: Sequence) -> None:
        """Stop generating for `seq`; its slot is freed at the next step."""
        if seq.done:
            return
        seq.cancelled = True
        self.scheduler.drop_waiting(seq)
        self._work.set()

    def _validate(self, request: DecodeRequest) -> None:
        n, limit = request.prompt_len, self.runner.max_context
        if n < 1:
            raise ValueError("empty prompt: at least one token or image feature is needed")
        if n > limit:
            raise ValueError(f"prompt of {n} positions exceeds the decoder context of {limit}")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        ids = np.asarray(request.prompt_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.embeddings.shape[0]):
            raise ValueError(f"prompt token ids must be in [0, {self.embeddings.shape[0]})")
        feats = request.image_features
        if feats is not None and (feats.ndim != 2 or feats.shape[1] != self.embeddings.shape[1]):
            raise ValueError(f"image_features must be (n, {self.embeddings.shape[1]}), got {feats.shape}")

    # ---- the step loop ---------------------------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="decoder-engine")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            sched = self.scheduler
            sched.retire_done()
            admitted, recheck_s = sched.take_admissions()
            if not sched.active and not admitted:
                await self._idle(recheck_s)
                continue
            for seq in admitted:
                await self._guarded(self._admit, [seq])
            sched.retire_done()
            if sched.active:
                await self._guarded(self._decode_step, list(sched.active))
            self.metrics.set_active(len(sched.active))
            self.metrics.set_queued(len(sched.waiting))

    async def _idle(self, recheck_s: float | None) -> None:
        self._work.clear()
        if recheck_s is None:
            await self._work.wait()
            return
        try:
            await asyncio.wait_for(self._work.wait(), timeout=recheck_s)
        except TimeoutError:
            pass

    async def _guarded(self, step, seqs: list[Sequence]) -> None:
        """A failing graph call fails the sequences it served, not the engine: the others keep running."""
        try:
            await step(seqs)
        except Exception as e:  # noqa: BLE001 -- handed to the streams, which raise it to their callers
            for seq in seqs:
                seq.fail(e)

    async def _admit(self, seqs: list[Sequence]) -> None:
        seq = seqs[0]
        if seq.done:
            return
        self.metrics.observe_queue_wait(time.perf_counter() - seq.submitted_at)  # waited for a slot until now
        slot = len(self.scheduler.active)
        self.scheduler.active.append(seq)  # before the await: a failed prefill is retired like any other
        token = await asyncio.get_running_loop().run_in_executor(self._executor, self._prefill, seq, slot)
        self._emit(seq, int(token))
        self.metrics.add_tokens(1)

    def _prefill(self, seq: Sequence, slot: int) -> int:
        req = seq.request
        embeds = self.embeddings[np.asarray(req.prompt_ids, dtype=np.int64)]  # (S_text,D)
        if req.image_features is not None:
            embeds = np.concatenate([np.asarray(req.image_features, np.float32), embeds])  # (S,D)
        logits = self.runner.prefill(slot, embeds)  # (V,)
        seq.length = embeds.shape[0]
        return int(sample_batch(logits[None], [seq.params], [seq.rng])[0])

    async def _decode_step(self, seqs: list[Sequence]) -> None:
        t0 = time.perf_counter()
        tokens = await asyncio.get_running_loop().run_in_executor(self._executor, self._decode, seqs)
        self.steps += 1
        for seq, tok in zip(seqs, tokens.tolist()):
            self._emit(seq, tok)
        self.metrics.add_tokens(len(seqs))
        self.metrics.observe_step(time.perf_counter() - t0, len(seqs))

    def _decode(self, seqs: list[Sequence]) -> np.ndarray:
        n = len(seqs)
        last = np.fromiter((s.last_token for s in seqs), np.int64, n)
        lengths = np.fromiter((s.length for s in seqs), np.int32, n)
        logits = self.runner.decode(n, self.embeddings[last], lengths)  # (n,V)
        for s in seqs:
            s.length += 1
        return sample_batch(logits, [s.params for s in seqs], [s.rng for s in seqs])

    def _emit(self, seq: Sequence, token: int) -> None:
        if seq.done:
            return  # cancelled while its step ran: nobody reads this token
        now = time.perf_counter()
        if seq.last_token_at is None:
            self.metrics.observe_ttft(now - seq.submitted_at)
        else:
            self.metrics.observe_itl(now - seq.last_token_at)
        seq.last_token_at = now
        seq.generated += 1
        seq.last_token = token
        seq.pending.append(token)
        req = seq.request
        if token == self.eos_id and not req.ignore_eos:
            seq.finish_reason = "stop"
        elif seq.generated >= req.max_tokens or seq.length >= self.runner.max_context:
            seq.finish_reason = "length"
        seq.ready.set()
