from pathlib import Path

p = Path("/work/main/runtimes/speech.py")
s = p.read_text()


def sub(old, new, count=1):
    global s
    assert s.count(old) >= 1, old[:80]
    s = s.replace(old, new, count)


sub('''The loop follows OpenAI's and faster-whisper's (greedy, beam 1): 30-second windows; per window
the encoder runs once and yields every decoder layer's cross-attention keys/values, which the
decoder (a ``DecoderState``) takes on every step while it emits tokens under Whisper's rules
(suppressed tokens, blank suppression at the first step, timestamp rules). With timestamps the
window is cut into segments and the next window starts at the last complete segment; a window
whose no-speech probability is high and whose tokens are unlikely is skipped as silence.''',
'''The loop follows OpenAI's and faster-whisper's, with faster-whisper's defaults: 30-second windows;
per window the encoder runs once and yields every decoder layer's cross-attention keys/values,
which the decoder (a ``DecoderState``) takes on every step while it emits tokens under Whisper's
rules (suppressed tokens, blank suppression at the first step, timestamp rules). At temperature 0
a beam search (``beam_size`` beams as one batch, the cache reordered per step; OpenAI's
``patience`` and ``length_penalty``); a window whose text compresses too well (repetition) or is
too unlikely is decoded again at the next temperature, by sampling ``best_of`` candidates; each
window is prompted with the text before it (``condition_on_previous_text``, reset after a
high-temperature window). With timestamps the window is cut into segments and the next window
starts at the last complete segment; a window whose no-speech probability is high and whose
tokens are unlikely is skipped as silence.''')

sub('''import os
import time
from dataclasses import asdict, dataclass, field
''', '''import os
import time
import zlib
from dataclasses import asdict, dataclass, field
''')

sub('''SILENCE_PEAK = 1e-3
''', '''SILENCE_PEAK = 1e-3
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # OpenAI's and faster-whisper's fallback schedule
''')

sub('''    initial_prompt: str | None = None  # text before the first window (spellings, names, style), fed as Whisper's previous text

    def __post_init__(self):''', '''    initial_prompt: str | None = None  # text before the first window (spellings, names, style), fed as Whisper's previous text
    beam_size: int = 5  # beams at temperature 0 (1: greedy)
    best_of: int = 5  # candidates sampled at a temperature above 0; the likeliest is kept
    patience: float = 1.0  # a window ends when beam_size x patience finished candidates exist (OpenAI's)
    length_penalty: float | None = None  # ranking: None divides log-probabilities by length; x: by ((5 + length) / 6) ** x
    temperature: float | tuple[float, ...] = TEMPERATURES  # one, or the fallback schedule tried in order
    compression_ratio_threshold: float | None = 2.4  # above: the window repeats itself, decode it again hotter
    condition_on_previous_text: bool = True  # prompt each window with the text before it
    prompt_reset_on_temperature: float = 0.5  # ... but not after a window decoded hotter than this
    prefix: str | None = None  # text the first window's transcript starts with

    def __post_init__(self):''')

