"""The HTTP front door: OpenAI wire format, auth, validation, and the orchestration of the stages.

Routes:
    GET  /health                liveness: the ingress answers (no auth)
    GET  /ready                 readiness: every stage deployment has a running replica (no auth); when ready,
                                also the EP a vision replica runs on and why it fell back, if it did, and the
                                int8 weight encoding (u8s8/u8u8) the vision and decoder replicas chose
    GET  /v1/models             the served model
    POST /v1/chat/completions   text + image_url parts; stream true (SSE) or false

Everything a route uses is defined above the class: `serve.ingress` serializes the app as the class is decorated.

Three outcomes per request, as in vLLM's router: an error -> JSON error with its status; a full response -> JSON;
otherwise SSE. Every error goes through `errors.to_error`.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures (request: Request) at runtime.
import asyncio
import dataclasses
import hmac
import logging
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api import chat
from serve_app.api.completions import CompletionMeta, collect, stream_chunks
from serve_app.api.offload import RequestWork
from serve_app.api.served import ServedModels, load_served_model, rollout_settled
from serve_app.api.errors import APIError, InvalidRequest, NotFound, Unauthorized, unwrap
from serve_app.api.options import IngressOptions
from serve_app.artifacts import ModelSource
from serve_app.contract import ModelMismatch
from serve_app.observability.metrics import StageMetrics, outcome_of_status
from serve_app.api.protocol import ModelCard, ModelList, completion_id
from serve_app.api.sse import error_response, sse_response
from serve_app.api.request_limits import default_max_request_bytes, read_body
from serve_app.api.retry import RETRYABLE
from serve_app.api.heap_trim import HeapTrimmer
from serve_app.api.stage_watch import StageWatch
from serve_app.observability.memory_trace import MemoryTrace
from serve_app.stages.options import PreprocessOptions

log = logging.getLogger("ray.serve")
app = FastAPI(title="mmserve", docs_url=None, redoc_url=None)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown routes and wrong methods answer in the OpenAI error format too.
    err = NotFound(f"{request.method} {request.url.path}: {exc.detail}", code="not_found")
    err.status = exc.status_code
    return error_response(err)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    return error_response(InvalidRequest(f"{where}: {first['msg']}" if where else first["msg"], where or None,
                                         "invalid_value"))


# A replica applying a new user_config is UPDATING: it serves again within seconds, and calls meanwhile wait in
# Serve's router, so it is not a lost stage (counting it as one gave 503s during a live reconfigure).
SERVING_STATES = frozenset({"RUNNING", "UPDATING"})


def missing_stages(deployments: dict) -> list[str]:
    """Names of the deployments (controller details: name -> {"replicas": [{"state": ...}, ...]}) with no replica
    that is serving or about to serve again."""
    return sorted(name for name, d in deployments.items()
                  if not any(getattr(r["state"], "value", r["state"]) in SERVING_STATES for r in d["replicas"]))


def stages_without_replica() -> list[str]:
    """Deployments of this application with no serving replica (empty = ready). The StageWatch asks every second,
    so it reads the controller's plain details dict, which serve.status() would turn into pydantic models
    (re-pickling every deployment's request router class) at about ten times the ingress CPU per call."""
    from ray.serve.context import _get_global_client  # noqa: PLC0415 -- serve.status's own source, minus models

    app_name = serve.get_replica_context().app_name
    app = _get_global_client().get_serve_details().get("applications", {}).get(app_name)
    if app is None:
        return ["<application>"]
    return missing_stages(app["deployments"])


def stages_settled() -> bool:
    """No deployment of this application is rolling out: its stage replicas serve one model."""
    from ray.serve.context import _get_global_client  # noqa: PLC0415

    app = _get_global_client().get_serve_details().get("applications", {}).get(
        serve.get_replica_context().app_name)
    return app is not None and rollout_settled(app["deployments"])


# Two malloc arenas, set before the process starts (glibc reads it once): with one arena per thread, the buffers Ray's
# threads and the event loop allocate and free per request left the arenas' free space growing, and the RSS with it
# (docs/failures.md, soak). A config file's ray_actor_options replace this dict: the shipped configs repeat it.
ARENA_ENV = {"MALLOC_ARENA_MAX": "2"}


@serve.deployment(ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": ARENA_ENV}},
                  max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    """Lifecycle: load the tokenizer and model limits from the manifest -> per request: auth -> parse -> validate
    against the context -> preprocess -> vision -> decoder -> JSON or SSE. CPU only, light."""

    def __init__(self, model: ModelSource | dict, options: IngressOptions | dict, max_context: int | None,
                 preprocess, vision, decoder):
        """`max_context`: the Decoder's cache length (its args' max_context; None = the model's)."""
        self.options = IngressOptions.model_validate(options)
        self._memory_trace = MemoryTrace.start_if_asked()  # first: allocations made at start are traced too
        first = load_served_model(ModelSource.model_validate(model), max_context, self.options.max_images_per_request)
        self.models = ServedModels(first, max_context, self.options.max_images_per_request)  # follows rollouts
        self.watch = StageWatch(stages_without_replica).start()  # image requests fail fast when vision is lost
        self._forgetting: asyncio.Task | None = None  # after a follow: forget the old model once the rollout ends
        self.heap_trim = HeapTrimmer().start()  # freed heap pages back to the kernel: RSS stays flat under load
        if os.environ.get("MALLOC_ARENA_MAX") is None:
            log.warning("mmserve: the ingress runs without MALLOC_ARENA_MAX (its deployment's ray_actor_options "
                        "replaced the default runtime_env): expect its RSS to creep under load; set "
                        "runtime_env: {env_vars: {MALLOC_ARENA_MAX: \"2\"}} there")
        self.stages = chat.Stages(preprocess, vision, decoder, self.options.stage_timeout_s, self.watch.missing,
                                  self.watch.recheck, decoder_timeout_s=self.options.decoder_timeout_s)
        self.keys = self.options.keys()
        self.metrics = StageMetrics("ingress")
        self.work = RequestWork()  # parsing and preparing a request, off the loop that relays every stream
        self.body_limit = self.options.max_request_bytes or default_max_request_bytes(
            PreprocessOptions().max_image_bytes, self.options.max_images_per_request)

    def _authorize(self, request: Request) -> None:
        if not self.keys:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        # compare_digest against every key: timing does not reveal how much of a key matched
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.keys):
            raise Unauthorized()

    def __del__(self) -> None:
        """Serve calls this when the replica stops: the stage watch's and heap trim's threads and a pending forget
        end with it."""
        watch = getattr(self, "watch", None)  # absent when __init__ failed early
        if watch is not None:
            watch.stop()
        heap_trim = getattr(self, "heap_trim", None)
        if heap_trim is not None:
            heap_trim.stop()
        forgetting = getattr(self, "_forgetting", None)
        if forgetting is not None:
            forgetting.cancel()

    async def memory_trace(self, action: str = "growth", limit: int = 15) -> dict:
        """Benchmarks only, through a Serve handle (no HTTP route): `baseline` marks the allocations now, `growth`
        lists what grew most since, `trim` returns the heap's free pages to the kernel; needs MMSERVE_TRACEMALLOC
        in the replica's environment (memory_trace.py)."""
        if self._memory_trace is None:
            raise RuntimeError("memory_trace: start the cluster with MMSERVE_TRACEMALLOC=<frames|native> set")
        return self._memory_trace.act(action, limit)

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> Response:
        not_ready = await asyncio.to_thread(self.watch.refresh)  # the watch agrees with what /ready answers
        if not not_ready:
            try:
                vision, decoder = await asyncio.gather(self._vision_ep(), self._decoder_ep())
                return JSONResponse({"status": "ready", "vision": vision, "decoder": decoder})
            except (TimeoutError, *RETRYABLE):  # its node lost before the controller noticed: not ready either
                not_ready = ["VisionEncoder"]
        return JSONResponse({"status": "not ready", "waiting_for": sorted(not_ready)}, status_code=503)

    async def _vision_ep(self) -> dict:
        """ORT falls back from TensorRT/CUDA silently: readiness says where vision really runs. A readiness probe
        must answer quickly, so the wait is short."""
        info = await asyncio.wait_for(self.stages.vision.info.remote(), min(self.options.stage_timeout_s, 5.0))
        return {key: info[key] for key in ("provider", "variant", "fallbacks", "int8")}

    async def _decoder_ep(self) -> dict:
        """The decoder's variant and the int8 weight encoding it chose for this CPU (u8s8 where VNNI/AMX kernels
        multiply exactly, else u8u8)."""
        info = await asyncio.wait_for(self.stages.decoder.info.remote(), min(self.options.stage_timeout_s, 5.0))
        return {key: info[key] for key in ("variant", "int8")}

    @app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except APIError as e:
            return error_response(e)
        return JSONResponse(ModelList(data=[ModelCard(id=self.models.current.name)]).model_dump())

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        # Counted when the status is known; a stream that fails later still counts as its 200 here (the decoder
        # stage counts its own outcome). Ray's proxy has set X-Request-Id already: it is in every stage's logs.
        response = await self._chat_completions(request)
        self.metrics.count(outcome_of_status(response.status_code), response.status_code)
        return response

    async def _start(self, rid: str, req):
        """Prepare, encode the images, open the decoder stream -- all on one model. Refused by every replica (the
        stages were upgraded under this ingress): follow them to their model once and start again."""
        for may_follow in (True, False):
            model = self.models.current
            try:
                if req.model is not None and req.model != model.name:
                    raise NotFound(f"model {req.model!r} does not exist; this server serves {model.name!r}",
                                   "model", "model_not_found")
                prepared = await self.work.prepare(req, model.prompt, model.limits)
                stages = dataclasses.replace(self.stages, model_key=model.key)

                async def admit(images: list) -> None:  # each image's rows and layout: the exact prompt
                    nonlocal prepared
                    prepared = await self.work.admit(prepared, images, req, model.limits, model.prompt,
                                                     self.options.max_image_tokens_per_request)

                features = await chat.image_features(stages, prepared.images, admit)
                request = chat.decode_request(rid, req, prepared, features, model.key)
                return model, prepared, await chat.open_stream(stages, request)
            except Exception as e:  # noqa: BLE001 -- only a refusal by another model's replicas is retried
                refused = unwrap(e)
                if not (may_follow and isinstance(refused, ModelMismatch) and await self.models.follow(refused)):
                    raise
                if self._forgetting is None or self._forgetting.done():
                    self._forgetting = asyncio.create_task(self.models.forget_when_settled(stages_settled))

    async def _chat_completions(self, request: Request) -> Response:
        try:
            self._authorize(request)
            body = await read_body(request, self.body_limit)  # 413 before the body fills memory
            req = await self.work.parse(body, self.options.max_json_depth)
            rid = completion_id()
            model, prepared, tokens = await self._start(rid, req)
        except Exception as e:  # noqa: BLE001 -- one error path for all: to_error picks the status
            return error_response(e)
        meta = CompletionMeta(rid, model.name, prepared.prompt_len, req.include_usage(), model.fingerprint)
        if req.stream:
            return await sse_response(stream_chunks(meta, tokens))
        try:
            return JSONResponse((await collect(meta, tokens)).model_dump())
        except Exception as e:  # noqa: BLE001
            return error_response(e)
