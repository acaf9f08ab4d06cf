"""The continuous-batching engine: one step thread per replica over a shared KV cache, streams on asyncio.

Lifecycle of a request:
    generate(request) -> enqueue (Overloaded when the bounded queue is full)
      -> admitted at a step: prefill [image features ; token embeddings] into a free slot; first token sampled
      -> every step: one decode call for all active slots; each new token is delivered to its stream
      -> retired at the next step after EOS / max_tokens / context end / stop string / cancellation

The step thread (stepper.StepLoop) never waits for the event loop: it publishes each step's tokens with one
call_soon_threadsafe, and a stream takes every token pending when it wakes, so a slow consumer gets fewer, larger
chunks instead of slowing the batch (and `stream_interval_s` makes chunks at most that frequent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
from tokenizers import Tokenizer

from serve_app.engine.config import EngineConfig
from serve_app.engine.detokenize import IncrementalDetokenizer
from serve_app.engine.metrics import EngineMetrics, NullMetrics
from serve_app.engine.runner import StepRunner
from serve_app.engine.penalties import TokenHistory, TokenLogprobs
from serve_app.engine.sampling import SamplingParams
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import Sequence
from serve_app.engine.stepper import StepLoop, StepReport
from serve_app.contract import DecodeChunk, DecodeRequest, FeatureSegment, TokenLogprob, TokenSegment


def sampling_params(request: DecodeRequest) -> SamplingParams:
    """ValueError naming the field for an out-of-range value (the ingress has refused those already)."""
    return SamplingParams(request.temperature, request.top_p, request.seed, top_k=request.top_k, min_p=request.min_p,
                          repetition_penalty=request.repetition_penalty, presence_penalty=request.presence_penalty,
                          frequency_penalty=request.frequency_penalty, min_tokens=request.min_tokens,
                          stop_token_ids=tuple(request.stop_token_ids), logprobs=request.logprobs)


def token_logprob(tokenizer: Tokenizer, token_id: int, logprob: float, top: list[tuple[int, float]]) -> TokenLogprob:
    """A token's text as vLLM's chat logprobs give it (the token decoded on its own, special tokens shown) and its
    UTF-8 bytes; `top`: (id, logprob) of the most likely tokens."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return TokenLogprob(text, logprob, list(text.encode("utf-8", errors="replace")),
                        [token_logprob(tokenizer, i, lp, []) for i, lp in top])


