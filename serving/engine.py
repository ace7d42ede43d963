"""Continuous batching of text generation: requests join and leave a running batch at decode-step
boundaries. numpy and the engine only.

The mechanism, per package (one worker thread drives it; ``TextEngine.step`` is one iteration):

* **Slots** (ONNX Runtime packages with a shared KV cache, i.e. GroupQueryAttention graphs): the
  cache is one preallocated buffer per cache tensor of ``parallel`` rows x ``context`` positions,
  as llama.cpp's server keeps one slot per parallel sequence. The running batch is rows
  ``[0, n)``, a leading slice of the buffer (contiguous, so it is bound to the engine without a
  copy). At each step the requests that arrived since the last one are prefilled together into
  free rows ``[n, n + m)`` (their own right-padded batch; each row's cache starts at position 0),
  their first tokens sampled, and then one decode step runs every row of ``[0, n + m)``: a new
  request waits at most one step, never for the batch to finish. A finished or cancelled row is
  freed at once: the last row's cache (only the positions it holds) moves into the hole, so the
  batch stays a leading slice.
* **Static batches** (every other decoder: OpenVINO's stateful graphs, explicit past/present):
  waiting requests start together when the batch is empty, and leave it as they finish
  (``DecoderState.reorder``); a request arriving mid-batch waits for the batch to drain. The cache
  of a stateful graph lives inside the engine's request, so a row cannot be inserted into it.

Each request samples with its own options and its own seeded generator, so a request's tokens do
not depend on what it is batched with (greedy rows give exactly ``TextGenerator.generate``'s tokens).
The scores a request asks for (log-probabilities of its tokens, the top alternatives, the entropy
of each step) come from the model's distribution before penalties and temperature, as OpenAI and
vLLM report them; the cascade reads its confidence from them.

Example (without a worker thread: the caller steps the engine)::

    engine = TextEngine(edge_sdk.load("out/smollm"), parallel=4)
    request = engine.submit(lm.tokenizer.encode("Hello"), lm.options(max_new_tokens=8), scores=True)
    while not request.done:
        engine.step()
    print(request.text, request.finish_reason, request.logprobs)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Sequence

import numpy as np

from edge_sdk.errors import EdgeSDKError, InvalidInputError
from edge_sdk.runtimes.decoder import IDS, LOGITS, POSITIONS, SEQLENS, TOTAL, DecoderState
from edge_sdk.runtimes.sampling import log_softmax, penalize_repetition, select_next_tokens
from edge_sdk.runtimes.text_generation import GenerationOptions, TextGenerator, _Row

DEFAULT_PARALLEL = 8  # rows of the running batch (llama-server's --parallel)
DEFAULT_CONTEXT = 4096  # tokens per row when the model's own context is longer (its KV cache is allocated up front)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs


class QueueFullError(EdgeSDKError):
    """The engine's waiting queue is full; try again later (the server answers 429)."""


class TextRequest:
    """One generation moving through a ``TextEngine``; read its fields once ``done`` is set.

    ``on_event(request, piece, entries, finished)`` (called from the engine's thread) gets the text
    that became final at a step, the scores of the tokens added at that step (when asked for), and
    whether the request ended.
    """

    def __init__(self, engine: "TextEngine", ids: list[int], options: GenerationOptions, budget: int, *,
                 scores: bool, top_logprobs: int, on_event: Callable | None):
        self.prompt_ids = list(ids)
        self.options = options
        self.budget = budget  # tokens it may generate (max_new_tokens, capped by the context)
        self.scores = scores or top_logprobs > 0
        self.top_logprobs = top_logprobs
        self.on_event = on_event
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []  # of each generated token, under the model's distribution
        self.entropies: list[float] = []  # of that distribution at each step (nats)
        self.top: list[list[tuple[int, float]]] = []  # the top_logprobs most likely (token, logprob) per step
        self.finish_reason: str | None = None  # "eos", "stop", "length", "cancelled" or "error"
        self.error: BaseException | None = None
        self.submitted = time.perf_counter()
        self.started: float | None = None  # admitted into the batch
        self.first_token: float | None = None
        self.finished: float | None = None
        self.cancelled = False
        self.done = threading.Event()
        self._row = _Row(engine.generator.tokenizer, options.stop)
        self._rng = np.random.default_rng(options.seed)
        self._seen: np.ndarray | None = None
        self._pending: int | None = None  # the last sampled token, fed at the next decode step

    @property
    def text(self) -> str:
        return self._row.text

    @property
    def queued_seconds(self) -> float:
        return (self.started or self.finished or time.perf_counter()) - self.submitted

    def cancel(self) -> None:
        """Stop generating; the engine frees the request's row at its next step."""
        self.cancelled = True


