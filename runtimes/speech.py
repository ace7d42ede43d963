"""Speech recognition runtime: a Whisper package transcribed with numpy and the engine only.

The loop follows OpenAI's and faster-whisper's (greedy, beam 1): 30-second windows; per window
the encoder runs once and yields every decoder layer's cross-attention keys/values, which the
decoder (a ``DecoderState``) takes on every step while it emits tokens under Whisper's rules
(suppressed tokens, blank suppression at the first step, timestamp rules). With timestamps the
window is cut into segments and the next window starts at the last complete segment; a window
whose no-speech probability is high and whose tokens are unlikely is skipped as silence.

Example::

    import edge_sdk
    asr = edge_sdk.load("out/whisper-int8", threads=2)
    result = asr.transcribe("meeting.wav")
    print(result.text)
    for segment in result.segments:
        print(f"[{segment.start:.2f} -> {segment.end:.2f}] {segment.text}")
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.package import Package
from edge_sdk.runtimes.audio import HOP_LENGTH, SAMPLE_RATE, AudioSource, log_mel
from edge_sdk.runtimes.backend import open_session
from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState
from edge_sdk.runtimes.options import with_overrides
from edge_sdk.runtimes.tokenizer import TextTokenizer

NO_SPEECH_THRESHOLD = 0.6  # a window is silence when P(no speech) is above this ...
LOGPROB_THRESHOLD = -1.0  # ... and the decoded tokens' mean log-probability below this
INPUT_STRIDE = 2  # encoder positions per mel frame: one timestamp step is 2 frames (0.02 s)
# a window whose loudest sample is below -60 dBFS is silence and is not decoded: on digital silence
# Whisper's no-speech rule alone lets through its classic hallucination (tiny.en: " you", with
# P(no speech) 0.95 but a mean log-probability of -0.7)
SILENCE_PEAK = 1e-3


@dataclass(frozen=True)
class TranscriptionOptions:
    """How to transcribe; validated on construction (the model's languages are checked by the recognizer)."""

    language: str | None = None  # spoken language code, e.g. "de" (multilingual models); None detects it on the first window
    task: str = "transcribe"  # "transcribe" (same language) or "translate" (into English; multilingual models)
    timestamps: bool = True  # segment times from Whisper's timestamp tokens; False: one segment per 30-second window
    no_speech_threshold: float = NO_SPEECH_THRESHOLD  # a window is silence when P(no speech) is above this ...
    logprob_threshold: float = LOGPROB_THRESHOLD  # ... and its tokens' mean log-probability below this
    initial_prompt: str | None = None  # text before the first window (spellings, names, style), fed as Whisper's previous text

    def __post_init__(self):
        def bad(message: str):
            raise InvalidInputError(message)

        if self.language is not None and (not isinstance(self.language, str) or not self.language):
            bad(f"language must be a language code such as 'en', or None to detect it; got {self.language!r}")
        if self.task not in ("transcribe", "translate"):
            bad(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        if not isinstance(self.timestamps, (bool, np.bool_)):
            bad(f"timestamps must be True or False, got {self.timestamps!r}")
        if isinstance(self.no_speech_threshold, bool) or not isinstance(self.no_speech_threshold, (int, float)) \
                or not 0 <= self.no_speech_threshold <= 1:
            bad(f"no_speech_threshold must be a probability in [0, 1], got {self.no_speech_threshold!r}")
        if isinstance(self.logprob_threshold, bool) or not isinstance(self.logprob_threshold, (int, float)) \
                or not np.isfinite(self.logprob_threshold):
            bad(f"logprob_threshold must be a finite number, got {self.logprob_threshold!r}")
        if self.initial_prompt is not None and not isinstance(self.initial_prompt, str):
            bad(f"initial_prompt must be a string or None, got {type(self.initial_prompt).__name__}")


@dataclass(frozen=True)
class WindowDecoding:
    """One 30-second window decoded greedily."""

    tokens: list[int]  # without the prompt and the end-of-text token; timestamps included
    avg_logprob: float  # mean log-probability of the tokens (end-of-text counted)
    no_speech_prob: float  # P(no speech) at the start-of-transcript position (0 if the model has no such token)


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass
class TranscriptionStats:
    """Where the time went, for one transcribe() call."""

    audio_seconds: float = 0.0
    windows: int = 0  # 30-second windows decoded (silent ones skipped)
    tokens: int = 0  # tokens decoded, timestamps included
    features_seconds: float = 0.0  # reading audio and computing log-mel features
    encoder_seconds: float = 0.0
    decoder_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def real_time_factor(self) -> float:
        """Processing time over audio time (lower is faster; 0.1 = ten times real time)."""
        return self.total_seconds / self.audio_seconds if self.audio_seconds else 0.0


@dataclass
class Transcription:
    """The text of some audio, its segments and what it cost."""

    text: str
    segments: list[Segment]
    language: str | None
    duration: float  # seconds of audio
    stats: TranscriptionStats = field(default_factory=TranscriptionStats)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["stats"]["real_time_factor"] = self.stats.real_time_factor
        return data

    def to_srt(self) -> str:
        """SubRip subtitles: numbered cues, ``HH:MM:SS,mmm`` times."""
        cues = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
                for i, s in enumerate(self.segments, start=1)]
        return "\n".join(cues)

    def to_vtt(self) -> str:
        """WebVTT subtitles."""
        cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in self.segments]
        return "WEBVTT\n\n" + "\n".join(cues)