sub('''        if self.initial_prompt is not None and not isinstance(self.initial_prompt, str):
            bad(f"initial_prompt must be a string or None, got {type(self.initial_prompt).__name__}")
''', '''        for name in ("initial_prompt", "prefix"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                bad(f"{name} must be a string or None, got {type(getattr(self, name)).__name__}")
        for name in ("beam_size", "best_of"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 64:
                bad(f"{name} must be an integer in [1, 64], got {value!r}")
        if not _number(self.patience) or self.patience <= 0:
            bad(f"patience must be a number > 0, got {self.patience!r}")
        if self.length_penalty is not None and (not _number(self.length_penalty) or not 0 <= self.length_penalty <= 10):
            bad(f"length_penalty must be None or a number in [0, 10], got {self.length_penalty!r}")
        temperatures = self.temperature if isinstance(self.temperature, (tuple, list)) else (self.temperature,)
        if not temperatures or not all(_number(t) and 0 <= t <= 2 for t in temperatures):
            bad(f"temperature must be a number in [0, 2] or a sequence of them, got {self.temperature!r}")
        object.__setattr__(self, "temperature", tuple(float(t) for t in temperatures))
        if self.compression_ratio_threshold is not None and (not _number(self.compression_ratio_threshold)
                                                            or self.compression_ratio_threshold <= 0):
            bad(f"compression_ratio_threshold must be None or a number > 0, got {self.compression_ratio_threshold!r}")
        if not isinstance(self.condition_on_previous_text, (bool, np.bool_)):
            bad(f"condition_on_previous_text must be True or False, got {self.condition_on_previous_text!r}")
        if not _number(self.prompt_reset_on_temperature) or not 0 <= self.prompt_reset_on_temperature <= 2:
            bad(f"prompt_reset_on_temperature must be a number in [0, 2], got {self.prompt_reset_on_temperature!r}")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) and bool(np.isfinite(value))
''')

sub('''    tokens: list[int]  # without the prompt and the end-of-text token; timestamps included
    avg_logprob: float  # mean log-probability of the tokens (end-of-text counted)
    no_speech_prob: float  # P(no speech) at the start-of-transcript position (0 if the model has no such token)
''', '''    tokens: list[int]  # without the prompt and the end-of-text token; timestamps included
    avg_logprob: float  # mean log-probability of the tokens (end-of-text counted)
    no_speech_prob: float  # P(no speech) at the start-of-transcript position (0 if the model has no such token)
    temperature: float = 0.0  # the temperature it was decoded at (0: beam search or greedy)
    compression_ratio: float = 0.0  # its text's size over its zlib-compressed size (repetition when high)
''')

sub('''    avg_logprob: float
    no_speech_prob: float


@dataclass
class TranscriptionStats:''', '''    avg_logprob: float
    no_speech_prob: float
    temperature: float = 0.0
    compression_ratio: float = 0.0


@dataclass
class TranscriptionStats:''')

sub('''    windows: int = 0  # 30-second windows decoded (silent ones skipped)
''', '''    windows: int = 0  # 30-second windows decoded (silent ones skipped)
    fallbacks: int = 0  # decodings repeated at a higher temperature
''')

# decode(): the public one-window API takes options
sub('''    def decode(self, cross: dict, options: TranscriptionOptions | None = None, **overrides) -> WindowDecoding:
        """Greedy tokens of one window under Whisper's rules (suppressed tokens, blank suppression
        at the first step, timestamp rules), from its encoded ``cross`` keys/values. Options as in
        ``transcribe``; a multilingual model without a ``language`` detects it first."""
        opts = self.options(options, **overrides)
        language = self._check_language(opts.language) or self.detect_language(cross)
        return self._decode(cross, self._prompt(language, opts.task, opts.timestamps), opts.timestamps)''',
'''    def decode(self, cross: dict, options: TranscriptionOptions | None = None, **overrides) -> WindowDecoding:
        """The tokens of one window under Whisper's rules (suppressed tokens, blank suppression at the
        first step, timestamp rules), from its encoded ``cross`` keys/values, at the options' first
        temperature (0: beam search of ``beam_size``, greedy at 1; above: the best of ``best_of``
        samples), with ``initial_prompt`` and ``prefix``. Options as in ``transcribe``; a
        multilingual model without a ``language`` detects it first."""
        opts = self.options(options, **overrides)
        language = self._check_language(opts.language) or self.detect_language(cross)
        prompt = self._previous(self._text_tokens(opts.initial_prompt))
        prompt += self._prompt(language, opts.task, opts.timestamps) + self._text_tokens(opts.prefix)
        return self._decode(cross, prompt, opts, opts.temperature[0], np.random.default_rng(0))''')

