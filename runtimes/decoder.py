"""A KV-cache decoder graph driven one call at a time: ``DecoderState`` owns one batch's cache.

Every decoder graph a package ships (a text model's, Whisper's) follows one contract:

    inputs   input_ids (batch, sequence) int64
             attention_mask (batch, past_sequence + sequence) int64, 0 on left padding   [if the graph has it]
             position_ids (batch, sequence) int64                                         [if the graph has it]
             past_key_values.{i}.key / .value (batch, heads, past_sequence, head_dim)
             any other input: the same value on every call (Whisper: cross.{i}.key / .value)
    outputs  logits (batch, sequence, vocab)
             present.{i}.key / .value (batch, heads, past_sequence + sequence, head_dim)

The same graph serves prefill (many tokens, empty cache) and decode (one token per row, growing
cache). A shared-cache graph (ONNX Runtime packages whose attention is GroupQueryAttention) takes
``seqlens_k`` (batch,) int32 and ``total_sequence_length`` () int32 instead of ``attention_mask``;
each cache input and its present output are one preallocated buffer (batch, heads, capacity,
head_dim) that the kernel writes in place, and rows are not padded on the left: each row's
tokens start at cache position 0 (``converters.ort_attention``). A stateful graph (OpenVINO
packages) has no cache inputs or outputs: the cache stays in the engine's request, and
``beam_idx`` (int32, one row index per row) says which kept row each row continues;
``DecoderState`` hides the differences. Names are read from the graph's description (the
manifest's graph entry, or an open session's inputs and outputs), never assumed per task. A graph
without position inputs places its tokens after its cache (Whisper); one without a mask takes
batches whose rows have one length.

A static-shape graph (NPU packages: every axis fixed at export, ``input_ids`` (batch, P) and the
cache (batch, heads, C, head_dim)) is driven as OpenVINO GenAI drives NPUs: each row keeps a cache
of C slots filled from slot 0; prompts go in chunks of P tokens, right-padded; the mask is 1 on the
filled slots and on the chunk's real tokens, positions count from the filled slots; the chunk's
new keys/values (``present`` positions C .. C + n) are copied into the next free slots. Decode
steps run a copy of the graph compiled at sequence 1 where the engine can reshape it
(``Session.variant``), else the chunk graph with one real token. Rows run one at a time through a
batch-1 graph, so a row's tokens never depend on the others'. The cache holds C tokens: prompt
and generated (``DecoderGraph.max_tokens``).
Whisper packages written before the one naming scheme call their cache inputs ``past.{i}.key``;
``LEGACY_PAST_PREFIX`` keeps them loading.

Example::

    graph = DecoderGraph.from_description(package.graph("decoder"), package.manifest["model"])
    with DecoderState(session, graph) as state:
        logits = state.prefill([[1, 15, 27]])[:, -1]
        for _ in range(8):
            logits = state.step(logits.argmax(-1))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edge_sdk.errors import InvalidInputError, PackageError
from edge_sdk.runtimes.backend import Session, describe_session

log = logging.getLogger(__name__)

IDS, MASK, POSITIONS, LOGITS = "input_ids", "attention_mask", "position_ids", "logits"
SEQLENS, TOTAL = "seqlens_k", "total_sequence_length"  # shared-cache graphs: cached tokens per row - 1, the longest row's
DEFAULT_CAPACITY_MARGIN = 256  # shared cache: tokens allocated beyond the prompt when the caller gives no capacity
BEAM = "beam_idx"  # stateful graphs: the row of the kept cache each row of this call continues
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
LEGACY_PAST_PREFIX = "past."  # Whisper decoders exported before the one naming scheme


@dataclass(frozen=True)
class CacheTensor:
    """One key or value cache of one layer: the input it is fed as, the output it comes back as."""

    past: str  # input name, e.g. past_key_values.3.value
    present: str  # output name, e.g. present.3.value
    heads: int
    head_dim: int
    dtype: np.dtype

    def empty(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.heads, 0, self.head_dim), self.dtype)


@dataclass(frozen=True)
class DecoderGraph:
    """What a decoder graph takes and returns, read once from its description."""

    cache: tuple[CacheTensor, ...]  # in the graph's input order
    fixed: tuple[str, ...]  # inputs given once and passed on every call (Whisper's cross-attention keys/values)
    has_mask: bool  # takes attention_mask (and so left-padded batches)
    has_positions: bool  # takes position_ids
    stateful: bool = False  # the cache lives in the engine's request (OpenVINO ReadValue/Assign), reordered by beam_idx
    shared_cache: bool = False  # past and present share one preallocated buffer (GroupQueryAttention), rows start at 0
    static: tuple[int, int, int] | None = None  # fixed (batch, tokens per call P, cache slots C): NPU packages

    @property
    def max_tokens(self) -> int | None:
        """Tokens a sequence may hold in all (prompt and generated) when the cache has a fixed size."""
        return self.static[2] if self.static else None

    @classmethod
    def from_description(cls, description: dict[str, Any], model: dict[str, Any] | None = None) -> "DecoderGraph":
        """From ``{"inputs": [{"name", "dtype", "shape"}...], "outputs": [...]}``: a manifest graph
        entry (``package.graph("decoder")``) or ``backend.describe_session(session)``.

        Cache shapes come from the description's static axes; ``model`` (the manifest's model
        section: ``num_kv_heads`` or ``num_heads``, and ``head_dim``) fills in axes it leaves dynamic.
        """
        inputs = {entry["name"]: entry for entry in description["inputs"]}
        outputs = {entry["name"] for entry in description["outputs"]}
        if IDS not in inputs or LOGITS not in outputs:
            raise PackageError(f"a decoder graph takes '{IDS}' and returns '{LOGITS}'; this one has inputs "
                               f"{', '.join(inputs)} and outputs {', '.join(sorted(outputs))}: re-export the package")
        cache, fixed = [], []
        if BEAM in inputs and not any(name.startswith((PAST_PREFIX, LEGACY_PAST_PREFIX)) for name in inputs):
            return cls((), tuple(n for n in inputs if n not in (IDS, MASK, POSITIONS, BEAM)), MASK in inputs,
                       POSITIONS in inputs, stateful=True)
        for name, entry in inputs.items():
            prefix = next((p for p in (PAST_PREFIX, LEGACY_PAST_PREFIX) if name.startswith(p)), None)
            if prefix is None:
                if name not in (IDS, MASK, POSITIONS):
                    fixed.append(name)
                continue
            present = PRESENT_PREFIX + name[len(prefix) :]
            if present not in outputs:
                raise PackageError(f"the decoder graph takes cache input '{name}' but returns no '{present}'; re-export the package")
            heads, head_dim = (_axis(entry, 1, model, ("num_kv_heads", "num_heads")), _axis(entry, 3, model, ("head_dim",)))
            cache.append(CacheTensor(name, present, heads, head_dim, _dtype(entry.get("dtype"))))
        if not cache:
            raise PackageError(f"the decoder graph has no '{PAST_PREFIX}*' cache inputs; re-export the package")
        static = _static_shape(inputs[IDS], inputs[cache[0].past])
        if static and not (MASK in inputs and POSITIONS in inputs):
            raise PackageError("this static-shape decoder takes no attention_mask / position_ids, so its fixed cache "
                               "cannot be masked; re-export the package with this edge-sdk")
        return cls(tuple(cache), tuple(f for f in fixed if f not in (SEQLENS, TOTAL)), MASK in inputs, POSITIONS in inputs,
                   shared_cache=SEQLENS in inputs and TOTAL in inputs, static=static)

    @classmethod
    def from_session(cls, session: Session, model: dict[str, Any] | None = None) -> "DecoderGraph":
        """From an open session: for graphs that have no manifest yet (an export's work graphs)."""
        return cls.from_description(describe_session(session), model)

    @property
    def past_names(self) -> list[str]:
        return [c.past for c in self.cache]

    @property
    def present_names(self) -> list[str]:
        return [c.present for c in self.cache]


def _static_shape(ids: dict, past: dict) -> tuple[int, int, int] | None:
    """(batch, tokens per call, cache slots) when both are fixed in the description, else None."""
    shape = list(ids.get("shape") or []) + list((past.get("shape") or [None] * 3)[2:3])
    if len(shape) == 3 and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        return tuple(shape)
    return None


def _dtype(name: str | None) -> np.dtype:
    try:
        return np.dtype(name or "float32")
    except TypeError:
        raise PackageError(f"decoder cache of element type {name!r} is not supported; re-export the package") from None


def _axis(entry: dict, index: int, model: dict | None, keys: tuple[str, ...]) -> int:
    """A cache axis: static in the description, else from the model section."""
    shape = entry.get("shape") or []
    if index < len(shape) and isinstance(shape[index], int) and not isinstance(shape[index], bool):
        return shape[index]
    for key in keys:
        if model and model.get(key) is not None:
            return int(model[key])
    raise PackageError(f"decoder input '{entry['name']}' has no static axis {index} and the manifest's model "
                       f"section has no {' or '.join(keys)}; re-export the package")


class DecoderState:
    """One batch moving through a decoder graph: its KV cache, attention mask and positions.

    ``fixed``: values of the graph's other inputs (``graph.fixed``), passed on every call.
    ``pad_id``: the token left padding is filled with. The cache stays inside the engine between
    calls where the engine allows it (``Session.run(keep=...)``). Use it as a context manager, or
    call ``close()`` in a ``finally``: it releases the cache.
    """

    def __init__(self, session: Session, graph: DecoderGraph | None = None, *,
                 fixed: dict[str, Any] | None = None, pad_id: int = 0):
        self.graph = graph or DecoderGraph.from_session(session)
        fixed = fixed or {}
        missing = [name for name in self.graph.fixed if name not in fixed]
        if missing:
            raise InvalidInputError(f"the decoder graph also takes {', '.join(missing)}; pass them as fixed=")
        self._session = session
        self._request = None  # stateful graphs: this state's own engine request, holding the cache
        self._beam: np.ndarray | None = None
        self._fixed = {name: fixed[name] for name in self.graph.fixed}
        self._keep = self.graph.present_names
        self._pad_id = int(pad_id)
        self.past: dict[str, Any] = {}
        self.mask: np.ndarray | None = None  # (batch, past + new) 1 on real tokens, 0 on left padding
        self._last_position: np.ndarray | None = None
        self._buffers: dict[str, np.ndarray] = {}  # shared-cache graphs: one (batch, heads, capacity, head_dim) buffer per cache tensor
        self._shared = None  # ... and the engine request bound to them
        self._lengths: np.ndarray | None = None  # ... and the tokens each row's cache holds
        self._vocab = 0  # ... and the logits' last axis, once seen
        self._filled: np.ndarray | None = None  # static graphs: the slots each row's fixed cache has filled
        self._step_session = None  # ... and the graph compiled at one token per call, if the engine can
        self.outputs: dict[str, np.ndarray] = {}  # the last call's other outputs (Whisper's cross_qk), dynamic graphs

    def __enter__(self) -> "DecoderState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def past_length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def prefill(self, prompts: Sequence[Sequence[int]] | np.ndarray, capacity: int | None = None) -> np.ndarray:
        """Start from an empty cache: run the prompts (token id rows; shorter rows are left-padded)
        and return the logits of every prompt position, (batch, longest prompt, vocab).

        ``capacity``: tokens the cache will hold in all (prompt and generated), where the graph keeps
        its cache in a preallocated buffer (shared-cache graphs); it grows if a generation outruns
        it. Other graphs ignore it."""
        rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
        if not rows or any(len(r) == 0 for r in rows):
            raise InvalidInputError("prefill needs at least one prompt, each of at least one token")
        batch, length = len(rows), max(len(r) for r in rows)
        if not (self.graph.has_mask or self.graph.shared_cache) and any(len(r) != length for r in rows):
            raise InvalidInputError("this decoder graph has no attention mask: the prompts of one batch must have one length")
        self.mask = np.zeros((batch, length), dtype=np.int64)
        for row, prompt in enumerate(rows):
            self.mask[row, length - len(prompt) :] = 1
        if self.graph.static:
            return self._prefill_static(rows, length)
        if self.graph.shared_cache:
            return self._prefill_shared(rows, length, capacity)
        ids = np.full((batch, length), self._pad_id, dtype=np.int64)
        for row, prompt in enumerate(rows):  # left padding: every row's last token is at the same index
            ids[row, length - len(prompt) :] = prompt
        positions = np.maximum(np.cumsum(self.mask, axis=1) - 1, 0)
        self._last_position = positions[:, -1:]
        self.past = {c.past: c.empty(batch) for c in self.graph.cache}
        if self.graph.stateful:
            if self._request is None:
                self._request = self._session.state_request()
            self._request.reset()
            self._beam = np.arange(batch, dtype=np.int32)
        return self._forward(ids, positions)

    def step(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Feed one token per row; return the next-token logits (batch, vocab)."""
        if self.mask is None:
            raise InvalidInputError("step() needs a prefill() first: the decoder has no prompt yet")
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        if len(tokens) != len(self.mask):
            raise InvalidInputError(f"step() takes one token per row: {len(self.mask)} rows, got {len(tokens)} tokens")
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
        self._last_position = self._last_position + 1
        if self.graph.static:
            return np.concatenate([self._run_static(row, tokens[row]) for row in range(len(tokens))])[:, -1, :]
        if self.graph.shared_cache:
            return self._run_shared(tokens, self._lengths[:, None], self._lengths + 1)[:, -1, :]
        return self._forward(tokens, self._last_position)[:, -1, :]

    def reorder(self, rows: Sequence[int] | np.ndarray) -> None:
        """Continue row ``rows[i]`` of the cache as row ``i`` from the next step on (beam search keeps
        and duplicates rows; a batch can drop finished ones). The number of rows may change."""
        if self.mask is None:
            raise InvalidInputError("reorder() needs a prefill() first")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0 or rows.min() < 0 or rows.max() >= len(self.mask):
            raise InvalidInputError(f"reorder() takes row indices in [0, {len(self.mask)}), got {rows.tolist()}")
        self.mask, self._last_position = self.mask[rows], self._last_position[rows]
        if self.graph.stateful:
            self._beam = self._beam[rows]  # applied inside the graph by the next call's Gather
        elif self.graph.static:
            self._filled = self._filled[rows]
            self._buffers = {name: buffer[rows] for name, buffer in self._buffers.items()}
        elif self.graph.shared_cache:
            self._lengths = self._lengths[rows]
            self._bind({name: buffer[rows] for name, buffer in self._buffers.items()})
        else:
            self.past = {name: _as_numpy(value)[rows] for name, value in self.past.items()}

    def close(self) -> None:
        """Release the cache (the state can be prefilled again afterwards)."""
        self.past, self.mask, self._last_position = {}, None, None
        self._buffers, self._shared, self._filled = {}, None, None
        if self._request is not None:
            self._request.reset()

    @property
    def capacity(self) -> int:
        """Shared-cache graphs: tokens each row's buffer holds now (0 before a prefill, and for other graphs)."""
        return next(iter(self._buffers.values())).shape[2] if self._buffers else 0

    def _forward(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        inputs = {IDS: ids}
        if self.graph.has_mask:
            inputs[MASK] = self.mask
        if self.graph.has_positions:
            inputs[POSITIONS] = positions
        if self.graph.stateful:
            outputs = self._request.run({**inputs, BEAM: self._beam, **self._fixed})
            self._beam = np.arange(len(ids), dtype=np.int32)  # rows continue themselves unless reorder() says otherwise
        else:
            outputs = self._session.run({**inputs, **self.past, **self._fixed}, keep=self._keep)
            self.past = {c.past: outputs[c.present] for c in self.graph.cache}
        self.outputs = {name: value for name, value in outputs.items() if name != LOGITS and name not in self._keep}
        return outputs[LOGITS]

    # ------------------------------------------------------------------ static-shape graphs
    def _prefill_static(self, rows: list[np.ndarray], length: int) -> np.ndarray:
        """Each row's prompt through the batch-1 graph in chunks, into its own fixed cache; logits in
        the left-padded layout (each row's last prompt token at index -1)."""
        _, _, slots = self.graph.static
        longest = max(len(r) for r in rows)
        if longest > slots:
            raise InvalidInputError(f"the prompt has {longest} tokens but this static-shape package's cache holds {slots}; "
                                    "shorten it, or export with a larger --static-cache-length")
        if self._step_session is None:  # compiled here, so that it never counts as decode time
            self._step_session = self._one_token_graph()
        self._buffers = {c.past: np.zeros((len(rows), c.heads, slots, c.head_dim), c.dtype) for c in self.graph.cache}
        self._filled = np.zeros(len(rows), dtype=np.int64)
        self._last_position = np.array([[len(r) - 1] for r in rows], dtype=np.int64)
        aligned = None
        for row, prompt in enumerate(rows):
            logits = self._run_static(row, prompt)
            if aligned is None:
                aligned = np.zeros((len(rows), length, logits.shape[-1]), logits.dtype)
            aligned[row, length - len(prompt) :] = logits
        return aligned

    def _run_static(self, row: int, ids: np.ndarray) -> np.ndarray:
        """Feed ``ids`` to row ``row`` (chunks of the graph's P tokens); return their logits (1, n, vocab)."""
        batch, chunk, slots = self.graph.static
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        filled = int(self._filled[row])
        if filled + len(ids) > slots:
            raise InvalidInputError(f"this static-shape package's cache holds {slots} tokens (prompt and generated); "
                                    "the sequence outgrew it: export with a larger --static-cache-length")
        out = []
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]
            n = len(piece)
            session, width = (self._step_session, 1) if n == 1 and self._step_session else (self._session, chunk)
            feed = np.full((batch, width), self._pad_id, dtype=np.int64)
            feed[0, :n] = piece
            mask = np.zeros((batch, slots + width), dtype=np.int64)
            mask[0, :filled] = 1
            mask[0, slots : slots + n] = 1
            positions = np.broadcast_to(filled + np.arange(width, dtype=np.int64), (batch, width))
            past = {name: np.ascontiguousarray(np.broadcast_to(buffer[row : row + 1], (batch,) + buffer.shape[1:]))
                    for name, buffer in self._buffers.items()}
            outputs = session.run({IDS: feed, MASK: mask, POSITIONS: positions, **past, **self._fixed})
            for c in self.graph.cache:
                self._buffers[c.past][row, :, filled : filled + n] = _as_numpy(outputs[c.present])[0, :, slots : slots + n]
            filled += n
            out.append(outputs[LOGITS][:1, :n])
        self._filled[row] = filled
        return np.concatenate(out, axis=1)

    def _one_token_graph(self):
        """The static graph compiled at one token per call (sequence 1, the same cache), where the
        engine can reshape it; else False: decode steps then run the chunk graph with one real token."""
        batch, chunk, slots = self.graph.static
        if chunk == 1 or not hasattr(self._session, "variant"):
            return False
        shapes = {IDS: [batch, 1], MASK: [batch, slots + 1], POSITIONS: [batch, 1]}
        for c in self.graph.cache:
            shapes[c.past] = [batch, c.heads, slots, c.head_dim]
        try:
            return self._session.variant(shapes)
        except PackageError as e:  # a device compiler that refuses the second shape: one graph does both
            log.warning("decode steps run the %d-token graph: %s", chunk, e)
            return False

    # ------------------------------------------------------------------ shared-cache graphs
    def _prefill_shared(self, rows: list[np.ndarray], length: int, capacity: int | None) -> np.ndarray:
        """Rows start at cache position 0 and are padded on the right; the logits come back in the
        left-padded layout every caller reads (each row's last prompt token at index -1; positions
        before a shorter row's prompt hold zeros)."""
        batch = len(rows)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.full((batch, length), self._pad_id, dtype=np.int64)
        for row, prompt in enumerate(rows):
            ids[row, : len(prompt)] = prompt
        positions = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length))
        self._last_position = (lengths - 1)[:, None]
        capacity = max(int(capacity) if capacity else length + DEFAULT_CAPACITY_MARGIN, length)
        self._bind({c.past: np.zeros((batch, c.heads, capacity, c.head_dim), c.dtype) for c in self.graph.cache})
        self._lengths = np.zeros(batch, dtype=np.int64)
        logits = self._run_shared(ids, positions, lengths)
        aligned = np.zeros_like(logits)
        for row, n in enumerate(lengths):
            aligned[row, length - n :] = logits[row, :n]
        return aligned

    def _run_shared(self, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One call; ``lengths``: tokens each row's cache holds after it."""
        if int(lengths.max()) > self.capacity:  # a generation outran the buffer: grow it (copy once, doubling)
            grown = max(int(lengths.max()), 2 * self.capacity)
            buffers = {}
            for name, old in self._buffers.items():
                buffers[name] = np.zeros(old.shape[:2] + (grown,) + old.shape[3:], old.dtype)
                buffers[name][:, :, : old.shape[2]] = old
            self._bind(buffers)
        out = None
        if ids.shape[1] == 1 and self._vocab:  # a decode step: logits straight into a new array of known shape
            out = {LOGITS: np.empty((len(ids), 1, self._vocab), np.float32)}
        outputs = self._shared.run({IDS: ids, POSITIONS: positions, SEQLENS: (lengths - 1).astype(np.int32),
                                    TOTAL: np.array(int(lengths.max()), dtype=np.int32), **self._fixed}, out)
        self._lengths = lengths
        self._vocab = outputs[LOGITS].shape[-1]
        return outputs[LOGITS]

    def _bind(self, buffers: dict[str, np.ndarray]) -> None:
        self._buffers = {name: np.ascontiguousarray(b) for name, b in buffers.items()}
        self._shared = self._session.shared_cache_request(
            {c.past: (c.present, self._buffers[c.past]) for c in self.graph.cache})


def _as_numpy(value) -> np.ndarray:
    """A cache value as numpy: engines may hand back their own values (``Session.run(keep=...)``)."""
    return value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else np.asarray(value)


def sequence_logits(session: Session, token_ids: Sequence[int], graph: DecoderGraph | None = None) -> np.ndarray:
    """Teacher-forced logits (len(token_ids), vocab) of one sequence: a single prefill."""
    with DecoderState(session, graph) as state:
        return state.prefill([token_ids])[0]
