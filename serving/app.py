"""The OpenAI-compatible HTTP server (Starlette on uvicorn): text, speech and image packages in one
torch-free process, a student -> teacher cascade, Prometheus metrics, limits and API keys.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming as
server-sent events), ``POST /v1/audio/transcriptions`` (multipart), ``POST /v1/images/generations``,
``GET /health`` (503 while the packages load), ``GET /metrics``. Errors are OpenAI's error object
(``{"error": {"message", "type", "param", "code"}}``) with the matching status; a client never sees
a traceback.

Concurrency: packages load once, on a background thread after the server starts listening. Text
requests to one package are batched by its ``TextEngine`` (continuous batching at decode-step
boundaries, ``edge_sdk.serving.engine``); speech and image requests to one package run one at a
time on its own thread. Every model has a bounded queue: when it is full the server answers 429
with ``Retry-After``. A client that disconnects mid-stream cancels its generation (its batch row
is freed at the next step).

Cascade (``--fallback STUDENT=TEACHER``): the student answers; when its confidence
(``edge_sdk.serving.cascade``) is below the threshold the teacher answers instead. Non-streamed
requests are judged on the student's whole answer; streamed ones on its first K tokens
(``--cascade-tokens``, default 8), held back until the decision, so the stream never mixes the two.
The response's ``model`` field and its ``x-edge-sdk-model`` header name the model that answered;
``x-edge-sdk-escalated`` and ``x-edge-sdk-confidence`` say why.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from edge_sdk.errors import EdgeSDKError, InvalidInputError, optional_import
from edge_sdk.serving.cascade import DEFAULT_STREAM_TOKENS, TEXT_MEASURES, speech_confidence, text_confidence
from edge_sdk.serving.engine import DEFAULT_PARALLEL, QueueFullError, TextEngine
from edge_sdk.serving.metrics import Metrics

log = logging.getLogger("edge_sdk.serving")
access_log = logging.getLogger("edge_sdk.serving.access")

TEXT, SPEECH, IMAGE = "text-generation", "automatic-speech-recognition", "unconditional-image-generation"
KIND_OF_CLASS = {"TextGenerator": TEXT, "SpeechRecognizer": SPEECH, "ImageGenerator": IMAGE}


@dataclass
class ServeOptions:
    """How the server runs; every limit is a CLI flag of ``edge-sdk serve``."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # every endpoint but /health then needs "Authorization: Bearer KEY"
    threads: int | None = None  # engine threads per model (None: one per physical core)
    parallel: int = DEFAULT_PARALLEL  # rows of each text model's running batch
    context: int | None = None  # tokens per row of a text model's KV cache (None: the model's, at most 4096)
    max_queue: int = 64  # requests waiting per model beyond the running ones, before 429
    max_body_bytes: int = 25 * 1024 * 1024  # request bodies (OpenAI's audio upload limit is 25 MB)
    max_audio_seconds: float = 3600.0  # longest recording transcribed
    max_tokens: int = 4096  # largest max_tokens a request may ask for
    max_images: int = 4  # images per request
    request_timeout: float = 600.0  # seconds a request may take in all (408 after it)
    log_content: bool = False  # put prompts and outputs in the request log lines
    cascade_tokens: int = DEFAULT_STREAM_TOKENS  # streamed cascade requests: the student's tokens that decide
    measure: str = "mean_logprob"  # the text cascade's confidence measure

    def __post_init__(self):
        for name in ("parallel", "max_tokens", "max_images", "max_body_bytes", "cascade_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.max_queue < 0:
            raise InvalidInputError(f"max-queue must be >= 0, got {self.max_queue}")
        for name in ("max_audio_seconds", "request_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)!r}")
        if self.measure not in TEXT_MEASURES:
            raise InvalidInputError(f"unknown confidence measure {self.measure!r}; choose one of {', '.join(TEXT_MEASURES)}")


@dataclass
class Fallback:
    teacher: str  # served model name
    threshold: float


@dataclass
class ModelSpec:
    """A package to serve: its name in the API and its directory."""

    name: str
    path: Path


@dataclass
class Served:
    name: str
    path: Path
    kind: str
    runtime: Any
    engine: TextEngine | None = None  # text
    worker: "SerialWorker | None" = None  # speech, images
    fallback: Fallback | None = None
    created: int = field(default_factory=lambda: int(time.time()))


class APIError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Cancelled(Exception):
    """Work abandoned because its client left or its time ran out."""


class SerialWorker:
    """Runs one model's requests one at a time on its own thread, with a bounded queue."""

    def __init__(self, name: str, max_queue: int):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"edge-sdk-{name}")
        self._lock = threading.Lock()
        self.max_queue = max_queue
        self.running = 0
        self.queued = 0

    async def run(self, function: Callable, cancelled: threading.Event):
        with self._lock:
            if self.running + self.queued >= 1 + self.max_queue:
                raise QueueFullError(f"the server is busy: {self.running} request running and {self.queued} waiting "
                                     "for this model; retry shortly")
            self.queued += 1

        def job():
            with self._lock:
                self.queued -= 1
                self.running += 1
            try:
                if cancelled.is_set():
                    raise Cancelled()
                return function()
            finally:
                with self._lock:
                    self.running -= 1

        return await asyncio.get_running_loop().run_in_executor(self._pool, job)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Hub:
    """The served models: loaded on a background thread, looked up by name and kind."""

    def __init__(self, specs: list[ModelSpec], fallbacks: dict[str, tuple[str, float]], options: ServeOptions,
                 metrics: Metrics):
        self.specs, self.fallbacks, self.options, self.metrics = specs, fallbacks, options, metrics
        self.models: dict[str, Served] = {}
        self.ready = threading.Event()
        self.error: str | None = None
        self.on_failure: Callable[[], None] | None = None

    def load(self) -> None:
        from edge_sdk.runtimes import load

        try:
            for spec in self.specs:
                started = time.perf_counter()
                runtime = load(spec.path, threads=self.options.threads)
                kind = KIND_OF_CLASS.get(type(runtime).__name__)
                if kind is None:
                    raise InvalidInputError(f"{spec.path} is a {runtime.package.task} package, which the server does not serve")
                served = Served(spec.name, spec.path, kind, runtime)
                if kind == TEXT:
                    served.engine = TextEngine(runtime, self.options.parallel, self.options.context, self.options.max_queue)
                    served.engine.start()
                else:
                    served.worker = SerialWorker(spec.name, self.options.max_queue)
                self.models[spec.name] = served
                log.info(json.dumps({"event": "loaded", "model": spec.name, "task": kind, "path": str(spec.path),
                                     "seconds": round(time.perf_counter() - started, 3)}))
            for student, (teacher, threshold) in self.fallbacks.items():
                s, t = self.models[student], self.models[teacher]
                if s.kind != t.kind or s.kind == IMAGE:
                    raise InvalidInputError(f"--fallback {student}={teacher}: a cascade pairs two text or two speech "
                                            f"packages (got {s.kind} and {t.kind})")
                s.fallback = Fallback(teacher, threshold)
            self.ready.set()
        except Exception as e:  # reported as one line; the server then stops
            self.error = str(e) if isinstance(e, EdgeSDKError) else f"{type(e).__name__}: {e}"
            log.error(json.dumps({"event": "load_failed", "error": self.error}))
            if self.on_failure is not None:
                self.on_failure()

    def require_ready(self) -> None:
        if not self.ready.is_set():
            raise APIError(503, "the models are still loading; retry shortly (GET /health says when they are ready)",
                           "server_error", code="model_loading", headers={"Retry-After": "1"})

    def get(self, name: str | None, kind: str) -> Served:
        self.require_ready()
        if name is not None and not isinstance(name, str):
            raise APIError(400, "'model' must be a string", param="model")
        if name is None:
            of_kind = [m for m in self.models.values() if m.kind == kind]
            if len(of_kind) == 1:
                return of_kind[0]
            raise APIError(400, f"'model' is required: this server has {len(of_kind)} {kind} models "
                                f"({', '.join(m.name for m in of_kind) or 'none'})", param="model")
        served = self.models.get(name)
        if served is None:
            raise APIError(404, f"The model '{name}' does not exist; this server has: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        if served.kind != kind:
            raise APIError(400, f"the model '{name}' is a {served.kind} model; this endpoint serves {kind} models",
                           param="model")
        return served

    def stop(self) -> None:
        for served in self.models.values():
            if served.engine is not None:
                served.engine.stop()
            if served.worker is not None:
                served.worker.shutdown()


# ---------------------------------------------------------------------- request parsing
def _number(body: dict, key: str, default, low=None, high=None, integer=False, exclusive_low=False):
    value = body.get(key)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or (isinstance(value, float) and not math.isfinite(value)):
        raise APIError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}", param=key)
    if low is not None and (value <= low if exclusive_low else value < low):
        raise APIError(400, f"'{key}' must be {'>' if exclusive_low else '>='} {low}, got {value}", param=key)
    if high is not None and value > high:
        raise APIError(400, f"'{key}' must be <= {high}, got {value}", param=key)
    return value