# the loop
old_loop = s[s.index("    def _transcribe(self, source: AudioSource"):s.index("    def _check_language(")]
new_loop = '''    def _transcribe(self, source: AudioSource, language: str | None, opts: TranscriptionOptions, progress) -> Transcription:
        stats = TranscriptionStats(audio_seconds=source.duration)
        total_frames = source.num_samples // HOP_LENGTH
        frames_per_window = self._window_samples // HOP_LENGTH
        segments: list[Segment] = []
        context = self._text_tokens(opts.initial_prompt)  # what the next window is prompted with
        prefix = self._text_tokens(opts.prefix)  # the first window's only
        rng = np.random.default_rng(0)  # sampling at a fallback temperature: the same transcript every run
        seek = 0
        while seek < total_frames:
            window_frames = min(frames_per_window, total_frames - seek)
            offset = seek * HOP_LENGTH / SAMPLE_RATE
            t0 = time.perf_counter()
            samples = source.read(seek * HOP_LENGTH, window_frames * HOP_LENGTH)
            if not samples.size or np.abs(samples).max() < SILENCE_PEAK:
                stats.features_seconds += time.perf_counter() - t0
                seek += window_frames
                if progress is not None:
                    progress(min(seek, total_frames) * HOP_LENGTH / SAMPLE_RATE, source.duration)
                continue
            features = self.log_mel(samples)
            t1 = time.perf_counter()
            cross = self.encode(features)
            t2 = time.perf_counter()
            language = language or self.detect_language(cross)  # detected on the first window, then kept
            prompt = self._previous(context) + self._prompt(language, opts.task, opts.timestamps) + prefix
            window = self._decode_with_fallback(cross, prompt, opts, rng, stats)
            prefix = []
            t3 = time.perf_counter()
            stats.features_seconds += t1 - t0
            stats.encoder_seconds += t2 - t1
            stats.decoder_seconds += t3 - t2
            stats.windows += 1
            stats.tokens += len(window.tokens)
            if window.no_speech_prob > opts.no_speech_threshold and window.avg_logprob < opts.logprob_threshold:
                seek += window_frames  # silence: nothing to emit
            else:
                found, advance, consumed = self._segments(window, offset, window_frames, opts.timestamps)
                segments += found
                seek += advance if advance > 0 else window_frames
                if not opts.condition_on_previous_text or window.temperature > opts.prompt_reset_on_temperature:
                    context = []  # OpenAI's reset: a hot window's text would steer the next one astray
                else:
                    context = context + consumed
            if progress is not None:
                progress(min(seek, total_frames) * HOP_LENGTH / SAMPLE_RATE, source.duration)
        text = "".join(segment.text for segment in segments).strip()
        return Transcription(text=text, segments=segments, language=language, duration=source.duration, stats=stats)

    def _decode_with_fallback(self, cross, prompt: list[int], opts: TranscriptionOptions, rng, stats) -> WindowDecoding:
        """Decode at each temperature in turn until the window is neither repetitive (compression
        ratio above its threshold) nor unlikely (mean log-probability below its threshold); a window
        that looks like silence is not retried. If every temperature fails, the likeliest decoding
        whose compression ratio was acceptable (else the likeliest), as faster-whisper keeps."""
        tried = []
        for i, temperature in enumerate(opts.temperature):
            if i:
                stats.fallbacks += 1
            window = self._decode(cross, prompt, opts, temperature, rng)
            repetitive = opts.compression_ratio_threshold is not None and window.compression_ratio > opts.compression_ratio_threshold
            unlikely = window.avg_logprob < opts.logprob_threshold
            silence = window.no_speech_prob > opts.no_speech_threshold and unlikely
            if silence or not (repetitive or unlikely):
                return window
            tried.append((repetitive, window))
        acceptable = [w for repetitive, w in tried if not repetitive] or [w for _, w in tried]
        return max(acceptable, key=lambda w: w.avg_logprob)

'''
s = s.replace(old_loop, new_loop)