class Engine:
    def __init__(self, runner: StepRunner, token_embeddings: np.ndarray, tokenizer: Tokenizer, eos_ids: list[int],
                 config: EngineConfig, metrics: EngineMetrics | None = None, variant: str = "custom",
                 clean_up_spaces: bool = False):
        self.runner = runner
        self.variant = variant  # the decoder graph variant the runner executes
        self.embeddings = token_embeddings  # (V,D) float32
        self.tokenizer = tokenizer
        self.clean_up_spaces = clean_up_spaces  # transformers' decode clean-up, as the checkpoint's config asks
        self.eos_ids = frozenset(eos_ids)  # any of them ends a completion (unless ignore_eos)
        self.config = config
        self.metrics = metrics or NullMetrics()
        self.scheduler = Scheduler(runner, config)
        self._steps = StepLoop(runner, token_embeddings, self.eos_ids, self.scheduler, self._publish)
        self._started = False
        self._closed = False
        self.cancelled = 0  # streams that went away before their sequence finished
        self.kv_plan = None  # the KvPlan the loader sized the runner's cache by (None: a runner made elsewhere)
        self.int8 = None  # the loader's Int8Choice: the weight encoding an int8 variant runs (None: not int8)

    @property
    def steps(self) -> int:
        """Decode steps run so far: tests and benchmarks count latency in steps."""
        return self._steps.steps

    def update_config(self, config: EngineConfig) -> None:
        """Apply live knobs; the cache shape (slots, max_context) is fixed for the engine's life."""
        self.config = config
        self.scheduler.config = config

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)

    def shutdown(self) -> None:
        """Stop the step thread, fail what is still in flight, release the runner's KV cache. Idempotent; the
        engine takes no request after it."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._steps.stop()
        in_flight = [*self.scheduler.active, *self.scheduler.waiting, *self._steps.prefiller.staged]
        left = [seq for seq in in_flight if seq.finish_reason is None and seq.error is None]
        if left:
            self._publish(StepReport(failed=[(seq, RuntimeError("the decoder replica stopped")) for seq in left]))
        release = getattr(self.runner, "close", None)  # a fake runner in unit tests may have nothing to release
        if release is not None:
            release()

    # ---- streams (event loop) --------------------------------------------------------------------------------

    async def generate(self, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
        """Stream a completion. Leaving the iterator early (cancellation, disconnect) frees the slot."""
        seq = self.submit(request)
        detok = IncrementalDetokenizer(self.tokenizer, request.stop, clean_up_spaces=self.clean_up_spaces,
                                       min_tokens=request.min_tokens)
        sent, last_yield = 0, float("-inf")
        try:
            while True:
                await seq.ready.wait()
                await self._coalesce(seq, last_yield)
                seq.ready.clear()
                if seq.error is not None:
                    raise RuntimeError(f"decoder failed: {seq.error}") from seq.error
                ids, seq.pending = seq.pending, []
                raw_logprobs, seq.pending_logprobs = seq.pending_logprobs, []
                text, ids = self._detokenize(detok, ids)
                logprobs = self._logprobs(raw_logprobs[:len(ids)]) if request.logprobs is not None else None
                sent += len(ids)
                finish = "stop" if detok.stopped else seq.finish_reason
                if finish is not None:
                    if detok.stopped:
                        self._free(seq)  # a stop string is a normal end, not a cancellation
                    yield DecodeChunk(text + detok.flush(), ids, finish, request.prompt_len, sent, logprobs)
                    return
                if ids:
                    yield DecodeChunk(text, ids, None, request.prompt_len, sent, logprobs)
                    last_yield = time.perf_counter()
        finally:
            self.abort(seq)

    async def _coalesce(self, seq: Sequence, last_yield: float) -> None:
        """Hold a chunk until the stream interval after the previous one, gathering the tokens of the steps between:
        each chunk costs the serving path (Ray streaming, SSE) far more than a token costs the engine, so the
        interval also stretches to keep the replica's chunks/s under max_chunk_rate. The first and the last chunk
        are never held."""
        interval = self.config.stream_interval_s
        if self.config.max_chunk_rate:
            interval = max(interval, len(self.scheduler.active) / self.config.max_chunk_rate)
        wait = last_yield + interval - time.perf_counter()
        if wait > 0 and seq.finish_reason is None and seq.error is None:
            await asyncio.sleep(wait)

    @staticmethod
    def _detokenize(detok: IncrementalDetokenizer, ids: list[int]) -> tuple[str, list[int]]:
        """Text for `ids`, cut at a stop string: tokens after the one completing it are dropped."""
        parts = []
        for k, tok in enumerate(ids):
            parts.append(detok.add([tok]))
            if detok.stopped:
                return "".join(parts), ids[:k + 1]
        return "".join(parts), ids

    def _logprobs(self, entries: list[TokenLogprobs]) -> list[TokenLogprob]:
        return [token_logprob(self.tokenizer, e.token_id, e.logprob, e.top) for e in entries]

    def submit(self, request: DecodeRequest) -> Sequence:
        if self._closed:
            raise RuntimeError("the decoder engine is shut down")
        self._validate(request)
        params = sampling_params(request)
        seq = Sequence(request, params, params.make_rng(), asyncio.get_running_loop())
        seq.history = TokenHistory.of_prompt(self._prompt_ids(request))
        self.scheduler.enqueue(seq)
        self.metrics.set_queued(len(self.scheduler.waiting))
        if not self._started:
            self._started = True
            self._steps.start()
        self._steps.wake()
        return seq

    def _prompt_ids(self, request: DecodeRequest) -> list[int]:
        """The prompt's token ids, with the image placeholder id for image positions (as transformers' input_ids)."""
        ids = [i for s in request.segments if isinstance(s, TokenSegment) for i in s.ids]
        image_id = request.image_token_id
        has_image = any(not isinstance(s, TokenSegment) for s in request.segments)
        if has_image and image_id is not None and 0 <= image_id < self.embeddings.shape[0]:
            ids.append(image_id)
        return ids

    def abort(self, seq: Sequence) -> None:
        """Stop generating for `seq` (its stream went away); its slot is freed at the next step."""
        if not (seq.cancelled or seq.finish_reason is not None or seq.error is not None):
            self.cancelled += 1
            self._free(seq)

    def _free(self, seq: Sequence) -> None:
        seq.cancelled = True
        self.scheduler.drop_waiting(seq)
        self._steps.wake()

    def _validate(self, request: DecodeRequest) -> None:
        n, limit = request.prompt_len, self.runner.max_context
        if n < 1:
            raise ValueError("empty prompt: at least one token or image feature is needed")
        if n > limit:
            raise ValueError(f"prompt of {n} positions exceeds the decoder context of {limit}")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        vocab, width = self.embeddings.shape
        if any(not 0 <= t < vocab for t in request.stop_token_ids):
            raise ValueError(f"stop_token_ids must be in [0, {vocab})")
        for seg in request.segments:
            if isinstance(seg, TokenSegment):
                ids = np.asarray(seg.ids, dtype=np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= vocab):
                    raise ValueError(f"prompt token ids must be in [0, {vocab})")
            elif not isinstance(seg, FeatureSegment):  # a FeatureRef: the decoder stage fetches those first
                raise ValueError(f"prompt segment {type(seg).__name__} is not token ids or fetched image features")
            elif seg.features.ndim != 2 or seg.features.shape[1] != width:
                raise ValueError(f"image features must be (n, {width}), got {seg.features.shape}")

    # ---- delivery: step thread -> event loop -----------------------------------------------------------------

    def _publish(self, report: StepReport) -> None:
        """Called on the step thread: hand the report to each stream's loop, one callback per loop."""
        loops = {seq.loop for seq, *_ in report.tokens} | {seq.loop for seq, _ in report.failed}
        for loop in loops:
            try:
                loop.call_soon_threadsafe(self._deliver, report, loop)
            except RuntimeError:
                pass  # that loop is closed: nobody is left to read those streams
        if not loops:
            self._observe(report)

    def _deliver(self, report: StepReport, loop: asyncio.AbstractEventLoop) -> None:
        now = time.perf_counter()
        for seq, token, finish, logprobs in report.tokens:
            if seq.loop is not loop or seq.cancelled:
                continue
            if logprobs is not None:
                seq.pending_logprobs.append(logprobs)
            if seq.last_token_at is None:
                self.metrics.observe_ttft(now - seq.submitted_at)
            else:
                self.metrics.observe_itl(now - seq.last_token_at)
            seq.last_token_at = now
            seq.pending.append(token)
            if finish is not None:
                seq.finish_reason = finish
            seq.ready.set()
        for seq, error in report.failed:
            if seq.loop is loop:
                seq.error = error
                seq.ready.set()
        self._observe(report)

    def _observe(self, report: StepReport) -> None:
        for wait_s in report.queue_waits_s:
            self.metrics.observe_queue_wait(wait_s)
        if report.step_s is not None:
            self.metrics.observe_step(report.step_s, report.batch)
        self.metrics.add_tokens(len(report.tokens))
        # The gauges take the scheduler's counts now, not the report's: reports reach the loop late and out of order
        # with the idle report the step thread observes itself, and a late busy count would stick while idle.
        self.metrics.set_active(len(self.scheduler.active))
        self.metrics.set_queued(len(self.scheduler.waiting))