def _top_k(body: dict) -> int | None:
    value = _number(body, "top_k", None, low=-1, integer=True)
    return 0 if value == -1 else value


@dataclass
class TextParams:
    options: Any  # GenerationOptions
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int


def _text_params(body: dict, served: Served, limits: ServeOptions, chat: bool) -> TextParams:
    lm = served.runtime
    n = _number(body, "n", 1, integer=True)
    if n != 1:
        raise APIError(400, f"'n' must be 1 (one choice per request), got {n}; send separate requests", param="n")
    if body.get("best_of") not in (None, 1):
        raise APIError(400, "'best_of' is not supported; leave it unset", param="best_of")
    if body.get("echo"):
        raise APIError(400, "'echo' is not supported; leave it unset or false", param="echo")
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, 0) != 0:
            raise APIError(400, f"'{key}' is not supported; use 'repetition_penalty' (CTRL's rule) instead", param=key)
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    default_max = lm.defaults.max_new_tokens if chat else 16  # OpenAI's completions default
    max_tokens = _number(body, key, default_max, low=1, integer=True)
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"'{key}' is {max_tokens} but this server allows at most {limits.max_tokens} "
                            "(edge-sdk serve --max-tokens)", param=key)
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stop = tuple(stop)
    else:
        raise APIError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    if chat:
        logprobs = body.get("logprobs") or False
        if not isinstance(logprobs, bool):
            raise APIError(400, "'logprobs' must be true or false", param="logprobs")
        top = _number(body, "top_logprobs", 0, low=0, high=20, integer=True)
        if top and not logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    else:
        top = _number(body, "logprobs", None, low=0, high=5, integer=True)
        logprobs, top = top is not None, top or 0
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise APIError(400, "'stream_options' must be an object", param="stream_options")
    include_usage = bool(stream_options.get("include_usage"))
    overrides = {
        "max_new_tokens": max_tokens,
        "temperature": _number(body, "temperature", None, low=0, high=2),
        "top_p": _number(body, "top_p", None, low=0, high=1, exclusive_low=True),
        "top_k": _top_k(body),  # vLLM's extension (-1 or 0 disables it)
        "repetition_penalty": _number(body, "repetition_penalty", None, low=0, exclusive_low=True),
        "seed": _number(body, "seed", None, low=0, integer=True),
        "ignore_eos": body.get("ignore_eos") if isinstance(body.get("ignore_eos"), bool) else None,
        "stop": stop,
    }
    try:
        options = lm.options(**overrides)
    except EdgeSDKError as e:
        raise APIError(400, str(e)) from None
    return TextParams(options, stream, include_usage, logprobs, top)