old_prev = s[s.index("    def _previous(self, text: str | None) -> list[int]:"):s.index("    def _prompt(self, language, task, timestamps)")]
new_prev = '''    def _text_tokens(self, text: str | None) -> list[int]:
        """Text typed by the user as tokens: special tokens (all at or above end-of-text) dropped."""
        if not text or not text.strip():
            return []
        return [t for t in self.tokenizer.encode(" " + text.strip(), add_special_tokens=False) if t < self._decoding["eot"]]

    def _previous(self, tokens: list[int]) -> list[int]:
        """``<|startofprev|>`` and the last of ``tokens`` (at most half the decoder's context, as
        OpenAI whisper keeps), or nothing without tokens or without that token in the vocabulary."""
        start = self.tokenizer.token_id("<|startofprev|>")
        if not tokens or start is None:
            return []
        positions = min(self._decoding["max_target_positions"], self._graph.max_tokens or np.iinfo(np.int64).max)
        keep = positions // 2 - 1
        return [start] + tokens[-keep:] if keep > 0 else []

'''
s = s.replace(old_prev, new_prev)

old_decode = s[s.index("    def _decode(self, cross, prompt: list[int], timestamps: bool) -> WindowDecoding:"):s.index("    def _apply_rules(")]
new_decode = '''    def _decode(self, cross, prompt: list[int], opts: TranscriptionOptions, temperature: float, rng) -> WindowDecoding:
        """One window at one temperature: beam search (temperature 0, beam_size > 1), greedy
        (temperature 0, beam 1), or the best of ``best_of`` samples."""
        d = self._decoding
        limit = min(d["max_target_positions"] // 2, d["max_target_positions"] - len(prompt))
        if self._graph.max_tokens:  # a static-shape (NPU) package: the prompt and every token fed back fit its cache
            limit = min(limit, self._graph.max_tokens - len(prompt))
        rows = opts.beam_size if temperature == 0 else opts.best_of
        with DecoderState(self._decoder, self._graph, fixed=self._cross_rows(cross, rows)) as state:
            logits = state.prefill([prompt] * rows)
            no_speech_prob = 0.0
            if d.get("no_speech") is not None:
                at_sot = _log_softmax(logits[0, prompt.index(d["sot"])].astype(np.float64))
                no_speech_prob = float(np.exp(at_sot[d["no_speech"]]))
            if temperature == 0 and rows > 1:
                tokens, sum_logprob = self._beam_search(state, logits[:, -1], opts, limit)
            else:
                tokens, sum_logprob = self._sample(state, logits[:, -1], opts, limit, temperature, rng)
        text = self.tokenizer.decode([t for t in tokens if t < d["eot"]])
        return WindowDecoding(tokens, sum_logprob / (len(tokens) + 1), no_speech_prob, temperature, _compression_ratio(text))

    def _cross_rows(self, cross: dict, rows: int) -> dict:
        """The window's cross-attention values for ``rows`` decoder rows (a static graph runs its rows
        one at a time through batch 1)."""
        if rows == 1 or self._graph.static:
            return cross
        return {name: np.repeat(value, rows, axis=0) for name, value in cross.items()}

    def _sample(self, state: DecoderState, last: np.ndarray, opts, limit: int, temperature: float, rng) -> tuple[list[int], float]:
        """Greedy (temperature 0) or sampled rows, one token each per step; the likeliest row by
        OpenAI's ranking. A row's log-probabilities are of the untempered distribution, as OpenAI's."""
        eot = self._decoding["eot"]
        rows = len(last)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        sums = np.zeros(rows)
        done = np.zeros(rows, dtype=bool)
        for _ in range(limit):
            chosen = np.full(rows, eot, dtype=np.int64)
            for row in np.flatnonzero(~done):
                scores = self._apply_rules(last[row].astype(np.float64), tokens[row], opts.timestamps)
                logprobs = _log_softmax(scores)
                if temperature == 0:
                    token = int(np.argmax(scores))
                else:
                    p = np.exp(_log_softmax(scores / temperature))
                    token = int(rng.choice(len(p), p=p / p.sum()))
                sums[row] += logprobs[token]
                chosen[row] = token
                if token == eot:
                    done[row] = True
                else:
                    tokens[row].append(token)
            if done.all():
                break
            last = state.step(chosen)
        return self._best(dict(zip(map(tuple, tokens), sums)), opts.length_penalty)

    def _beam_search(self, state: DecoderState, last: np.ndarray, opts, limit: int) -> tuple[list[int], float]:
        """OpenAI whisper's beam search: each beam proposes its beam_size + 1 likeliest next tokens;
        the beam_size best unfinished candidates go on (the cache reordered to them), finished ones
        are kept until beam_size x patience exist; the winner by ``_best``."""
        eot, size = self._decoding["eot"], opts.beam_size
        most = round(size * opts.patience)
        beams: list[list[int]] = [[] for _ in range(size)]
        sums = np.zeros(size)
        finished: dict[tuple, float] = {}
        for _ in range(limit):
            scores, sources = {}, {}
            for i, prefix in enumerate(beams):
                logprobs = _log_softmax(self._apply_rules(last[i].astype(np.float64), prefix, opts.timestamps))
                for token in np.argsort(-logprobs, kind="stable")[: size + 1]:
                    sequence = tuple(prefix) + (int(token),)
                    scores[sequence], sources[sequence] = sums[i] + logprobs[token], i
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
        return self._best({seq[:-1] if seq and seq[-1] == eot else seq: score for seq, score in finished.items()},
                          opts.length_penalty)

    @staticmethod
    def _best(candidates: dict[tuple, float], length_penalty: float | None) -> tuple[list[int], float]:
        """OpenAI's MaximumLikelihoodRanker: the highest sum of log-probabilities over a length
        penalty (the length without end-of-text; None: the length itself)."""
        def ranked(item):
            sequence, score = item
            length = len(sequence)
            penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
            return score / max(penalty, 1e-9)

        sequence, score = max(candidates.items(), key=ranked)
        return list(sequence), float(score)

'''
s = s.replace(old_decode, new_decode)

