"""Whisper's decoding of one window: greedy, sampled or beam search over a ``DecoderState``, under Whisper's logit rules.

A ``WindowDecoder`` holds the decoder graph and the model's special tokens; ``decode(cross, prompt,
options, temperature, rng)`` turns one window's encoded cross-attention keys/values into its tokens
(a ``WindowDecoding``): beam search at temperature 0 (``beam_size`` beams as one batch, the cache
reordered per step; OpenAI's ``patience`` and ``length_penalty``), greedy at beam 1, else the best of
``best_of`` samples. Every step's scores pass Whisper's logit filters first: suppressed tokens,
blanks at the first step, and the timestamp rules.
"""

from __future__ import annotations

import zlib

import numpy as np

from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState
from edge_sdk.runtimes.sampling import log_softmax
from edge_sdk.runtimes.tokenizer import TextTokenizer
from edge_sdk.runtimes.transcription import TranscriptionOptions, WindowDecoding


class WindowDecoder:
    """Decodes 30-second windows of one Whisper package (see the module's docstring).

    ``decoding`` is the manifest's ``decoding`` section (special tokens, languages, suppressed
    tokens, time precision); ``one_window``: the graph takes one window's cross values for all its
    rows (batch axis 1), else (packages exported before) they are tiled per row."""

    def __init__(self, session, graph: DecoderGraph, decoding: dict, tokenizer: TextTokenizer, vocab_size: int | None,
                 one_window: bool):
        self.session, self.graph, self.decoding, self.tokenizer = session, graph, decoding, tokenizer
        self.one_window = one_window
        # ids past the model's vocabulary (a small model with Whisper's default lists) cannot be produced anyway
        vocab = int(vocab_size or np.iinfo(np.int64).max)
        self.suppress = np.array([t for t in decoding["suppress_tokens"] if t < vocab], dtype=np.int64)
        self.begin_suppress = np.array([t for t in decoding["begin_suppress_tokens"] if t < vocab], dtype=np.int64)
        self.max_initial = int(round(decoding["max_initial_timestamp"] / decoding["time_precision"]))

    def state(self, cross: dict, rows: int = 1) -> DecoderState:
        """A decoder state for ``rows`` rows over the window ``cross`` was encoded from (a context manager)."""
        return DecoderState(self.session, self.graph, fixed=self.cross_rows(cross, rows))

    def text_tokens(self, text: str | None) -> list[int]:
        """Text typed by the user as tokens: special tokens (all at or above end-of-text) dropped."""
        if not text or not text.strip():
            return []
        return [t for t in self.tokenizer.encode(" " + text.strip(), add_special_tokens=False) if t < self.decoding["eot"]]

    def previous(self, tokens: list[int]) -> list[int]:
        """``<|startofprev|>`` and the last of ``tokens`` (at most half the decoder's context, as
        OpenAI whisper keeps), or nothing without tokens or without that token in the vocabulary."""
        start = self.tokenizer.token_id("<|startofprev|>")
        if not tokens or start is None:
            return []
        positions = min(self.decoding["max_target_positions"], self.graph.max_tokens or np.iinfo(np.int64).max)
        keep = positions // 2 - 1
        return [start] + tokens[-keep:] if keep > 0 else []

    def sot_sequence(self, language: str, task: str, timestamps: bool) -> list[int]:
        """The start-of-transcript sequence: <|startoftranscript|>, then (multilingual models) the
        language and task tokens, then <|notimestamps|> when the window is decoded without timestamps."""
        d = self.decoding
        prompt = [d["sot"]]
        if d["multilingual"]:
            prompt += [d["languages"][language], d[task]]
        if not timestamps:
            prompt.append(d["no_timestamps"])
        return prompt

    def decode(self, cross, prompt: list[int], opts: TranscriptionOptions, temperature: float, rng) -> WindowDecoding:
        """One window at one temperature: beam search (temperature 0, beam_size > 1), greedy
        (temperature 0, beam 1), or the best of ``best_of`` samples."""
        d = self.decoding
        limit = min(d["max_target_positions"] // 2, d["max_target_positions"] - len(prompt))
        if self.graph.max_tokens:  # a static-shape (NPU) package: the prompt and every token fed back fit its cache
            limit = min(limit, self.graph.max_tokens - len(prompt))
        rows = opts.beam_size if temperature == 0 else opts.best_of
        with self.state(cross, rows) as state:
            logits = state.prefill([prompt] * rows)
            no_speech_prob = 0.0
            if d.get("no_speech") is not None:
                at_sot = log_softmax(logits[0, prompt.index(d["sot"])].astype(np.float64))
                no_speech_prob = float(np.exp(at_sot[d["no_speech"]]))
            if temperature == 0 and rows > 1:
                tokens, sum_logprob = self.beam_search(state, logits[:, -1], opts, limit)
            else:
                tokens, sum_logprob = self.sample(state, logits[:, -1], opts, limit, temperature, rng)
        text = self.tokenizer.decode([t for t in tokens if t < d["eot"]])
        return WindowDecoding(tokens, sum_logprob / (len(tokens) + 1), no_speech_prob, temperature, compression_ratio(text))

    def cross_rows(self, cross: dict, rows: int) -> dict:
        """The window's cross-attention values for ``rows`` decoder rows (a static graph runs its rows
        one at a time through batch 1)."""
        if rows == 1 or self.graph.static or self.one_window:
            return cross
        return {name: np.repeat(value, rows, axis=0) for name, value in cross.items()}

    def sample(self, state: DecoderState, last: np.ndarray, opts, limit: int, temperature: float, rng) -> tuple[list[int], float]:
        """Greedy (temperature 0) or sampled rows, one token each per step; the likeliest row by
        OpenAI's ranking. A row's log-probabilities are of the untempered distribution, as OpenAI's."""
        eot = self.decoding["eot"]
        rows = len(last)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        sums = np.zeros(rows)
        done = np.zeros(rows, dtype=bool)
        for _ in range(limit):
            chosen = np.full(rows, eot, dtype=np.int64)
            active = np.flatnonzero(~done)
            logprobs = self.logprobs(last[active], [tokens[row] for row in active], opts.timestamps)
            for row, row_logprobs in zip(active, logprobs):
                if temperature == 0:
                    token = int(np.argmax(row_logprobs))
                else:
                    p = np.exp(log_softmax(row_logprobs / temperature))
                    token = int(rng.choice(len(p), p=p / p.sum()))
                sums[row] += row_logprobs[token]
                chosen[row] = token
                if token == eot:
                    done[row] = True
                else:
                    tokens[row].append(token)
            if done.all():
                break
            last = state.step(chosen)
        return self.best(dict(zip(map(tuple, tokens), sums)), opts.length_penalty)

    def beam_search(self, state: DecoderState, last: np.ndarray, opts, limit: int) -> tuple[list[int], float]:
        """OpenAI whisper's beam search: each beam proposes its beam_size + 1 likeliest next tokens;
        the beam_size best unfinished candidates go on (the cache reordered to them), finished ones
        are kept until beam_size x patience exist; the winner by ``best``."""
        eot, size = self.decoding["eot"], opts.beam_size
        most = round(size * opts.patience)
        beams: list[list[int]] = [[] for _ in range(size)]
        sums = np.zeros(size)
        finished: dict[tuple, float] = {}
        for _ in range(limit):
            scores, sources = {}, {}
            logprobs = self.logprobs(last, beams, opts.timestamps)
            tops = np.argpartition(-logprobs, size, axis=-1)[:, : size + 1]
            for i, (prefix, top) in enumerate(zip(beams, tops)):
                for token in top[np.argsort(-logprobs[i, top], kind="stable")]:
                    sequence = tuple(prefix) + (int(token),)
                    scores[sequence], sources[sequence] = sums[i] + logprobs[i, token], i
            kept, kept_sums, rows, ended = [], [], [], {}
            for sequence in sorted(scores, key=scores.get, reverse=True):
                if sequence[-1] == eot:
                    ended[sequence] = scores[sequence]
                else:
                    kept.append(list(sequence))
                    kept_sums.append(scores[sequence])
                    rows.append(sources[sequence])
                    if len(kept) == size:
                        break
            for sequence in sorted(ended, key=ended.get, reverse=True):
                if len(finished) >= most:
                    break
                finished[sequence] = ended[sequence]
            if len(finished) >= most:
                break
            beams, sums = kept, np.array(kept_sums)
            state.reorder(rows)
            last = state.step([beam[-1] for beam in beams])
        if len(finished) < size:  # out of room: the unfinished beams compete too, likeliest first
            for i in np.argsort(-sums, kind="stable"):
                finished.setdefault(tuple(beams[i]) + (eot,), float(sums[i]))
                if len(finished) >= size:
                    break
        return self.best({seq[:-1] if seq and seq[-1] == eot else seq: score for seq, score in finished.items()},
                          opts.length_penalty)

    @staticmethod
    def best(candidates: dict[tuple, float], length_penalty: float | None) -> tuple[list[int], float]:
        """OpenAI's MaximumLikelihoodRanker: the highest sum of log-probabilities over a length
        penalty (the length without end-of-text; None: the length itself)."""
        def ranked(item):
            sequence, score = item
            length = len(sequence)
            penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
            return score / max(penalty, 1e-9)

        sequence, score = max(candidates.items(), key=ranked)
        return list(sequence), float(score)

    def logprobs(self, last: np.ndarray, prefixes: list[list[int]], timestamps: bool) -> np.ndarray:
        """Next-token log-probabilities (rows, vocab) under Whisper's logit filters, from each row's
        scores ``last`` and its tokens so far: suppressed tokens, blanks at the first step, and with
        ``timestamps`` OpenAI's timestamp rules (text is ruled out where the timestamps together are
        likelier than any one text token). In float64, all rows at once."""
        d = self.decoding
        scores = np.array(last, dtype=np.float64, ndmin=2)
        if len(self.suppress):
            scores[:, self.suppress] = -np.inf
        for row, tokens in enumerate(prefixes):
            if not tokens and len(self.begin_suppress):
                scores[row, self.begin_suppress] = -np.inf
            if timestamps:
                timestamp_rules(scores[row], tokens, d["timestamp_begin"], d["eot"], d["no_timestamps"], self.max_initial)
        logprobs = log_softmax(scores)
        if timestamps:
            begin = d["timestamp_begin"]
            stamps = np.logaddexp.reduce(logprobs[:, begin:], axis=-1)
            text = np.flatnonzero(stamps > logprobs[:, :begin].max(axis=-1))
            if len(text):
                scores[text, :begin] = -np.inf
                logprobs[text] = log_softmax(scores[text])
        return logprobs

    def language_probabilities(self, cross: dict) -> dict[str, float]:
        """Every language the model knows with its probability for the window ``cross`` was encoded
        from, likeliest first: the softmax over the language tokens' logits after <|startoftranscript|>
        (OpenAI's and faster-whisper's detection). An English-only model: ``{"en": 1.0}``."""
        d = self.decoding
        if not d["multilingual"]:
            return {"en": 1.0}
        with self.state(cross) as state:
            logits = state.prefill([[d["sot"]]])[0, -1]
        codes = list(d["languages"])
        scores = logits[np.array([d["languages"][c] for c in codes])].astype(np.float64)
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")
        return {codes[i]: float(probabilities[i]) for i in order}


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over its zlib-compressed bytes (OpenAI's repetition measure)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def timestamp_rules(scores: np.ndarray, tokens: list[int], ts_begin: int, eot: int, no_timestamps: int, max_initial: int) -> None:
    """OpenAI Whisper's ApplyTimestampRules on one row of scores, in place: the rules that follow
    from the tokens so far (the one that weighs timestamps against text is in ``WindowDecoder.logprobs``)."""
    scores[no_timestamps] = -np.inf
    last_was_ts = len(tokens) >= 1 and tokens[-1] >= ts_begin
    penultimate_was_ts = len(tokens) < 2 or tokens[-2] >= ts_begin
    if last_was_ts:
        if penultimate_was_ts:  # a pair of timestamps ended a segment: text (or the end) follows
            scores[ts_begin:] = -np.inf
        else:  # text then a timestamp: another timestamp (the pair) or the end follows
            scores[:eot] = -np.inf
    stamps = [t for t in tokens if t >= ts_begin]
    if stamps:  # timestamps never go back
        upto = stamps[-1] if last_was_ts and not penultimate_was_ts else stamps[-1] + 1
        scores[ts_begin:upto] = -np.inf
    if not tokens:  # the first token is a timestamp, at most max_initial steps in
        scores[:ts_begin] = -np.inf
        scores[ts_begin + max_initial + 1 :] = -np.inf