# ---------------------------------------------------------------------- the application
class Server:
    """The ASGI application and the state behind it (``Server(...).app``)."""

    def __init__(self, specs: list[ModelSpec], options: ServeOptions | None = None,
                 fallbacks: dict[str, tuple[str, float]] | None = None):
        self.options = options or ServeOptions()
        self.metrics = Metrics()
        self.hub = Hub(specs, fallbacks or {}, self.options, self.metrics)
        self._durations: dict[str, float] = {}  # recent request seconds per model, for Retry-After
        routes = [
            Route("/health", self._handler(self.health), methods=["GET"]),
            Route("/metrics", self._handler(self.metrics_endpoint), methods=["GET"]),
            Route("/v1/models", self._handler(self.list_models), methods=["GET"]),
            Route("/v1/models/{name:path}", self._handler(self.get_model), methods=["GET"]),
            Route("/v1/completions", self._handler(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._handler(self.chat_completions), methods=["POST"]),
            Route("/v1/audio/transcriptions", self._handler(self.transcriptions), methods=["POST"]),
            Route("/v1/audio/translations", self._handler(self.translations), methods=["POST"]),
            Route("/v1/images/generations", self._handler(self.image_generations), methods=["POST"]),
        ]
        self.starlette = Starlette(routes=routes, lifespan=self._lifespan,
                                   exception_handlers={404: self._not_found, 405: self._not_allowed})
        self.app = _Guard(self.starlette, self)

    def _handler(self, function):
        """The endpoint ``function`` with every failure answered as OpenAI's error object (and
        counted and logged), never as a traceback."""
        async def handle(request):
            started = time.perf_counter()
            try:
                return await function(request)
            except Exception as e:
                error = _as_api_error(e)
                if error.status >= 500:
                    log.exception("request failed: %s %s", request.method, request.url.path)
                info = {"model": "", "endpoint": _ENDPOINTS.get(request.url.path, "other"), "error": error.message}
                self._record(info, error.status, started)
                return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

        return handle

    # ------------------------------------------------------------------ lifecycle
    def _lifespan(self, app):
        server = self

        class Lifespan:
            async def __aenter__(self):
                threading.Thread(target=server.hub.load, name="edge-sdk-load", daemon=True).start()

            async def __aexit__(self, *exc):
                server.hub.stop()

        return Lifespan()

    # ------------------------------------------------------------------ plain endpoints
    async def health(self, request):
        public = self.options.api_key is None  # /health needs no key: with one set it says no more than the status
        if self.hub.error:
            return JSONResponse({"status": "error", **({"error": self.hub.error} if public else {})}, status_code=503)
        if not self.hub.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", **({"models": list(self.hub.models)} if public else {})})

    async def metrics_endpoint(self, request):
        for served in list(self.hub.models.values()):  # the loading thread may still be adding models
            running, queued = self._load_of(served)
            self.metrics.running.labels(served.name).set(running)
            self.metrics.queued.labels(served.name).set(queued)
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    async def list_models(self, request):
        self.hub.require_ready()
        return JSONResponse({"object": "list", "data": [self._model_card(m) for m in self.hub.models.values()]})

    async def get_model(self, request):
        self.hub.require_ready()
        name = request.path_params["name"]
        if name not in self.hub.models:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return JSONResponse(self._model_card(self.hub.models[name]))

    def _model_card(self, served: Served) -> dict:
        card = {"id": served.name, "object": "model", "created": served.created, "owned_by": "edge-sdk",
                "task": served.kind}
        if served.kind == TEXT:
            card["context_length"] = served.engine.context
        if served.fallback:
            card["fallback"] = {"model": served.fallback.teacher, "threshold": served.fallback.threshold}
        return card

    @staticmethod
    def _load_of(served: Served) -> tuple[int, int]:
        if served.engine is not None:
            return served.engine.running, served.engine.queued
        return served.worker.running, served.worker.queued

    async def _not_found(self, request, exc):
        error = APIError(404, f"no endpoint {request.method} {request.url.path}; see GET /v1/models", code="not_found")
        return JSONResponse(error.body(), status_code=404)

    async def _not_allowed(self, request, exc):
        error = APIError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return JSONResponse(error.body(), status_code=405)

    # ------------------------------------------------------------------ text
    async def completions(self, request):
        body = await _json_body(request)
        served = self.hub.get(body.get("model"), TEXT)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
        params = _text_params(body, served, self.options, chat=False)
        encode = _encoder(lambda lm: lm._encode(prompt), "prompt")
        return await self._text(request, served, encode, params, chat=False, content=prompt)

    async def chat_completions(self, request):
        body = await _json_body(request)
        served = self.hub.get(body.get("model"), TEXT)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise APIError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
        for message in messages:  # content parts: the text ones, joined (images and audio are not supported)
            if isinstance(message.get("content"), list):
                parts = message["content"]
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
                    raise APIError(400, "message content parts must be text parts ({\"type\": \"text\", \"text\": ...})",
                                   param="messages")
                message["content"] = "".join(p["text"] for p in parts)
        params = _text_params(body, served, self.options, chat=True)
        encode = _encoder(lambda lm: lm._chat_ids(messages, None), "messages")
        return await self._text(request, served, encode, params, chat=True, content=messages)

    async def _text(self, request, served: Served, encode, params: TextParams, chat: bool, content):
        param = "messages" if chat else "prompt"
        started = time.perf_counter()
        info = {"model": served.name, "endpoint": "chat" if chat else "completions", "stream": params.stream}
        if self.options.log_content:
            info["prompt"] = content
        deadline = started + self.options.request_timeout
        answering, escalated, confidence = served, False, None
        needs_scores = params.logprobs or served.fallback is not None
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(None, encode, served.runtime)  # chat templates and tokenizers off the loop
        first = await self._submit(served, ids, params, scores=needs_scores, param=param)
        if served.fallback is not None:
            teacher = self.hub.models[served.fallback.teacher]
            judged = self.options.cascade_tokens if params.stream else None
            await first.wait(judged, deadline, request)
            req = first.request
            considered = len(req.logprobs) if judged is None else min(judged, len(req.logprobs))
            confidence = text_confidence(req.logprobs[:considered], req.entropies[:considered], self.options.measure)
            if self._escalates(served, confidence):
                req.cancel()
                escalated, answering = True, teacher
                first = await self._submit(teacher, await loop.run_in_executor(None, encode, teacher.runtime), params,
                                           scores=params.logprobs, param=param)
        info.update(answered_by=answering.name, escalated=escalated, confidence=confidence)
        headers = _answer_headers(served, answering, escalated, confidence)
        if params.stream:
            return self._stream(request, first, answering, params, chat, headers, info, started, deadline)
        await first.wait(None, deadline, request)
        req = first.request
        self._text_metrics(answering, req)
        body = _text_body(answering, req, params, chat)
        info.update(self._text_info(req))
        if self.options.log_content:
            info["output"] = req.text
        self._record(info, 200, started)
        return JSONResponse(body, headers=headers)

    def _escalates(self, student: Served, confidence: float) -> bool:
        """Whether the student's answer goes to its teacher; counts the confidence and the escalation."""
        if math.isfinite(confidence):
            self.metrics.confidence.labels(student.name).observe(confidence)
        if confidence >= student.fallback.threshold:
            return False
        self.metrics.escalations.labels(student.name, student.fallback.teacher).inc()
        return True

    async def _submit(self, served: Served, ids: list[int], params: TextParams, scores: bool, param: str) -> "_Pending":
        pending = _Pending(asyncio.get_running_loop())
        try:
            pending.request = served.engine.submit(ids, params.options, scores=scores, top_logprobs=params.top_logprobs,
                                                   on_event=pending.on_event)
        except QueueFullError as e:
            raise APIError(429, str(e), "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(self._retry_after(served))}) from None
        except EdgeSDKError as e:
            code = "context_length_exceeded" if "context" in str(e) else None
            raise APIError(400, str(e), param=param if code else None, code=code) from None
        return pending

    def _retry_after(self, served: Served) -> int:
        seconds = self._durations.get(served.name, 1.0)
        running, queued = self._load_of(served)
        parallel = self.options.parallel if served.engine is not None else 1
        return max(1, math.ceil(seconds * (queued + 1) / parallel))

    def _stream(self, request, pending: "_Pending", served: Served, params: TextParams, chat: bool, headers: dict,
                info: dict, started: float, deadline: float):
        lm = served.runtime
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict, usage=None) -> str:
            data = {"id": ident, "object": obj, "created": created, "model": served.name,
                    "choices": [choice] if choice is not None else []}
            if usage is not None or (params.include_usage and choice is not None):
                data["usage"] = usage
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events():
            status = 499  # the client left before the end (nginx's convention)
            req = pending.request
            try:
                if chat:
                    yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None})
                offset = 0
                async for piece, entries, finished in pending.events(deadline):
                    logprobs = None
                    if params.logprobs:
                        logprobs = _chat_logprobs(lm, entries) if chat else _completion_logprobs(lm, entries, offset)
                    offset += len(piece)
                    reason = _finish_reason(req.finish_reason) if finished else None
                    if piece or entries or finished:  # a chunk per token, as llama-server and OpenAI send them
                        if chat:
                            yield chunk({"index": 0, "delta": {"content": piece}, "logprobs": logprobs, "finish_reason": reason})
                        else:
                            yield chunk({"text": piece, "index": 0, "logprobs": logprobs, "finish_reason": reason})
                if req.error is not None:
                    status = 500
                    yield f"data: {json.dumps(_internal_error().body())}\n\n"
                else:
                    status = 200
                    self._text_metrics(served, req)
                    if params.include_usage:
                        yield chunk(None, _usage(req))
                yield "data: [DONE]\n\n"
            except (TimeoutError, asyncio.TimeoutError):
                status = 408
                yield f"data: {json.dumps(_timeout_error(self.options.request_timeout).body())}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                req.cancel()
                info.update(self._text_info(req))
                if self.options.log_content:
                    info["output"] = req.text
                self._record(info, status, started)

        response = _Stream(events(), media_type="text/event-stream",
                           headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.on_close = pending.request.cancel
        return response

    def _text_metrics(self, served: Served, req) -> None:
        m, name = self.metrics, served.name
        m.prompt_tokens.labels(name).inc(len(req.prompt_ids))
        m.generation_tokens.labels(name).inc(len(req.token_ids))
        if req.first_token is not None:
            m.ttft.labels(name).observe(req.first_token - req.submitted)
            if len(req.token_ids) > 1 and req.finished:
                m.itl.labels(name).observe((req.finished - req.first_token) / (len(req.token_ids) - 1))

    @staticmethod
    def _text_info(req) -> dict:
        return {"prompt_tokens": len(req.prompt_ids), "completion_tokens": len(req.token_ids),
                "queued_s": round(req.queued_seconds, 4), "finish_reason": req.finish_reason,
                "ttft_s": round(req.first_token - req.submitted, 4) if req.first_token else None}

    # ------------------------------------------------------------------ speech
    async def translations(self, request):
        """OpenAI's /v1/audio/translations: the speech in English (Whisper's translate task; multilingual models)."""
        return await self.transcriptions(request, task="translate")

    async def transcriptions(self, request, task: str = "transcribe"):
        started = time.perf_counter()
        try:
            form = await request.form(max_files=1, max_fields=32, max_part_size=self.options.max_body_bytes)
        except APIError:
            raise
        except Exception as e:
            raise APIError(400, f"the body must be multipart/form-data with a 'file' part ({e})") from None
        served = self.hub.get(_form_text(form, "model"), SPEECH)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "'file' is required: the audio to transcribe, as a multipart file part", param="file")
        data = await upload.read()
        if not data:
            raise APIError(400, "the uploaded file is empty (0 bytes); send audio", param="file")
        response_format = _form_text(form, "response_format") or "json"
        if response_format not in ("json", "text", "srt", "vtt", "verbose_json"):
            raise APIError(400, f"'response_format' must be json, text, srt, vtt or verbose_json, got {response_format!r}",
                           param="response_format")
        # OpenAI's semantics: 0 (the default) decodes at 0 and raises the temperature on a failing
        # window (the model's fallback schedule); above 0, that temperature alone
        temperature = _form_number(form, "temperature", low=0, high=1)
        granularities = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
        if any(g not in ("segment", "word") for g in granularities):
            raise APIError(400, f"'timestamp_granularities' entries must be 'segment' or 'word', got {granularities!r}",
                           param="timestamp_granularities")
        words = "word" in granularities
        if words and response_format != "verbose_json":
            raise APIError(400, "word timestamps come with response_format 'verbose_json'", param="timestamp_granularities")
        overrides = {"language": _form_text(form, "language") or None,
                     "initial_prompt": _form_text(form, "prompt") or None, "temperature": temperature or None, "task": task,
                     "word_timestamps": words}
        samples, rate = await asyncio.get_running_loop().run_in_executor(None, _decode_audio, data, upload.filename)
        duration = len(samples) / rate
        if duration > self.options.max_audio_seconds:
            raise APIError(413, f"the audio is {duration:.0f} s long; this server transcribes at most "
                                f"{self.options.max_audio_seconds:.0f} s (edge-sdk serve --max-audio-seconds)",
                           param="file", code="audio_too_long")
        info = {"model": served.name, "endpoint": "transcriptions", "audio_seconds": round(duration, 3)}
        cancelled = threading.Event()
        deadline = started + self.options.request_timeout

        def progress(done, total):
            if cancelled.is_set():
                raise Cancelled()

        def transcribe(model: Served):
            try:
                return model.runtime.transcribe(samples, sample_rate=rate, progress=progress, **overrides)
            except EdgeSDKError as e:
                raise APIError(400, str(e)) from None

        answering, escalated, confidence = served, False, None
        result = await self._run_serial(served, lambda: transcribe(served), cancelled, deadline, request)
        if served.fallback is not None:
            confidence = speech_confidence(result).value
            if self._escalates(served, confidence):
                escalated, answering = True, self.hub.models[served.fallback.teacher]
                result = await self._run_serial(answering, lambda: transcribe(answering), cancelled, deadline, request)
        self.metrics.audio_seconds.labels(answering.name).inc(duration)
        headers = _answer_headers(served, answering, escalated, confidence)
        info.update(answered_by=answering.name, escalated=escalated, confidence=confidence)
        if self.options.log_content:
            info["output"] = result.text
        self._record(info, 200, started)
        if response_format == "text":
            return PlainTextResponse(result.text, headers=headers)
        if response_format == "srt":
            return PlainTextResponse(result.to_srt(), headers=headers)
        if response_format == "vtt":
            return PlainTextResponse(result.to_vtt(), headers=headers, media_type="text/vtt")
        if response_format == "json":
            return JSONResponse({"text": result.text}, headers=headers)
        segments = [{"id": i, "seek": int(s.start * 100), "start": s.start, "end": s.end, "text": s.text, "tokens": [],
                     "temperature": s.temperature, "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
                     "no_speech_prob": s.no_speech_prob} for i, s in enumerate(result.segments)]
        body = {"task": task, "language": result.language, "duration": result.duration, "text": result.text,
                "segments": segments, "model": answering.name}
        if words:
            body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end, "probability": w.probability}
                             for w in result.words]
        return JSONResponse(body, headers=headers)

    async def _run_serial(self, served: Served, function, cancelled: threading.Event, deadline: float, request):
        task = asyncio.ensure_future(served.worker.run(function, cancelled))
        try:
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise TimeoutError()
                done, _ = await asyncio.wait({task}, timeout=min(remaining, 0.5))
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise Cancelled()
        except QueueFullError as e:
            raise APIError(429, str(e), "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(self._retry_after(served))}) from None
        except BaseException:
            cancelled.set()
            raise

    # ------------------------------------------------------------------ images
    async def image_generations(self, request):
        started = time.perf_counter()
        body = await _json_body(request)
        served = self.hub.get(body.get("model"), IMAGE)
        gen = served.runtime
        n = _number(body, "n", 1, low=1, integer=True)
        if n > self.options.max_images:
            raise APIError(400, f"'n' is {n} but this server generates at most {self.options.max_images} images per "
                                "request (edge-sdk serve --max-images)", param="n")
        response_format = body.get("response_format") or "b64_json"
        if response_format != "b64_json":
            raise APIError(400, "'response_format' must be b64_json (this server keeps no files to link to)",
                           param="response_format")
        size = body.get("size")
        height, width = gen.noise_shape(1)[2:]
        if size not in (None, "auto", f"{width}x{height}"):
            raise APIError(400, f"'size' must be {width}x{height}, the model's only size; got {size!r}", param="size")
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string", param="prompt")
        try:
            options = gen.options(num_images=n, steps=_number(body, "steps", None, low=1, integer=True),
                                  seed=_number(body, "seed", None, low=0, integer=True), scheduler=body.get("scheduler"))
        except EdgeSDKError as e:
            raise APIError(400, str(e)) from None
        cancelled = threading.Event()

        def progress(done, total):
            if cancelled.is_set():
                raise Cancelled()

        def sample():
            try:
                result = gen.generate(options, progress=progress)
            except EdgeSDKError as e:
                raise APIError(400, str(e)) from None
            return result, [{"b64_json": _png_base64(image)} for image in result.images]  # encoded here, off the loop

        result, data = await self._run_serial(served, sample, cancelled, started + self.options.request_timeout, request)
        self.metrics.images.labels(served.name).inc(n)
        info = {"model": served.name, "endpoint": "images", "images": n, "steps": result.stats.steps,
                "unconditional": True}
        self._record(info, 200, started)
        return JSONResponse({"created": int(time.time()), "data": data}, headers={"x-edge-sdk-model": served.name})

    # ------------------------------------------------------------------ bookkeeping
    def _record(self, info: dict, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        model, endpoint = info.get("model", ""), info.get("endpoint", "")
        self.metrics.requests.labels(model, endpoint, str(status)).inc()
        self.metrics.duration.labels(model, endpoint).observe(seconds)
        if status == 200 and model:
            previous = self._durations.get(model)
            self._durations[model] = seconds if previous is None else 0.8 * previous + 0.2 * seconds
        access_log.info(json.dumps({"time": round(time.time(), 3), **info, "status": status,
                                    "duration_s": round(seconds, 4)}, ensure_ascii=False, default=str))



class _Pending:
    """A submitted text request seen from the event loop: its events arrive through a queue."""

    def __init__(self, loop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.request = None
        self._buffer: list = []  # events taken by wait() and not yet streamed
        self._checked = time.perf_counter()  # when wait() last asked whether the client is still there

    def on_event(self, request, piece, entries, finished):  # engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (piece, entries, finished))

    async def wait(self, tokens: int | None, deadline: float, request) -> None:
        """Until the request is done, or (``tokens``) has at least that many tokens; keeps the events.
        A timeout, a client that left or a cancelled handler cancels the request."""
        try:
            await self._wait(tokens, deadline, request)
        except BaseException:
            self.request.cancel()
            raise

    async def _wait(self, tokens: int | None, deadline: float, request) -> None:
        while True:
            if self._buffer and self._buffer[-1][2]:
                return
            if tokens is not None and len(self.request.token_ids) >= tokens:
                return
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError()
            try:
                self._buffer.append(await asyncio.wait_for(self.queue.get(), timeout=min(remaining, 0.5)))
            except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
                pass
            if time.perf_counter() - self._checked >= 0.5:  # a client that left stops its generation
                self._checked = time.perf_counter()
                if await request.is_disconnected():
                    raise Cancelled()

    async def events(self, deadline: float):
        while self._buffer:
            event = self._buffer.pop(0)
            yield event
            if event[2]:
                return
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError()
            try:
                event = await asyncio.wait_for(self.queue.get(), timeout=remaining)
            except asyncio.TimeoutError:  # the built-in TimeoutError from Python 3.11 on, not before
                raise TimeoutError() from None
            yield event
            if event[2]:
                return


class _Stream(StreamingResponse):
    """Server-sent events whose generator is closed however the response ends (a client that left
    included), and ``on_close`` called, so the request it streams is cancelled and logged at once."""

    on_close = None  # called however the response ends, even before the body started

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            if self.on_close is not None:
                self.on_close()


def _encoder(function, param: str):
    def encode(lm):
        try:
            return function(lm)
        except EdgeSDKError as e:
            code = "context_length_exceeded" if "context" in str(e) else None
            raise APIError(400, str(e), param=param, code=code) from None

    return encode


def _answer_headers(served: Served, answering: Served, escalated: bool, confidence: float | None) -> dict:
    """The model that answered, and for a cascade's student why (escalated, its confidence)."""
    headers = {"x-edge-sdk-model": answering.name}
    if served.fallback is not None:
        headers.update({"x-edge-sdk-escalated": "true" if escalated else "false", "x-edge-sdk-confidence": f"{confidence:.6g}"})
    return headers


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"  # OpenAI's two (eos and stop strings are both "stop")


def _usage(req) -> dict:
    return {"prompt_tokens": len(req.prompt_ids), "completion_tokens": len(req.token_ids),
            "total_tokens": len(req.prompt_ids) + len(req.token_ids)}


def _token_text(lm, token: int) -> str:
    return lm.tokenizer.decode([token])


def _completion_logprobs(lm, entries, offset: int) -> dict:
    tokens, logprobs, tops, offsets = [], [], [], []
    for token, logprob, top in entries:
        text = _token_text(lm, token)
        tokens.append(text)
        logprobs.append(logprob)
        tops.append({_token_text(lm, t): lp for t, lp in top} if top else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(lm, entries) -> dict:
    def entry(token, logprob):
        text = _token_text(lm, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in top]}
                        for token, logprob, top in entries]}


def _text_body(served: Served, req, params: TextParams, chat: bool) -> dict:
    entries = list(zip(req.token_ids, req.logprobs, req.top)) if params.logprobs else []
    reason = _finish_reason(req.finish_reason)
    if req.error is not None:
        raise _internal_error()
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": req.text},
                  "logprobs": _chat_logprobs(served.runtime, entries) if params.logprobs else None, "finish_reason": reason}
        ident, obj = "chatcmpl-" + uuid.uuid4().hex, "chat.completion"
    else:
        choice = {"text": req.text, "index": 0,
                  "logprobs": _completion_logprobs(served.runtime, entries, 0) if params.logprobs else None,
                  "finish_reason": reason}
        ident, obj = "cmpl-" + uuid.uuid4().hex, "text_completion"
    return {"id": ident, "object": obj, "created": int(time.time()), "model": served.name, "choices": [choice],
            "usage": _usage(req)}


