"""Text generation from a decoder graph with an explicit KV cache. numpy and the engine only.

The decoder graph (written by ``edge_sdk.converters.causal_lm``) follows ``decoder``'s contract
with an attention mask and positions, so prompts of different lengths run as one left-padded
batch; ``DecoderState`` drives it, this module chooses tokens and turns them into text.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.package import Package
from edge_sdk.runtimes.backend import open_session
from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState, sequence_logits
from edge_sdk.runtimes.options import with_overrides
from edge_sdk.runtimes.chat import ChatTemplate
from edge_sdk.runtimes.sampling import penalize_repetition, select_next_tokens
from edge_sdk.runtimes.tokenizer import StreamDecoder, TextTokenizer


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate; validated on construction. Unset fields come from the package's defaults."""

    max_new_tokens: int = 128  # generate at most this many tokens (fewer at EOS, a stop string or the context end)
    temperature: float = 0.0  # 0 is greedy (argmax); > 0 samples from softmax(logits / temperature)
    top_k: int = 0  # sample among the k most likely tokens only; 0 disables
    top_p: float = 1.0  # sample within the smallest set of tokens whose probability reaches top_p; 1 disables
    seed: int | None = None  # seed of the sampling RNG; None draws fresh entropy
    stop: tuple[str, ...] = ()  # strings that end generation; the text is cut before the first one
    ignore_eos: bool = False  # keep generating past end-of-sequence tokens (benchmarks want fixed lengths)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output (CTRL's rule); 1 disables

    def __post_init__(self):
        def bad(message: str):
            raise InvalidInputError(message)

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            bad(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            bad(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not isinstance(self.temperature, (int, float)) or not np.isfinite(self.temperature) or self.temperature < 0:
            bad(f"temperature must be a finite number >= 0 (0 is greedy), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            bad(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")
        if (isinstance(self.repetition_penalty, bool) or not isinstance(self.repetition_penalty, (int, float))
                or not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0):
            bad(f"repetition_penalty must be a number > 0 (1 disables it), got {self.repetition_penalty!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            bad(f"seed must be a non-negative integer or None, got {self.seed!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad(f"stop strings must be non-empty strings, got {self.stop!r}")


@dataclass(frozen=True)
class GenerationStats:
    """Where the time went, for one generate() call (shared by all rows of a batch)."""

    prompt_tokens: int  # prompt tokens of the longest row (the prefill length)
    generated_tokens: int  # decode steps run (the longest row)
    first_token_seconds: float  # from the call to the first sampled token (prefill + sampling)
    decode_tokens_per_second: float  # decode steps after the first token, per second
    total_seconds: float


@dataclass(frozen=True)
class GenerationResult:
    """One prompt's continuation. ``token_ids`` includes a final EOS token if one was generated."""

    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str  # "eos", "stop" (a stop string) or "length" (max_new_tokens or the context end)
    stats: GenerationStats = field(repr=False)


class _Row:
    """One prompt's generated tokens and text, with stop strings and their hold-back for streaming."""

    def __init__(self, tokenizer: TextTokenizer, stop: tuple[str, ...]):
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self._decoder = StreamDecoder(tokenizer)
        self._stop = stop
        self._released = 0  # characters of self.text already handed out

    def add(self, token: int, is_eos: bool) -> str:
        """Append a token; return the text that became final (safe to stream)."""
        self.token_ids.append(int(token))
        self.text += self._decoder.push(token)
        if is_eos:
            return self.finish("eos")
        if self._cut_at_stop():
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def finish(self, reason: str) -> str:
        self.text += self._decoder.flush()
        if not self._cut_at_stop():
            self.finish_reason = reason
        return self._release(len(self.text))

    def _cut_at_stop(self) -> bool:
        found = [i for i in (self.text.find(s) for s in self._stop) if i >= 0]
        if not found:
            return False
        self.text = self.text[: min(found)]
        self.finish_reason = "stop"
        return True

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still become a stop string."""
        longest = 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _release(self, upto: int) -> str:
        upto = max(upto, self._released)
        piece, self._released = self.text[self._released : upto], upto
        return piece


class TextGenerator:
    """Generates text from a ``text-generation`` package.

    Example::

        import edge_sdk
        lm = edge_sdk.load("out/smollm")
        print(lm.generate("The capital of France is", max_new_tokens=16).text)
        for piece in lm.stream("Once upon a time", temperature=0.8, seed=1):
            print(piece, end="", flush=True)
        print(lm.chat([{"role": "user", "content": "What is an NPU?"}]).text)   # instruction-tuned models

    Options (keyword arguments of ``generate``/``stream``/``chat``, or one ``GenerationOptions``):
    ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_k``, ``top_p``, ``repetition_penalty``,
    ``seed``, ``stop``, ``ignore_eos``; unset ones come from the model's generation_config.json.
    ``eos_token_ids`` (from the package) end a row unless ``ignore_eos``; ``last_stats`` holds the
    timings of the last call. ``chat(messages)`` / ``stream_chat`` render a conversation with the
    package's chat template first.
    """

    def __init__(self, package: Package, threads: int | None = None):
        manifest = package.manifest
        self.package = package
        self._model = manifest["model"]
        generation = manifest["generation"]
        self._session = open_session(
            package.runtime, package.graph_path("decoder"), threads, manifest["runtime"].get("min_version")
        )
        self._graph = DecoderGraph.from_description(package.graph("decoder"), self._model)
        self.tokenizer = TextTokenizer.from_file(package.path(manifest["tokenizer"]["path"]))
        self.eos_token_ids: tuple[int, ...] = tuple(int(t) for t in generation.get("eos_token_ids") or ())
        pad = generation.get("pad_token_id")
        self._pad_id = int(pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0))
        self._max_positions = self._model.get("max_positions")
        if self._graph.max_tokens:  # a static-shape (NPU) package: its fixed cache is the context
            self._max_positions = min(self._max_positions or self._graph.max_tokens, self._graph.max_tokens)
        known = {f.name for f in dataclasses.fields(GenerationOptions)}
        self.defaults = GenerationOptions(**{k: v for k, v in generation.get("defaults", {}).items() if k in known})
        self.last_stats: GenerationStats | None = None  # timings of the last generate()/stream()
        self._chat_template: ChatTemplate | None = None

    @property
    def context_length(self) -> int | None:
        """The longest sequence (prompt + generated tokens) the model takes, if it has a limit."""
        return self._max_positions

    @property
    def chat_template(self) -> ChatTemplate:
        """The package's chat template (compiled on first use), or a clear error when it has none."""
        if self._chat_template is None:
            section = self.package.manifest["tokenizer"]
            if not section.get("chat_template"):
                raise InvalidInputError(
                    "this package has no chat template (the model's tokenizer came without one), so it cannot chat; "
                    "use generate() / 'edge-sdk generate' for plain completion, or export an instruction-tuned model")
            source = self.package.path(section["chat_template"]).read_text(encoding="utf-8")
            self._chat_template = ChatTemplate(source, section.get("special_tokens"))
        return self._chat_template

    def chat_prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True, **template_kwargs) -> str:
        """The prompt text the chat template renders for ``messages`` (what ``chat()`` tokenizes)."""
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **template_kwargs)

    def chat(self, messages: Sequence[dict], options: GenerationOptions | None = None, *,
             template_kwargs: dict | None = None, **overrides) -> GenerationResult:
        """The assistant's reply to ``messages`` ([{"role": "user", "content": "Hi"}, ...]), rendered
        with the package's chat template as transformers' ``apply_chat_template`` renders it.

        Example::

            reply = lm.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}])
            print(reply.text)
        """
        opts = self.options(options, **overrides)
        return self._complete([self._chat_ids(messages, template_kwargs)], opts)[0]

    def stream_chat(self, messages: Sequence[dict], options: GenerationOptions | None = None, *,
                    template_kwargs: dict | None = None, **overrides) -> Iterator[str]:
        """``chat()``, streamed: yield the reply's text pieces as they are generated."""
        opts = self.options(options, **overrides)
        yield from self._stream(self._chat_ids(messages, template_kwargs), opts)

    def fit_chat(self, messages: Sequence[dict], max_new_tokens: int, **template_kwargs) -> list[dict]:
        """``messages`` without their oldest turns until the rendered prompt plus ``max_new_tokens``
        fits the context; system messages at the start and the last message are always kept."""
        messages = list(messages)
        if not self._max_positions:
            return messages
        system = 0
        while system < len(messages) and messages[system].get("role") in ("system", "developer"):
            system += 1
        while True:
            prompt = self.tokenizer.encode(self.chat_prompt(messages, **template_kwargs), add_special_tokens=False)
            if len(prompt) + max_new_tokens <= self._max_positions or len(messages) <= system + 1:
                return messages
            drop = system + 1  # the oldest turn and the replies that follow it, up to the next user message
            while drop < len(messages) - 1 and messages[drop].get("role") != "user":
                drop += 1
            messages = messages[:system] + messages[drop:]

    def _chat_ids(self, messages: Sequence[dict], template_kwargs: dict | None) -> list[int]:
        prompt = self.chat_prompt(messages, **(template_kwargs or {}))
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)  # the template wrote BOS and the like itself
        return self._check_length(ids, "the chat")

    def options(self, options: GenerationOptions | None = None, **overrides) -> GenerationOptions:
        """The package defaults (or ``options``) with ``overrides`` applied and validated."""
        return with_overrides(options or self.defaults, overrides, "generation")

    def generate(
        self, prompt: str | Sequence[str], options: GenerationOptions | None = None, **overrides
    ) -> GenerationResult | list[GenerationResult]:
        """Continue ``prompt``; a list of prompts runs as one left-padded batch and returns a list."""
        opts = self.options(options, **overrides)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise InvalidInputError("no prompts given; pass a string or a non-empty list of strings")
        results = self._complete([self._encode(p) for p in prompts], opts)
        return results[0] if isinstance(prompt, str) else results

    def stream(self, prompt: str, options: GenerationOptions | None = None, **overrides) -> Iterator[str]:
        """Yield text pieces as they are generated; joined, they equal ``generate(prompt).text``.

        After the stream ends, ``last_stats`` holds its timings.
        """
        opts = self.options(options, **overrides)
        if not isinstance(prompt, str):
            raise InvalidInputError("stream() takes one prompt string; use generate() for a batch")
        yield from self._stream(self._encode(prompt), opts)

    def _complete(self, encoded: list[list[int]], opts: GenerationOptions) -> list[GenerationResult]:
        """Generate for every row of ``encoded`` (token ids) to the end; one result per row."""
        rows = [_Row(self.tokenizer, opts.stop) for _ in encoded]
        for _ in self._decode(encoded, rows, opts):
            pass
        return [GenerationResult(row.text, row.token_ids, ids, row.finish_reason, self.last_stats)
                for row, ids in zip(rows, encoded)]

    def _stream(self, ids: list[int], opts: GenerationOptions) -> Iterator[str]:
        """The text pieces of one row's generation, as they become final."""
        for (piece,) in self._decode([ids], [_Row(self.tokenizer, opts.stop)], opts):
            if piece:
                yield piece

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """Logits (len(token_ids), vocab) for every position of ``token_ids`` (for scoring and evaluation)."""
        if len(token_ids) == 0:
            raise InvalidInputError("no token ids to score")
        return sequence_logits(self._session, token_ids, self._graph)

    def decoder(self) -> DecoderState:
        """A fresh ``DecoderState`` on this package's decoder (prefill / step / close), for scoring,
        evaluation and step-by-step checks; use it in a ``with`` block."""
        return DecoderState(self._session, self._graph, pad_id=self._pad_id)

    def _decode(self, encoded: list[list[int]], rows: list[_Row], opts: GenerationOptions) -> Iterator[list[str]]:
        """Prefill, then one decode step per token; after each step yield the text each row released."""
        budget = opts.max_new_tokens
        longest = max(len(ids) for ids in encoded)
        if self._max_positions:
            budget = min(budget, self._max_positions - longest)
        rng = np.random.default_rng(opts.seed)
        start = time.perf_counter()
        first_token = start
        steps = 0
        eos = np.array(self.eos_token_ids, dtype=np.int64)
        seen = None
        state = self.decoder()
        try:
            logits = state.prefill(encoded, capacity=longest + budget)[:, -1, :]
            if opts.repetition_penalty != 1.0:  # tokens of each row's prompt (not its padding) and output
                seen = np.zeros(logits.shape, dtype=bool)
                for row, ids in enumerate(encoded):
                    seen[row, np.asarray(ids, dtype=np.int64)] = True
            while True:
                if seen is not None:
                    logits = penalize_repetition(logits, seen, opts.repetition_penalty)
                tokens = select_next_tokens(logits, opts.temperature, opts.top_k, opts.top_p, rng)
                if seen is not None:
                    seen[np.arange(len(tokens)), tokens] = True
                steps += 1
                if steps == 1:
                    first_token = time.perf_counter()
                is_eos = np.isin(tokens, eos) & (not opts.ignore_eos)
                pieces = ["" if row.finish_reason else row.add(t, e) for row, t, e in zip(rows, tokens, is_eos)]
                if steps == budget or all(row.finish_reason for row in rows):
                    break
                yield pieces
                finished = np.array([row.finish_reason is not None for row in rows])
                logits = state.step(np.where(finished, self._pad_id, tokens))
            yield [piece + (row.finish("length") if row.finish_reason is None else "") for piece, row in zip(pieces, rows)]
        finally:
            state.close()
            end = time.perf_counter()
            decode_seconds = end - first_token
            self.last_stats = GenerationStats(
                prompt_tokens=longest,
                generated_tokens=steps,
                first_token_seconds=first_token - start,
                decode_tokens_per_second=(steps - 1) / decode_seconds if steps > 1 and decode_seconds > 0 else 0.0,
                total_seconds=end - start,
            )

    def _encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise InvalidInputError(f"a prompt must be a string, got {type(prompt).__name__}")
        if not prompt:
            raise InvalidInputError("the prompt is empty; give some text for the model to continue")
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise InvalidInputError(f"the prompt {prompt!r} encodes to no tokens; give some text to continue")
        return self._check_length(ids, "the prompt")

    def _check_length(self, ids: list[int], what: str) -> list[int]:
        if self._max_positions and len(ids) >= self._max_positions:
            raise InvalidInputError(
                f"{what} has {len(ids)} tokens but the model's context is {self._max_positions}; shorten it"
            )
        return ids