# _segments also returns the consumed tokens
sub('''    def _segments(self, window: WindowDecoding, offset, window_frames, timestamps) -> tuple[list[Segment], int]:
        """Cut a window's tokens into segments; return them and how many frames to advance."""''',
    '''    def _segments(self, window: WindowDecoding, offset, window_frames, timestamps) -> tuple[list[Segment], int, list[int]]:
        """Cut a window's tokens into segments; return them, how many frames to advance, and the
        tokens the advance consumed (what the next window is conditioned on)."""''')
sub('''            return Segment(round(start, 3), round(end, 3), text, avg_logprob, no_speech_prob)''',
    '''            return Segment(round(start, 3), round(end, 3), text, avg_logprob, no_speech_prob, window.temperature,
                           window.compression_ratio)''')
sub('''        if not timestamps:
            found = segment(offset, offset + window_seconds, tokens)
            return ([found] if found else []), window_frames''', '''        if not timestamps:
            found = segment(offset, offset + window_seconds, tokens)
            return ([found] if found else []), window_frames, tokens''')
sub('''            if single_ending:
                return found, window_frames
            return found, (tokens[last - 1] - ts_begin) * INPUT_STRIDE''', '''            if single_ending:
                return found, window_frames, tokens
            return found, (tokens[last - 1] - ts_begin) * INPUT_STRIDE, tokens[:last]''')
sub('''        found = segment(offset, offset + duration, tokens)
        return ([found] if found else []), window_frames


''', '''        found = segment(offset, offset + duration, tokens)
        return ([found] if found else []), window_frames, tokens


def _compression_ratio(text: str) -> float:
    """Bytes of ``text`` over its zlib-compressed bytes (OpenAI's repetition measure)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


''')
p.write_text(s)
print("patched")