def _internal_error() -> APIError:
    return APIError(500, "the model failed on this request; the server logged the error", "server_error")


def _timeout_error(seconds: float) -> APIError:
    return APIError(408, f"the request took longer than {seconds:g} s (edge-sdk serve --request-timeout)",
                    "timeout_error", code="request_timeout")


async def _json_body(request) -> dict:
    raw = await request.body()
    if not raw:
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def _form_text(form, key: str) -> str | None:
    value = form.get(key)
    if value is None or isinstance(value, str):
        return value
    raise APIError(400, f"'{key}' must be a text field", param=key)


def _form_number(form, key: str, low: float, high: float) -> float | None:
    """A number sent as a form field (multipart bodies carry text), or None when absent or empty."""
    text = _form_text(form, key)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise APIError(400, f"'{key}' must be a number, got {text!r}", param=key) from None
    if not low <= value <= high:
        raise APIError(400, f"'{key}' must be in [{low}, {high}], got {text}", param=key)
    return value


def _decode_audio(data: bytes, filename: str | None) -> tuple[np.ndarray, int]:
    """Samples and rate of an uploaded file (what libsndfile reads: WAV, FLAC, OGG, MP3)."""
    soundfile = optional_import("soundfile", "audio", "transcribing uploaded audio")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:
        raise APIError(400, f"the uploaded file{' ' + repr(filename) if filename else ''} is not audio this server can "
                            "decode; send WAV, FLAC, OGG or MP3", param="file", code="invalid_audio") from None
    if samples.size == 0:
        raise APIError(400, "the uploaded audio has no samples", param="file", code="invalid_audio")
    if not np.all(np.isfinite(samples)):
        raise APIError(400, "the uploaded audio contains NaN or infinite samples", param="file", code="invalid_audio")
    return samples.mean(axis=1), int(rate)