def _clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


class SpeechRecognizer:
    """A loaded Whisper package. ``transcribe(path_or_array)`` returns a ``Transcription``.

    Options (keyword arguments of ``transcribe``, or one ``TranscriptionOptions``): ``language``,
    ``task``, ``timestamps``, ``no_speech_threshold``, ``logprob_threshold``. The steps of one
    window are public too: ``log_mel`` (samples -> features), ``encode`` (features -> cross-attention
    keys/values), ``detect_language`` and ``decode`` (-> ``WindowDecoding``).
    """

    def __init__(self, package: Package, threads: int | None = None):
        manifest = package.manifest
        self.package = package
        self._model = manifest["model"]
        self._decoding = manifest["decoding"]
        self._features = manifest["features"]
        min_version = manifest["runtime"].get("min_version")
        self._encoder = open_session(package.runtime, package.graph_path("encoder"), threads, min_version)
        self._decoder = open_session(package.runtime, package.graph_path("decoder"), threads, min_version)
        self._graph = DecoderGraph.from_description(package.graph("decoder"), self._model)
        self._cross_names = list(self._graph.fixed)  # the encoder's outputs the decoder takes on every call
        self.tokenizer = TextTokenizer.from_file(package.path(manifest["tokenizer"]["path"]))
        filters = np.load(package.path(self._features["mel_filters"]), allow_pickle=False)
        if filters.shape != (self._features["n_mels"], self._features["n_fft"] // 2 + 1):
            raise InvalidInputError(f"mel filter bank of shape {filters.shape} does not fit the package's features")
        self._filters = filters
        self._window_samples = int(self._features["chunk_seconds"]) * SAMPLE_RATE
        # ids past the model's vocabulary (a small model with Whisper's default lists) cannot be produced anyway
        vocab = int(self._model.get("vocab_size") or np.iinfo(np.int64).max)
        self._suppress = np.array([t for t in self._decoding["suppress_tokens"] if t < vocab], dtype=np.int64)
        self._begin_suppress = np.array([t for t in self._decoding["begin_suppress_tokens"] if t < vocab], dtype=np.int64)
        self._max_initial = int(round(self._decoding["max_initial_timestamp"] / self._decoding["time_precision"]))
        self.defaults = TranscriptionOptions()
        self.last_stats: TranscriptionStats | None = None  # timings of the last transcribe()

    # ------------------------------------------------------------------ public

    @property
    def languages(self) -> list[str]:
        return sorted(self._decoding.get("languages") or {})

    def options(self, options: TranscriptionOptions | None = None, **overrides) -> TranscriptionOptions:
        """The defaults (or ``options``) with ``overrides`` applied and validated."""
        return with_overrides(options or self.defaults, overrides, "transcription")

    def transcribe(self, audio, options: TranscriptionOptions | None = None, *, sample_rate: int = SAMPLE_RATE,
                   progress=None, **overrides) -> Transcription:
        """Transcribe a file path or an array of samples (at ``sample_rate``, mono or channels).

        Options: one ``TranscriptionOptions`` and/or its fields as keywords, e.g. ``language``
        (multilingual models; None: detected on the first window), ``task`` ("transcribe" or
        "translate"), ``timestamps`` (segment times from Whisper's timestamp tokens; False: one
        segment per 30-second window). ``progress(done_seconds, total_seconds)`` is called after
        each window.
        """
        start = time.perf_counter()
        opts = self.options(options, **overrides)
        language = self._check_language(opts.language)
        if isinstance(audio, (str, os.PathLike)):
            source = AudioSource.open(audio)
        else:
            source = AudioSource.from_array(audio, sample_rate)
        try:
            result = self._transcribe(source, language, opts, progress)
        finally:
            source.close()
        result.stats.total_seconds = time.perf_counter() - start
        self.last_stats = result.stats
        return result

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel features (n_mels, frames) of one window of 16 kHz samples (zero-padded to 30 s)."""
        return log_mel(samples, self._filters, self._window_samples)

    def encode(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Every decoder layer's cross-attention keys and values for one window's ``features``
        (n_mels, frames): what ``decode`` and ``detect_language`` take."""
        outputs = self._encoder.run({"input_features": np.asarray(features, np.float32)[None]})
        return {name: outputs[name] for name in self._cross_names}

    def detect_language(self, cross: dict) -> str:
        """The most likely language code of the window ``cross`` was encoded from (multilingual models)."""
        d = self._decoding
        if not d["multilingual"]:
            return "en"
        with DecoderState(self._decoder, self._graph, fixed=cross) as state:
            logits = state.prefill([[d["sot"]]])[0, -1]
        ids = np.array(list(d["languages"].values()))
        best = ids[int(np.argmax(logits[ids]))]
        return next(code for code, token in d["languages"].items() if token == best)

    def decode(self, cross: dict, options: TranscriptionOptions | None = None, **overrides) -> WindowDecoding:
        """Greedy tokens of one window under Whisper's rules (suppressed tokens, blank suppression
        at the first step, timestamp rules), from its encoded ``cross`` keys/values. Options as in
        ``transcribe``; a multilingual model without a ``language`` detects it first."""
        opts = self.options(options, **overrides)
        language = self._check_language(opts.language) or self.detect_language(cross)
        return self._decode(cross, self._prompt(language, opts.task, opts.timestamps), opts.timestamps)

    # ------------------------------------------------------------------ loop

    def _transcribe(self, source: AudioSource, language: str | None, opts: TranscriptionOptions, progress) -> Transcription:
        stats = TranscriptionStats(audio_seconds=source.duration)
        total_frames = source.num_samples // HOP_LENGTH
        frames_per_window = self._window_samples // HOP_LENGTH
        segments: list[Segment] = []
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
            # the initial prompt conditions the first decoded window only (OpenAI whisper without
            # condition_on_previous_text; issue 18 carries each window's text into the next)
            previous = self._previous(opts.initial_prompt) if stats.windows == 0 else []
            prompt = previous + self._prompt(language, opts.task, opts.timestamps)
            window = self._decode(cross, prompt, opts.timestamps)
            t3 = time.perf_counter()
            stats.features_seconds += t1 - t0
            stats.encoder_seconds += t2 - t1
            stats.decoder_seconds += t3 - t2
            stats.windows += 1
            stats.tokens += len(window.tokens)
            if window.no_speech_prob > opts.no_speech_threshold and window.avg_logprob < opts.logprob_threshold:
                seek += window_frames  # silence: nothing to emit
            else:
                found, advance = self._segments(window, offset, window_frames, opts.timestamps)
                segments += found
                seek += advance if advance > 0 else window_frames
            if progress is not None:
                progress(min(seek, total_frames) * HOP_LENGTH / SAMPLE_RATE, source.duration)
        text = "".join(segment.text for segment in segments).strip()
        return Transcription(text=text, segments=segments, language=language, duration=source.duration, stats=stats)

    def _check_language(self, language: str | None) -> str | None:
        if not self._decoding["multilingual"]:
            if language not in (None, "en"):
                raise InvalidInputError(f"this model is English-only; it cannot transcribe language {language!r}")
            return "en"
        if language is not None and language not in self._decoding["languages"]:
            raise InvalidInputError(f"unknown language {language!r}; this model knows: {', '.join(self.languages)}")
        return language

    def _previous(self, text: str | None) -> list[int]:
        """``<|startofprev|>`` and the last tokens of ``text`` (at most half the decoder's context, as
        OpenAI whisper keeps), or nothing without text or without that token in the vocabulary."""
        if not text or not text.strip():
            return []
        start = self.tokenizer.token_id("<|startofprev|>")
        if start is None:
            return []
        # text only: special tokens (all at or above end-of-text) typed into a prompt are dropped
        tokens = [t for t in self.tokenizer.encode(" " + text.strip(), add_special_tokens=False) if t < self._decoding["eot"]]
        positions = min(self._decoding["max_target_positions"], self._graph.max_tokens or np.iinfo(np.int64).max)
        keep = positions // 2 - 1
        return [start] + tokens[-keep:] if keep > 0 else []

    def _prompt(self, language, task, timestamps) -> list[int]:
        d = self._decoding
        prompt = [d["sot"]]
        if d["multilingual"]:
            prompt += [d["languages"][language], d[task]]
        if not timestamps:
            prompt.append(d["no_timestamps"])
        return prompt

    def _decode(self, cross, prompt: list[int], timestamps: bool) -> WindowDecoding:
        d = self._decoding
        limit = min(d["max_target_positions"] // 2, d["max_target_positions"] - len(prompt))
        if self._graph.max_tokens:  # a static-shape (NPU) package: the prompt and every token fed back fit its cache
            limit = min(limit, self._graph.max_tokens - len(prompt))
        tokens: list[int] = []
        sum_logprob = 0.0
        with DecoderState(self._decoder, self._graph, fixed=cross) as state:
            logits = state.prefill([prompt])[0]
            no_speech_prob = 0.0
            if d.get("no_speech") is not None:
                at_sot = _log_softmax(logits[prompt.index(d["sot"])].astype(np.float64))
                no_speech_prob = float(np.exp(at_sot[d["no_speech"]]))
            last = logits[-1]
            for _ in range(limit):
                scores = self._apply_rules(last.astype(np.float64), tokens, timestamps)
                token = int(np.argmax(scores))
                sum_logprob += float(_log_softmax(scores)[token])
                if token == d["eot"]:
                    break
                tokens.append(token)
                last = state.step([token])[0]
        return WindowDecoding(tokens, sum_logprob / (len(tokens) + 1), no_speech_prob)

    def _apply_rules(self, scores: np.ndarray, tokens: list[int], timestamps: bool) -> np.ndarray:
        """Whisper's logit filters on the next token's scores, in place: suppressed tokens, blanks
        at the first step, and with ``timestamps`` the timestamp rules."""
        d = self._decoding
        if len(self._suppress):
            scores[self._suppress] = -np.inf
        if not tokens and len(self._begin_suppress):
            scores[self._begin_suppress] = -np.inf
        if timestamps:
            _timestamp_rules(scores, tokens, d["timestamp_begin"], d["eot"], d["no_timestamps"], self._max_initial)
        return scores

    def _segments(self, window: WindowDecoding, offset, window_frames, timestamps) -> tuple[list[Segment], int]:
        """Cut a window's tokens into segments; return them and how many frames to advance."""
        d = self._decoding
        tokens, avg_logprob, no_speech_prob = window.tokens, window.avg_logprob, window.no_speech_prob
        ts_begin, step = d["timestamp_begin"], d["time_precision"]

        def segment(start, end, part) -> Segment | None:
            text = self.tokenizer.decode([t for t in part if t < d["eot"]])
            if not text.strip() or end < start:
                return None
            return Segment(round(start, 3), round(end, 3), text, avg_logprob, no_speech_prob)

        window_seconds = window_frames * HOP_LENGTH / SAMPLE_RATE
        if not timestamps:
            found = segment(offset, offset + window_seconds, tokens)
            return ([found] if found else []), window_frames
        is_ts = [t >= ts_begin for t in tokens]
        single_ending = len(tokens) >= 2 and not is_ts[-2] and is_ts[-1]
        cuts = [i for i in range(1, len(tokens)) if is_ts[i] and is_ts[i - 1]]
        if cuts:
            if single_ending:
                cuts.append(len(tokens))
            found, last = [], 0
            for cut in cuts:
                part = tokens[last:cut]
                s = segment(offset + (part[0] - ts_begin) * step, offset + (part[-1] - ts_begin) * step, part)
                if s:
                    found.append(s)
                last = cut
            if single_ending:
                return found, window_frames
            return found, (tokens[last - 1] - ts_begin) * INPUT_STRIDE
        duration = window_seconds
        stamps = [t for t in tokens if t >= ts_begin]
        if stamps and stamps[-1] != ts_begin:
            duration = (stamps[-1] - ts_begin) * step
        found = segment(offset, offset + duration, tokens)
        return ([found] if found else []), window_frames


def _log_softmax(x: np.ndarray) -> np.ndarray:
    finite = x[np.isfinite(x)]
    top = finite.max() if finite.size else 0.0
    shifted = x - top
    return shifted - np.log(np.exp(shifted).sum())


def _timestamp_rules(scores: np.ndarray, tokens: list[int], ts_begin: int, eot: int, no_timestamps: int, max_initial: int) -> None:
    """OpenAI Whisper's ApplyTimestampRules on one row of scores, in place."""
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
    logprobs = _log_softmax(scores)
    stamp_logprob = np.logaddexp.reduce(logprobs[ts_begin:])
    if stamp_logprob > logprobs[:ts_begin].max():
        scores[:ts_begin] = -np.inf