class TextEngine:
    """Batches the requests to one text package (see the module's description)."""

    def __init__(self, generator: TextGenerator, parallel: int = DEFAULT_PARALLEL, context: int | None = None,
                 max_queue: int = 64):
        if parallel < 1:
            raise InvalidInputError(f"parallel must be at least 1, got {parallel}")
        if max_queue < 0:
            raise InvalidInputError(f"max_queue must be >= 0, got {max_queue}")
        self.generator = generator
        self._graph = generator._graph
        self.slots = self._graph.shared_cache  # continuous batching; else static batches
        self.parallel = parallel
        limit = generator.context_length
        self.context = min(limit, context or DEFAULT_CONTEXT) if limit else (context or DEFAULT_CONTEXT)
        if self.context < 2:
            raise InvalidInputError(f"context must be at least 2 tokens, got {self.context}")
        self.max_queue = max_queue
        self._eos = np.array(generator.eos_token_ids, dtype=np.int64)
        self._pad = generator._pad_id
        self._waiting: deque[TextRequest] = deque()
        self._active: list[TextRequest] = []
        self._lock = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # slots: the pool, the tokens each row holds, the engine requests bound to leading slices of it
        self._pool: dict[str, np.ndarray] = {}
        self._lengths = np.zeros(parallel, dtype=np.int64)
        self._bound: dict[int, object] = {}  # rows -> the engine request bound to rows [0, rows) (decode steps)
        self._state: DecoderState | None = None  # static batches
        self.steps = 0  # decode steps run (for tests and metrics)

    # ------------------------------------------------------------------ requests
    def submit(self, ids: Sequence[int], options: GenerationOptions, *, scores: bool = False, top_logprobs: int = 0,
               on_event: Callable | None = None) -> TextRequest:
        """Queue a generation of ``options.max_new_tokens`` tokens after ``ids``; raise
        ``QueueFullError`` when every row is busy and ``max_queue`` requests already wait."""
        ids = [int(t) for t in ids]
        if not ids:
            raise InvalidInputError("the prompt encodes to no tokens; give some text to continue")
        if len(ids) >= self.context:
            raise InvalidInputError(f"the prompt has {len(ids)} tokens but the model's context is {self.context}; "
                                    "shorten it")
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidInputError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top_logprobs}")
        budget = min(options.max_new_tokens, self.context - len(ids))
        request = TextRequest(self, ids, options, budget, scores=scores, top_logprobs=top_logprobs, on_event=on_event)
        with self._lock:
            if len(self._waiting) >= self.max_queue and len(self._active) + len(self._waiting) >= self.parallel:
                raise QueueFullError(f"the server is busy: {len(self._active)} requests running and "
                                     f"{len(self._waiting)} waiting for this model; retry shortly")
            self._waiting.append(request)
            self._lock.notify()
        return request

    def generate(self, ids: Sequence[int], options: GenerationOptions, **kwargs) -> TextRequest:
        """Submit and wait until the request is done: stepping the engine here, or, when its worker
        thread runs (``start()``), waiting for that thread to."""
        request = self.submit(ids, options, **kwargs)
        if self._thread is not None:
            request.done.wait()
        while not request.done.is_set():
            self.step()
        if request.error is not None:
            raise request.error
        return request

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------------ the worker thread
    def start(self) -> None:
        """Run ``step`` on a background thread whenever there is work, until ``stop()``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edge-sdk-text-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for request in list(self._waiting) + self._active:
            self._finish(request, "cancelled")
        self._waiting.clear()
        self._active.clear()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._active:
                    self._lock.wait()
                if self._stopping:
                    return
            self.step()

    # ------------------------------------------------------------------ one iteration
    def step(self) -> None:
        """Admit what waits (where rows are free), then run one decode step of the whole batch."""
        try:
            self._drop_cancelled()
            admitted = self._admit()
            if admitted:
                self._prefill(admitted)
            self._drop_finished()
            if self._active:
                self._decode()
                self._drop_finished()
        except Exception as e:  # an engine failure ends the requests it touched, never the server
            self._fail(e)

    def _admit(self) -> list[TextRequest]:
        with self._lock:
            free = self.parallel - len(self._active)
            if not self.slots and self._active:
                free = 0  # static batches: new requests wait for the batch to drain
            admitted = []
            while self._waiting and len(admitted) < free:
                admitted.append(self._waiting.popleft())
        now = time.perf_counter()
        for request in admitted:
            request.started = now
        return admitted

    def _prefill(self, admitted: list[TextRequest]) -> None:
        try:
            if self.slots:
                logits = self._prefill_slots(len(self._active), admitted)
            else:
                self._state = self._state or DecoderState(self.generator._session, self._graph, pad_id=self._pad)
                longest = max(len(r.prompt_ids) for r in admitted)
                logits = self._state.prefill([r.prompt_ids for r in admitted],
                                             capacity=longest + max(r.budget for r in admitted))[:, -1, :]
        except Exception as e:  # (out of memory, ...) ends these requests; the running batch goes on
            for request in admitted:
                self._finish(request, "error", e)
            if not self.slots and self._state is not None:
                self._state.close()  # static batches prefill only into an empty batch
            return
        self._active.extend(admitted)
        for request, row in zip(admitted, logits):
            if request.options.repetition_penalty != 1.0:
                request._seen = np.zeros(row.shape[-1], dtype=bool)
                request._seen[np.asarray(request.prompt_ids)] = True
            self._choose(request, row)

    def _decode(self) -> None:
        tokens = np.array([r._pending for r in self._active], dtype=np.int64)
        if self.slots:
            n = len(self._active)
            lengths = self._lengths[:n]
            logits = self._run_slots(0, n, tokens[:, None], lengths[:, None], lengths + 1)[:, -1, :]
        else:
            logits = self._state.step(tokens)
        self.steps += 1
        for request, row in zip(self._active, logits):
            self._choose(request, row)

    def _choose(self, request: TextRequest, logits: np.ndarray) -> None:
        """Sample the request's next token from its row's logits and hand out what became final."""
        opts = request.options
        scores = logits
        if request._seen is not None:
            scores = penalize_repetition(logits[None], request._seen[None], opts.repetition_penalty)[0]
        token = int(select_next_tokens(scores[None], opts.temperature, opts.top_k, opts.top_p, request._rng)[0])
        if request._seen is not None:
            request._seen[token] = True
        entries = [(token, None, [])]
        if request.scores:
            logp = log_softmax(logits)
            request.logprobs.append(float(logp[token]))
            request.entropies.append(float(-(np.exp(logp) * np.where(np.isfinite(logp), logp, 0.0)).sum()))
            top = []
            if request.top_logprobs:
                best = np.argpartition(-logp, request.top_logprobs)[: request.top_logprobs]
                best = best[np.argsort(-logp[best])]
                top = [(int(t), float(logp[t])) for t in best]
            request.top.append(top)
            entries = [(token, request.logprobs[-1], top)]
        if request.first_token is None:
            request.first_token = time.perf_counter()
        is_eos = bool(np.isin(token, self._eos)) and not opts.ignore_eos
        piece = request._row.add(token, is_eos)
        request.token_ids = request._row.token_ids
        request._pending = self._pad if is_eos else token
        finished = request._row.finish_reason is not None
        if not finished and len(request.token_ids) >= request.budget:
            piece += request._row.finish("length")
            finished = True
        if finished:
            request.finish_reason = request._row.finish_reason
        self._emit(request, piece, entries, finished)

    def _emit(self, request: TextRequest, piece: str, entries: list, finished: bool) -> None:
        if finished:
            request.finished = time.perf_counter()
        if request.on_event is not None:
            try:
                request.on_event(request, piece, entries, finished)
            except Exception:  # a consumer that went away must not stop the batch
                request.cancelled = True
        if finished:
            request.done.set()

    def _finish(self, request: TextRequest, reason: str, error: BaseException | None = None) -> None:
        if request.done.is_set():
            return
        request.finish_reason, request.error = reason, error
        self._emit(request, "", [], True)

    # ------------------------------------------------------------------ leaving the batch
    def _drop_cancelled(self) -> None:
        with self._lock:
            for request in [r for r in self._waiting if r.cancelled]:
                self._waiting.remove(request)
                self._finish(request, "cancelled")

    def _drop_finished(self) -> None:
        gone = {i for i, r in enumerate(self._active) if r.done.is_set() or r.cancelled}
        if not gone:
            return
        for i in gone:
            self._finish(self._active[i], "cancelled")  # no-op for the finished ones
        keep = [i for i in range(len(self._active)) if i not in gone]
        if self.slots:
            order = self._compact(gone)
        else:
            order = keep
            if keep:
                self._state.reorder(keep)
            else:
                self._state.close()
        self._active = [self._active[i] for i in order]

    def _compact(self, gone: list[int]) -> list[int]:
        """Free rows ``gone``: the last live rows move into the holes; returns the new row order."""
        order = list(range(len(self._active)))
        for hole in sorted(gone, reverse=True):
            last = len(order) - 1
            if hole != last:
                length = int(self._lengths[last])
                for buffer in self._pool.values():
                    buffer[hole, :, :length] = buffer[last, :, :length]
                self._lengths[hole] = self._lengths[last]
                order[hole] = order[last]
            order.pop()
        return order

    def _fail(self, error: Exception) -> None:
        for request in self._active:
            self._finish(request, "error", error)
        self._active = []
        if self._state is not None:
            self._state.close()

    # ------------------------------------------------------------------ slots
    def _prefill_slots(self, first: int, admitted: list[TextRequest]) -> np.ndarray:
        """Prefill ``admitted`` into rows ``first...``; return each one's last-position logits."""
        if not self._pool:
            self._pool = {c.past: np.zeros((self.parallel, c.heads, self.context, c.head_dim), c.dtype) for c in self._graph.cache}
        lengths = np.array([len(r.prompt_ids) for r in admitted], dtype=np.int64)
        longest = int(lengths.max())
        ids = np.full((len(admitted), longest), self._pad, dtype=np.int64)
        for row, request in enumerate(admitted):
            ids[row, : lengths[row]] = request.prompt_ids
        positions = np.broadcast_to(np.arange(longest, dtype=np.int64), ids.shape)
        self._lengths[first : first + len(admitted)] = 0
        logits = self._run_slots(first, len(admitted), ids, positions, lengths)
        return logits[np.arange(len(admitted)), lengths - 1]

    def _run_slots(self, first: int, count: int, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One call over rows ``[first, first + count)``; ``lengths``: tokens each holds after it."""
        # decode steps (rows [0, n)) keep their binding; a prefill's is made for it and dropped with
        # its logits (a binding holds its last outputs: (rows, prompt, vocab) floats for a prefill)
        request = self._bound.get(count) if first == 0 and ids.shape[1] == 1 else None
        if request is None:
            request = self.generator._session.shared_cache_request(
                {c.past: (c.present, self._pool[c.past][first : first + count]) for c in self._graph.cache})
            if first == 0 and ids.shape[1] == 1:
                self._bound[count] = request
        outputs = request.run({IDS: ids, POSITIONS: positions, SEQLENS: (lengths - 1).astype(np.int32),
                               TOTAL: np.array(int(lengths.max()), dtype=np.int32)})
        self._lengths[first : first + count] = lengths
        return outputs[LOGITS]
