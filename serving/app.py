"""The OpenAI-compatible server: the application, its routes and lifecycle, and ``serve()`` (Starlette on uvicorn).

Text, speech and image packages in one torch-free process, a student -> teacher cascade,
Prometheus metrics, limits and API keys. The endpoint families live in ``serving.text``,
``serving.speech`` and ``serving.images``; the served models in ``serving.hub``; request checks
and the API-key / body-size middleware in ``serving.validation``; errors in ``serving.errors``.

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
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_sdk.errors import InvalidInputError
from edge_sdk.serving import images, speech, text
from edge_sdk.serving.engine import QueueFullError
from edge_sdk.serving.errors import APIError, Cancelled, as_api_error, queue_full
from edge_sdk.serving.hub import TEXT, Hub, ModelSpec, ServeOptions, Served, parse_model_arguments
from edge_sdk.serving.metrics import Metrics
from edge_sdk.serving.validation import ENDPOINTS, Guard

__all__ = ["APIError", "ModelSpec", "ServeOptions", "Server", "parse_model_arguments", "serve"]

log = logging.getLogger("edge_sdk.serving")
access_log = logging.getLogger("edge_sdk.serving.access")


class Server:
    """The ASGI application and the state behind it (``Server(...).app``)."""

    def __init__(self, specs: list[ModelSpec], options: ServeOptions | None = None,
                 fallbacks: dict[str, tuple[str, float]] | None = None):
        self.options = options or ServeOptions()
        self.metrics = Metrics()
        self.hub = Hub(specs, fallbacks or {}, self.options)
        self._durations: dict[str, float] = {}  # recent request seconds per model, for Retry-After
        routes = [
            Route("/health", self._handler(self.health), methods=["GET"]),
            Route("/metrics", self._handler(self.metrics_endpoint), methods=["GET"]),
            Route("/v1/models", self._handler(self.list_models), methods=["GET"]),
            Route("/v1/models/{name:path}", self._handler(self.get_model), methods=["GET"]),
            Route("/v1/completions", self._endpoint(text.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._endpoint(text.chat_completions), methods=["POST"]),
            Route("/v1/audio/transcriptions", self._endpoint(speech.transcriptions), methods=["POST"]),
            Route("/v1/audio/translations", self._endpoint(speech.translations), methods=["POST"]),
            Route("/v1/images/generations", self._endpoint(images.image_generations), methods=["POST"]),
        ]
        self.starlette = Starlette(routes=routes, lifespan=self._lifespan,
                                   exception_handlers={404: self._not_found, 405: self._not_allowed})
        self.app = Guard(self.starlette, self.options, self.record)

    def _handler(self, function):
        """The endpoint ``function`` with every failure answered as OpenAI's error object (and
        counted and logged), never as a traceback."""
        async def handle(request):
            started = time.perf_counter()
            try:
                return await function(request)
            except Exception as e:
                error = as_api_error(e)
                if error.status >= 500:
                    log.exception("request failed: %s %s", request.method, request.url.path)
                info = {"model": "", "endpoint": ENDPOINTS.get(request.url.path, "other"), "error": error.message}
                self.record(info, error.status, started)
                return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

        return handle

    def _endpoint(self, function):
        """An endpoint family's ``function(server, request)`` as a route handler of this server."""
        return self._handler(lambda request: function(self, request))

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

    # ------------------------------------------------------------------ what the endpoints share
    def escalates(self, student: Served, confidence: float) -> bool:
        """Whether the student's answer goes to its teacher; counts the confidence and the escalation."""
        if math.isfinite(confidence):
            self.metrics.confidence.labels(student.name).observe(confidence)
        if confidence >= student.fallback.threshold:
            return False
        self.metrics.escalations.labels(student.name, student.fallback.teacher).inc()
        return True

    def retry_after(self, served: Served) -> int:
        """Seconds a client refused with 429 should wait: the model's recent request time per place in its queue."""
        seconds = self._durations.get(served.name, 1.0)
        running, queued = self._load_of(served)
        parallel = self.options.parallel if served.engine is not None else 1
        return max(1, math.ceil(seconds * (queued + 1) / parallel))

    async def run_serial(self, served: Served, function, cancelled: threading.Event, deadline: float, request):
        """``function()`` on ``served``'s worker thread (speech, images); ``cancelled`` is set when the
        client leaves or the deadline passes, which the work's progress callback turns into a stop."""
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
            raise queue_full(str(e), self.retry_after(served)) from None
        except BaseException:
            cancelled.set()
            raise

    def record(self, info: dict, status: int, started: float) -> None:
        """Count a finished request in the metrics and write its access-log line."""
        seconds = time.perf_counter() - started
        model, endpoint = info.get("model", ""), info.get("endpoint", "")
        self.metrics.requests.labels(model, endpoint, str(status)).inc()
        self.metrics.duration.labels(model, endpoint).observe(seconds)
        if status == 200 and model:
            previous = self._durations.get(model)
            self._durations[model] = seconds if previous is None else 0.8 * previous + 0.2 * seconds
        access_log.info(json.dumps({"time": round(time.time(), 3), **info, "status": status,
                                    "duration_s": round(seconds, 4)}, ensure_ascii=False, default=str))


# ---------------------------------------------------------------------- running it
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