def _png_base64(image: np.ndarray) -> str:
    Image = optional_import("PIL.Image", "image", "answering with PNG images")
    buffer = io.BytesIO()
    array = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _Guard:
    """ASGI middleware around every request: the API key, the body size limit, and errors as
    OpenAI's error object (never a traceback)."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server
        key = server.options.api_key
        self._key = key.encode("utf-8") if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope.get("path", "")
        endpoint = _ENDPOINTS.get(path, "other")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        response_started = False

        async def tracked_send(message):
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            if self._key is not None and path != "/health":
                supplied = headers.get("authorization", "").encode("latin-1")  # the header's own bytes back
                token = supplied[7:].strip() if supplied[:7].lower() == b"bearer " else b""
                if not hmac.compare_digest(token, self._key):
                    raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                                   "authentication_error", code="invalid_api_key")
            limit = self.server.options.max_body_bytes
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise _too_large(limit)
            received = 0

            async def limited_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _too_large(limit)
                return message

            await self.app(scope, limited_receive, tracked_send)
        except Exception as e:
            error = _as_api_error(e)
            if error.status >= 500:
                log.exception("request failed: %s %s", scope.get("method"), path)
            if response_started:
                return  # a stream already under way: nothing more can be said
            self.server._record({"model": "", "endpoint": endpoint, "error": error.message}, error.status, started)
            await _send_error(send, error)


_ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/audio/transcriptions": "transcriptions",
              "/v1/images/generations": "images", "/v1/models": "models", "/health": "health", "/metrics": "metrics"}


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes (edge-sdk serve --max-body-bytes)",
                    code="request_too_large")


def _as_api_error(e: BaseException) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return APIError(408, "the request took longer than the server allows (edge-sdk serve --request-timeout)",
                        "timeout_error", code="request_timeout")
    if isinstance(e, Cancelled):
        return APIError(499, "the client closed the request", code="client_closed_request")
    if isinstance(e, EdgeSDKError):
        return APIError(400, str(e))
    if isinstance(e, ClientDisconnect):
        return APIError(499, "the client closed the request", code="client_closed_request")
    return _internal_error()


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- running it
def parse_model_arguments(packages: list[str]) -> list[ModelSpec]:
    """``PATH`` or ``NAME=PATH`` -> specs (a name defaults to the directory's name)."""
    specs, names = [], set()
    for argument in packages:
        name, _, path = argument.rpartition("=") if "=" in argument and not os.path.exists(argument) else ("", "", argument)
        path = Path(path).expanduser()
        if not (path / "manifest.json").is_file():
            raise InvalidInputError(f"{path} is not an edge-sdk package (no manifest.json); export one with 'edge-sdk export'")
        name = name or path.resolve().name
        if name in names:
            raise InvalidInputError(f"two packages are served as '{name}'; name them: NAME=PATH")
        names.add(name)
        specs.append(ModelSpec(name, path))
    return specs


def serve(packages: list[str], options: ServeOptions | None = None, fallbacks: list[str] = (), threshold: float | None = None,
          announce: Callable[[str], None] | None = None) -> int:
    """Run the server until interrupted; returns the process's exit status (1 if loading failed).

    ``fallbacks``: ``STUDENT=TEACHER`` pairs, each a served model's name (or a package path; a
    teacher path not among ``packages`` is loaded too) with the shared ``threshold``. ``announce``
    gets one line once the arguments are valid, before the server starts listening.
    """
    import uvicorn

    options = options or ServeOptions()
    specs = parse_model_arguments(packages)
    pairs = {}
    for argument in fallbacks:
        if "=" not in argument:
            raise InvalidInputError(f"--fallback takes STUDENT=TEACHER (served names or package paths), got {argument!r}")
        student, teacher = argument.split("=", 1)
        student_name = _spec_name(specs, student)
        if student_name is None:
            raise InvalidInputError(f"--fallback {argument}: the student '{student}' is not one of the served packages "
                                    f"({', '.join(s.name for s in specs)})")
        teacher_name = _spec_name(specs, teacher)
        if teacher_name is None:
            specs += parse_model_arguments([teacher])
            teacher_name = specs[-1].name
        if threshold is None:
            raise InvalidInputError("--fallback needs --threshold (edge-sdk cascade calibrate measures one)")
        pairs[student_name] = (teacher_name, float(threshold))
    if threshold is not None and not pairs:
        raise InvalidInputError("--threshold applies to a --fallback STUDENT=TEACHER pair; give one")
    server = Server(specs, options, pairs)
    config = uvicorn.Config(server.app, host=options.host, port=options.port, log_level="warning", lifespan="on",
                            access_log=False, timeout_graceful_shutdown=5)
    runner = uvicorn.Server(config)

    def stop():
        runner.should_exit = True

    server.hub.on_failure = stop
    if announce is not None:
        announce(f"edge-sdk serve: loading {len(specs)} package(s), listening on http://{options.host}:{options.port} "
                 "(GET /health says when they are ready; Ctrl-C stops)")
    runner.run()
    if server.hub.error:
        raise InvalidInputError(f"the server stopped: {server.hub.error}")
    return 0


def _spec_name(specs: list[ModelSpec], value: str) -> str | None:
    for spec in specs:
        if value == spec.name:
            return spec.name
    for spec in specs:
        if os.path.exists(value) and Path(value).resolve() == spec.path.resolve():
            return spec.name
    return None
