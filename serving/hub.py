"""The served models: the server's options, the packages, their loading, each model's executor and lookups by name.

Packages load on a background thread; each model gets an executor (a ``TextEngine`` for text, a
``SerialWorker`` for speech and images) and is looked up by name and kind."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge_sdk.errors import EdgeSDKError, InvalidInputError
from edge_sdk.serving.cascade import DEFAULT_STREAM_TOKENS, TEXT_MEASURES
from edge_sdk.serving.engine import DEFAULT_PARALLEL, QueueFullError, TextEngine
from edge_sdk.serving.errors import APIError, Cancelled

log = logging.getLogger("edge_sdk.serving")

TEXT, SPEECH, IMAGE = "text-generation", "automatic-speech-recognition", "unconditional-image-generation"
TEXT_TO_IMAGE = "text-to-image"
IMAGES = (IMAGE, TEXT_TO_IMAGE)  # what /v1/images/generations serves
KIND_OF_CLASS = {"TextGenerator": TEXT, "SpeechRecognizer": SPEECH, "ImageGenerator": IMAGE,
                 "TextToImageGenerator": TEXT_TO_IMAGE}


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
    max_pixels: int = 4 * 1024 * 1024  # text-to-image: width x height x n per request
    request_timeout: float = 600.0  # seconds a request may take in all (408 after it)
    log_content: bool = False  # put prompts and outputs in the request log lines
    cascade_tokens: int = DEFAULT_STREAM_TOKENS  # streamed cascade requests: the student's tokens that decide
    measure: str = "mean_logprob"  # the text cascade's confidence measure

    def __post_init__(self):
        for name in ("parallel", "max_tokens", "max_images", "max_pixels", "max_body_bytes", "cascade_tokens"):
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


def stop_when(cancelled: threading.Event) -> Callable[[float, float], None]:
    """A ``progress(done, total)`` callback that stops the work it is called from (raises
    ``Cancelled``) once ``cancelled`` is set: a client that left, or a request out of time."""

    def progress(done, total):
        if cancelled.is_set():
            raise Cancelled()

    return progress


class Hub:
    """The served models: loaded on a background thread, looked up by name and kind."""

    def __init__(self, specs: list[ModelSpec], fallbacks: dict[str, tuple[str, float]], options: ServeOptions):
        self.specs, self.fallbacks, self.options = specs, fallbacks, options
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
                if s.kind != t.kind or s.kind in IMAGES:
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

    def get(self, name: str | None, kind: str | tuple[str, ...]) -> Served:
        """The served model ``name`` (None: the only one of ``kind``), which must be of ``kind`` (or one of them)."""
        self.require_ready()
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        kind = " or ".join(kinds)
        if name is not None and not isinstance(name, str):
            raise APIError(400, "'model' must be a string", param="model")
        if name is None:
            of_kind = [m for m in self.models.values() if m.kind in kinds]
            if len(of_kind) == 1:
                return of_kind[0]
            raise APIError(400, f"'model' is required: this server has {len(of_kind)} {kind} models "
                                f"({', '.join(m.name for m in of_kind) or 'none'})", param="model")
        served = self.models.get(name)
        if served is None:
            raise APIError(404, f"The model '{name}' does not exist; this server has: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        if served.kind not in kinds:
            raise APIError(400, f"the model '{name}' is a {served.kind} model; this endpoint serves {kind} models",
                           param="model")
        return served

    def stop(self) -> None:
        for served in self.models.values():
            if served.engine is not None:
                served.engine.stop()
            if served.worker is not None:
                served.worker.shutdown()


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


def answer_headers(served: Served, answering: Served, escalated: bool, confidence: float | None) -> dict:
    """The model that answered, and for a cascade's student why (escalated, its confidence)."""
    headers = {"x-edge-sdk-model": answering.name}
    if served.fallback is not None:
        headers.update({"x-edge-sdk-escalated": "true" if escalated else "false", "x-edge-sdk-confidence": f"{confidence:.6g}"})
    return headers
