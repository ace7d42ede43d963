"""Speech recognition runtime: a Whisper package transcribed with numpy and the engine only.

The loop follows OpenAI's and faster-whisper's, with faster-whisper's defaults: 30-second windows;
per window the encoder runs once and yields every decoder layer's cross-attention keys/values,
which the decoder (a ``DecoderState``) takes on every step while it emits tokens under Whisper's
rules (suppressed tokens, blank suppression at the first step, timestamp rules). At temperature 0
a beam search (``beam_size`` beams as one batch, the cache reordered per step; OpenAI's
``patience`` and ``length_penalty``); a window whose text compresses too well (repetition) or is
too unlikely is decoded again at the next temperature, by sampling ``best_of`` candidates; each
window is prompted with the text before it (``condition_on_previous_text``, reset after a
high-temperature window). With timestamps the window is cut into segments and the next window
starts at the last complete segment; a window whose no-speech probability is high and whose
tokens are unlikely is skipped as silence.

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
import zlib
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.package import Package
from edge_sdk.runtimes import alignment
from edge_sdk.runtimes.audio import HOP_LENGTH, SAMPLE_RATE, AudioSource, log_mel
from edge_sdk.runtimes.backend import open_session
from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState
from edge_sdk.runtimes.options import with_overrides
from edge_sdk.runtimes.tokenizer import TextTokenizer
from edge_sdk.runtimes.vad import SpeechAudio, VadOptions, VoiceActivityDetector

CROSS_QK = "cross_qk"  # the decoder output with the alignment heads' cross-attention scores (word timestamps)
NO_SPEECH_THRESHOLD = 0.6  # a window is silence when P(no speech) is above this ...
LOGPROB_THRESHOLD = -1.0  # ... and the decoded tokens' mean log-probability below this
INPUT_STRIDE = 2  # encoder positions per mel frame: one timestamp step is 2 frames (0.02 s)
# a window whose loudest sample is below -60 dBFS is silence and is not decoded: on digital silence
# Whisper's no-speech rule alone lets through its classic hallucination (tiny.en: " you", with
# P(no speech) 0.95 but a mean log-probability of -0.7)
SILENCE_PEAK = 1e-3
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # OpenAI's and faster-whisper's fallback schedule


@dataclass(frozen=True)
class TranscriptionOptions:
    """How to transcribe; validated on construction (the model's languages are checked by the recognizer)."""

    language: str | None = None  # spoken language code, e.g. "de" (multilingual models); None detects it on the first window
    task: str = "transcribe"  # "transcribe" (same language) or "translate" (into English; multilingual models)
    timestamps: bool = True  # segment times from Whisper's timestamp tokens; False: one segment per 30-second window
    no_speech_threshold: float = NO_SPEECH_THRESHOLD  # a window is silence when P(no speech) is above this ...
    logprob_threshold: float = LOGPROB_THRESHOLD  # ... and its tokens' mean log-probability below this
    initial_prompt: str | None = None  # text before the first window (spellings, names, style), fed as Whisper's previous text
    beam_size: int = 5  # beams at temperature 0 (1: greedy)
    best_of: int = 5  # candidates sampled at a temperature above 0; the likeliest is kept
    patience: float = 1.0  # a window ends when beam_size x patience finished candidates exist (OpenAI's)
    length_penalty: float | None = None  # ranking: None divides log-probabilities by length; x: by ((5 + length) / 6) ** x
    temperature: float | tuple[float, ...] = TEMPERATURES  # one, or the fallback schedule tried in order
    compression_ratio_threshold: float | None = 2.4  # above: the window repeats itself, decode it again hotter
    condition_on_previous_text: bool = True  # prompt each window with the text before it
    prompt_reset_on_temperature: float = 0.5  # ... but not after a window decoded hotter than this
    prefix: str | None = None  # text the first window's transcript starts with
    word_timestamps: bool = False  # each segment's words with start, end and probability (alignment heads + DTW)
    prepend_punctuations: str = alignment.PREPEND_PUNCTUATIONS  # word timestamps: joined to the word after them
    append_punctuations: str = alignment.APPEND_PUNCTUATIONS  # ... and to the word before them
    vad_filter: bool = False  # transcribe only the speech the package's Silero VAD finds; times stay the audio's
    vad_parameters: VadOptions | dict | None = None  # VadOptions or a dict of its fields (None: faster-whisper's defaults)

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
        for name in ("initial_prompt", "prefix"):
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
        object.__setattr__(self, "vad_parameters", VadOptions.from_value(self.vad_parameters))
        for name in ("condition_on_previous_text", "word_timestamps", "vad_filter"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                bad(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("prepend_punctuations", "append_punctuations"):
            if not isinstance(getattr(self, name), str):
                bad(f"{name} must be a string of punctuation characters, got {getattr(self, name)!r}")
        if not _number(self.prompt_reset_on_temperature) or not 0 <= self.prompt_reset_on_temperature <= 2:
            bad(f"prompt_reset_on_temperature must be a number in [0, 2], got {self.prompt_reset_on_temperature!r}")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) and bool(np.isfinite(value))


@dataclass(frozen=True)
class WindowDecoding:
    """One 30-second window decoded (beam search, greedy or sampled)."""

    tokens: list[int]  # without the prompt and the end-of-text token; timestamps included
    avg_logprob: float  # mean log-probability of the tokens (end-of-text counted)
    no_speech_prob: float  # P(no speech) at the start-of-transcript position (0 if the model has no such token)
    temperature: float = 0.0  # the temperature it was decoded at (0: beam search or greedy)
    compression_ratio: float = 0.0  # its text's size over its zlib-compressed size (repetition when high)


@dataclass(frozen=True)
class Word:
    start: float  # seconds from the start of the audio
    end: float
    word: str  # with its leading space, as in the segment's text
    probability: float  # mean probability of its tokens


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float = 0.0
    compression_ratio: float = 0.0
    tokens: tuple[int, ...] = ()  # its text and timestamp tokens
    words: tuple[Word, ...] | None = None  # with word_timestamps


@dataclass
class TranscriptionStats:
    """Where the time went, for one transcribe() call."""

    audio_seconds: float = 0.0
    windows: int = 0  # 30-second windows decoded (silent ones skipped)
    fallbacks: int = 0  # decodings repeated at a higher temperature
    tokens: int = 0  # tokens decoded, timestamps included
    features_seconds: float = 0.0  # reading audio and computing log-mel features
    encoder_seconds: float = 0.0
    decoder_seconds: float = 0.0
    alignment_seconds: float = 0.0  # word timestamps: the alignment pass and the time warping
    vad_seconds: float = 0.0  # vad_filter: scoring the audio for speech
    speech_seconds: float | None = None  # vad_filter: seconds of speech transcribed (the rest skipped)
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
    language_probability: float | None = None  # of a language detected on the first window (None: given or English-only)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["stats"]["real_time_factor"] = self.stats.real_time_factor
        return data

    def to_srt(self, words: bool = False) -> str:
        """SubRip subtitles: numbered cues, ``HH:MM:SS,mmm`` times; ``words``: one cue per word
        (a transcription made with word_timestamps)."""
        cues = [f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n"
                for i, (start, end, text) in enumerate(self._cues(words), start=1)]
        return "\n".join(cues)

    def to_vtt(self, words: bool = False) -> str:
        """WebVTT subtitles; ``words``: one cue per word."""
        cues = [f"{_clock(start, '.')} --> {_clock(end, '.')}\n{text}\n" for start, end, text in self._cues(words)]
        return "WEBVTT\n\n" + "\n".join(cues)

    @property
    def words(self) -> list[Word]:
        """Every segment's words in order (empty without word_timestamps)."""
        return [w for s in self.segments for w in s.words or ()]

    def _cues(self, words: bool) -> list[tuple[float, float, str]]:
        if not words:
            return [(s.start, s.end, s.text.strip()) for s in self.segments]
        if any(s.words is None for s in self.segments):
            raise InvalidInputError("word-level cues need a transcription made with word_timestamps=True")
        return [(w.start, w.end, w.word.strip()) for w in self.words]


def _clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


class SpeechRecognizer:
    """A loaded Whisper package. ``transcribe(path_or_array)`` returns a ``Transcription``.

    Options (keyword arguments of ``transcribe``, or one ``TranscriptionOptions``; faster-whisper's
    names and defaults): ``language``, ``task``, ``timestamps``, ``beam_size``, ``best_of``,
    ``patience``, ``length_penalty``, ``temperature``, ``compression_ratio_threshold``,
    ``logprob_threshold``, ``no_speech_threshold``, ``condition_on_previous_text``,
    ``initial_prompt``, ``prefix``, ``word_timestamps``, ``vad_filter``, ``vad_parameters``.
    ``transcribe_many`` batches several files' windows through the encoder. The steps of one window
    are public too: ``log_mel`` (samples -> features), ``encode`` (features -> cross-attention
    keys/values), ``language_probabilities`` / ``detect_language`` and ``decode`` (-> ``WindowDecoding``).
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
        description = package.graph("decoder")
        self._graph = DecoderGraph.from_description(description, self._model)
        self._cross_names = list(self._graph.fixed)  # the encoder's outputs the decoder takes on every call
        # one window for all rows (batch axis 1: rows fold into the query axis), or, in packages
        # exported before, the window's values tiled per row (a dynamic batch axis)
        shapes = {entry["name"]: entry.get("shape") or [None] for entry in description["inputs"]}
        self._one_window = all(shapes[name][0] == 1 for name in self._cross_names)
        self._decoder_outputs = {entry["name"] for entry in description["outputs"]}
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
        self._vad_section = manifest.get("vad")  # the bundled Silero VAD (packages exported with silero-vad installed)
        self._vad: VoiceActivityDetector | None = None
        self._threads = threads
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
        language = self._check(opts)
        vad = self._voice_activity() if opts.vad_filter else None
        source = _source(audio, sample_rate)
        try:
            if vad is None:
                result = self._transcribe(source, language, opts, progress)
            else:
                t0 = time.perf_counter()
                speech = SpeechAudio(source, vad.speech_regions(source, opts.vad_parameters))
                vad_seconds = time.perf_counter() - t0
                result = _on_original_axis(self._transcribe(speech, language, opts, progress), speech, source.duration)
                result.stats.vad_seconds = vad_seconds
        finally:
            source.close()
        result.stats.total_seconds = time.perf_counter() - start
        self.last_stats = result.stats
        return result

    def transcribe_many(self, audios, options: TranscriptionOptions | None = None, *, batch_size: int = 4,
                        progress=None, **overrides) -> list[Transcription]:
        """Transcribe several files (paths or 16 kHz arrays) with their windows batched through the
        encoder: up to ``batch_size`` files are transcribed side by side, and each round their next
        windows are encoded as one batch (the decoding stays per file). The same transcripts as
        ``transcribe`` on each; ``progress(files_done, files_total)`` after each file. A file that
        cannot be read fails the call before any work is done."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= 64:
            raise InvalidInputError(f"batch_size must be an integer in [1, 64], got {batch_size!r}")
        opts = self.options(options, **overrides)
        language = self._check(opts)
        if opts.vad_filter or batch_size == 1:  # the VAD scores each file whole first: no lockstep to gain
            results = []
            for audio in audios:
                results.append(self.transcribe(audio, opts))
                if progress is not None:
                    progress(len(results), len(audios))
            return results
        sources = []
        results: list[Transcription | None] = [None] * len(audios)
        started: dict[int, float] = {}
        try:
            for audio in audios:
                sources.append(_source(audio))
            pending, active = list(range(len(sources))), {}  # active: file index -> (generator, its next features)
            while pending or active:
                while pending and len(active) < batch_size:
                    index = pending.pop(0)
                    started[index] = time.perf_counter()
                    self._advance(active, index, self._windows(sources[index], language, opts, None), None, results, started)
                if not active:
                    continue
                order = list(active)
                t0 = time.perf_counter()
                batch = self._encoder.run({"input_features": np.stack([active[i][1] for i in order]).astype(np.float32)})
                share = (time.perf_counter() - t0) / len(order)
                for row, index in enumerate(order):
                    cross = {name: batch[name][row : row + 1] for name in self._cross_names}
                    self._advance(active, index, active[index][0], (cross, share), results, started)
                    if results[index] is not None and progress is not None:
                        progress(sum(r is not None for r in results), len(sources))
        finally:
            for source in sources:
                source.close()
        self.last_stats = results[-1].stats if results else None
        return results

    @staticmethod
    def _advance(active: dict, index: int, windows, sent, results: list, started: dict) -> None:
        try:
            active[index] = (windows, windows.send(sent))
        except StopIteration as done:
            active.pop(index, None)
            done.value.stats.total_seconds = time.perf_counter() - started[index]
            results[index] = done.value

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
        return next(iter(self.language_probabilities(cross)))

    def language_probabilities(self, cross: dict) -> dict[str, float]:
        """Every language the model knows with its probability for the window ``cross`` was encoded
        from, likeliest first: the softmax over the language tokens' logits after <|startoftranscript|>
        (OpenAI's and faster-whisper's detection). An English-only model: ``{"en": 1.0}``."""
        d = self._decoding
        if not d["multilingual"]:
            return {"en": 1.0}
        with DecoderState(self._decoder, self._graph, fixed=cross) as state:
            logits = state.prefill([[d["sot"]]])[0, -1]
        codes = list(d["languages"])
        scores = logits[np.array([d["languages"][c] for c in codes])].astype(np.float64)
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")
        return {codes[i]: float(probabilities[i]) for i in order}

    def decode(self, cross: dict, options: TranscriptionOptions | None = None, **overrides) -> WindowDecoding:
        """The tokens of one window under Whisper's rules (suppressed tokens, blank suppression at the
        first step, timestamp rules), from its encoded ``cross`` keys/values, at the options' first
        temperature (0: beam search of ``beam_size``, greedy at 1; above: the best of ``best_of``
        samples), with ``initial_prompt`` and ``prefix``. Options as in ``transcribe``; a
        multilingual model without a ``language`` detects it first."""
        opts = self.options(options, **overrides)
        language = self._check_language(opts.language, opts.task) or self.detect_language(cross)
        prompt = self._previous(self._text_tokens(opts.initial_prompt))
        prompt += self._prompt(language, opts.task, opts.timestamps) + self._text_tokens(opts.prefix)
        return self._decode(cross, prompt, opts, opts.temperature[0], np.random.default_rng(0))

    # ------------------------------------------------------------------ loop

    def _transcribe(self, source, language: str | None, opts: TranscriptionOptions, progress) -> Transcription:
        windows = self._windows(source, language, opts, progress)
        try:
            features = next(windows)
            while True:
                t0 = time.perf_counter()
                cross = self.encode(features)
                features = windows.send((cross, time.perf_counter() - t0))
        except StopIteration as done:
            return done.value

    def _windows(self, source, language: str | None, opts: TranscriptionOptions, progress):
        """The transcription loop of one audio source as a generator: it yields each window's
        features and is sent back their encoding and the seconds it took, so that the windows of
        several files can go through the encoder as one batch (``transcribe_many``); it returns
        the ``Transcription``."""
        stats = TranscriptionStats(audio_seconds=source.duration)
        total_frames = source.num_samples // HOP_LENGTH
        frames_per_window = self._window_samples // HOP_LENGTH
        segments: list[Segment] = []
        context = self._text_tokens(opts.initial_prompt)  # what the next window is prompted with
        prefix = self._text_tokens(opts.prefix)  # the first window's only
        rng = np.random.default_rng(0)  # sampling at a fallback temperature: the same transcript every run
        last_speech = 0.0  # word timestamps: where the last segment's speech ended
        language_probability = None  # of a detected language
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
            cross, encoder_seconds = yield features
            t2 = time.perf_counter()
            if language is None:  # detected on the first window, then kept
                detected = self.language_probabilities(cross)
                language = next(iter(detected))
                language_probability = detected[language]
            prompt = self._previous(context) + self._prompt(language, opts.task, opts.timestamps) + prefix
            window = self._decode_with_fallback(cross, prompt, opts, rng, stats)
            prefix = []
            t3 = time.perf_counter()
            stats.features_seconds += t1 - t0
            stats.encoder_seconds += encoder_seconds
            stats.decoder_seconds += t3 - t2
            stats.windows += 1
            stats.tokens += len(window.tokens)
            if window.no_speech_prob > opts.no_speech_threshold and window.avg_logprob < opts.logprob_threshold:
                seek += window_frames  # silence: nothing to emit
            else:
                found, advance, consumed = self._segments(window, offset, window_frames, opts.timestamps)
                start, seek = seek, seek + (advance if advance > 0 else window_frames)
                if opts.word_timestamps and found:
                    t4 = time.perf_counter()
                    found, last_speech = self._add_words(found, cross, language, opts, window_frames, offset, last_speech)
                    stats.alignment_seconds += time.perf_counter() - t4
                    words = [w for segment in found for w in segment.words]
                    # OpenAI's: the next window starts where the last word ended, unless this one
                    # ended on a single timestamp (text running on to the window's end)
                    if words and words[-1].end > offset and not self._single_timestamp_ending(window.tokens):
                        seek = max(start + 1, round(words[-1].end * SAMPLE_RATE / HOP_LENGTH))
                segments += found
                if not opts.condition_on_previous_text or window.temperature > opts.prompt_reset_on_temperature:
                    context = []  # OpenAI's reset: a hot window's text would steer the next one astray
                else:
                    context = context + consumed
            if progress is not None:
                progress(min(seek, total_frames) * HOP_LENGTH / SAMPLE_RATE, source.duration)
        text = "".join(segment.text for segment in segments).strip()
        return Transcription(text=text, segments=segments, language=language, duration=source.duration, stats=stats,
                             language_probability=language_probability)

    def _voice_activity(self) -> VoiceActivityDetector:
        if self._vad is None:
            self._vad = VoiceActivityDetector(self.package.path(self._vad_section["path"]), self.package.runtime, threads=1)
        return self._vad

    def _single_timestamp_ending(self, tokens: list[int]) -> bool:
        begin = self._decoding["timestamp_begin"]
        return len(tokens) >= 2 and tokens[-2] < begin <= tokens[-1]

    def _add_words(self, segments: list[Segment], cross, language: str, opts: TranscriptionOptions, window_frames: int,
                   offset: float, last_speech: float) -> tuple[list[Segment], float]:
        """The window's segments with their words (OpenAI's add_word_timestamps): its text tokens
        run once more through the decoder after the start-of-transcript sequence and
        <|notimestamps|>, the alignment heads' scores warped onto the window's frames; segment
        bounds follow their words, and every word lies inside its segment, after the word before it."""
        d = self._decoding
        per_segment = [[t for t in s.tokens if t < d["eot"]] for s in segments]
        text_tokens = [t for tokens in per_segment for t in tokens]
        if not text_tokens:
            return segments, last_speech
        sot_sequence = self._prompt(language, opts.task, True)
        tokens = sot_sequence + [d["no_timestamps"]] + text_tokens + [d["eot"]]
        with DecoderState(self._decoder, self._graph, fixed=cross) as state:
            logits = state.prefill([tokens])[0]
            qk = state.outputs[CROSS_QK][0]
        rows = slice(len(sot_sequence), len(tokens) - 1)  # <|notimestamps|> and the text tokens
        scores = logits[rows, : d["eot"]].astype(np.float64)
        probabilities = np.exp(scores - scores.max(-1, keepdims=True))
        probabilities = (probabilities / probabilities.sum(-1, keepdims=True))[np.arange(len(text_tokens)), text_tokens]
        path = alignment.token_frames(qk[:, rows], window_frames)
        timings, median = alignment.word_timings(self.tokenizer.decode, text_tokens, path, probabilities,
                                         split_on_spaces=language not in alignment.SPACELESS_LANGUAGES,
                                         prepended=opts.prepend_punctuations, appended=opts.append_punctuations)
        longest = 2 * median
        out, index = [], 0
        previous_end = segments[0].start
        for segment, seg_tokens in zip(segments, per_segment):
            words, saved = [], 0
            while index < len(timings) and saved < len(seg_tokens):
                timing = timings[index]
                if timing.word:
                    words.append([round(offset + timing.start, 2), round(offset + timing.end, 2), timing.word, timing.probability])
                saved += len(timing.tokens)
                index += 1
            start, end = segment.start, segment.end
            if words:  # OpenAI's: long words after a pause are cut; segment bounds follow the words
                first = words[0]
                if first[1] - last_speech > 4 * median and (first[1] - first[0] > longest or
                                                            (len(words) > 1 and words[1][1] - first[0] > 2 * longest)):
                    if len(words) > 1 and words[1][1] - words[1][0] > longest:
                        boundary = max(words[1][1] / 2, words[1][1] - longest)
                        first[1] = words[1][0] = boundary
                    first[0] = max(0.0, first[1] - longest)
                if start < first[1] and start - 0.5 > first[0]:
                    first[0] = max(0.0, min(first[1] - median, start))
                else:
                    start = first[0]
                if end > words[-1][0] and end + 0.5 < words[-1][1]:
                    words[-1][1] = max(words[-1][0] + median, end)
                else:
                    end = words[-1][1]
                for word in words:  # monotonic: no word starts before the one before it ended
                    word[0] = max(word[0], previous_end)
                    word[1] = max(word[1], word[0])
                    previous_end = word[1]
                start, end = min(start, words[0][0]), max(end, words[-1][1])
                last_speech = end
            out.append(replace(segment, start=round(start, 3), end=round(end, 3),
                               words=tuple(Word(round(a, 3), round(b, 3), text, round(p, 4)) for a, b, text, p in words)))
        return out, last_speech

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

    def _check(self, opts: TranscriptionOptions) -> str | None:
        """Refuse options this package cannot honour; the language to transcribe (None: detect it)."""
        if opts.word_timestamps and CROSS_QK not in self._decoder_outputs:
            raise InvalidInputError("this package's decoder returns no alignment-head scores (a static-shape package, or "
                                    "one exported before word timestamps): re-export it for word_timestamps")
        if opts.vad_filter and not self._vad_section:
            raise InvalidInputError("this package has no voice activity detector: re-export it with silero-vad installed "
                                    "(pip install 'edge-sdk[convert]') for vad_filter")
        return self._check_language(opts.language, opts.task)

    def _check_language(self, language: str | None, task: str = "transcribe") -> str | None:
        if task == "translate" and not self._decoding["multilingual"]:
            raise InvalidInputError("this model is English-only: it cannot translate; use a multilingual Whisper for task='translate'")
        if not self._decoding["multilingual"]:
            if language not in (None, "en"):
                raise InvalidInputError(f"this model is English-only; it cannot transcribe language {language!r}")
            return "en"
        if language is not None and language not in self._decoding["languages"]:
            raise InvalidInputError(f"unknown language {language!r}; this model knows: {', '.join(self.languages)}")
        return language

    def _text_tokens(self, text: str | None) -> list[int]:
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

    def _prompt(self, language, task, timestamps) -> list[int]:
        d = self._decoding
        prompt = [d["sot"]]
        if d["multilingual"]:
            prompt += [d["languages"][language], d[task]]
        if not timestamps:
            prompt.append(d["no_timestamps"])
        return prompt

    def _decode(self, cross, prompt: list[int], opts: TranscriptionOptions, temperature: float, rng) -> WindowDecoding:
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
        return WindowDecoding(tokens, sum_logprob / (len(tokens) + 1), no_speech_prob, temperature, compression_ratio(text))

    def _cross_rows(self, cross: dict, rows: int) -> dict:
        """The window's cross-attention values for ``rows`` decoder rows (a static graph runs its rows
        one at a time through batch 1)."""
        if rows == 1 or self._graph.static or self._one_window:
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
            active = np.flatnonzero(~done)
            logprobs = self._logprobs(last[active], [tokens[row] for row in active], opts.timestamps)
            for row, row_logprobs in zip(active, logprobs):
                if temperature == 0:
                    token = int(np.argmax(row_logprobs))
                else:
                    p = np.exp(_log_softmax(row_logprobs / temperature))
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
            logprobs = self._logprobs(last, beams, opts.timestamps)
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

    def _logprobs(self, last: np.ndarray, prefixes: list[list[int]], timestamps: bool) -> np.ndarray:
        """Next-token log-probabilities (rows, vocab) under Whisper's logit filters, from each row's
        scores ``last`` and its tokens so far: suppressed tokens, blanks at the first step, and with
        ``timestamps`` OpenAI's timestamp rules (text is ruled out where the timestamps together are
        likelier than any one text token). In float64, all rows at once."""
        d = self._decoding
        scores = np.array(last, dtype=np.float64, ndmin=2)
        if len(self._suppress):
            scores[:, self._suppress] = -np.inf
        for row, tokens in enumerate(prefixes):
            if not tokens and len(self._begin_suppress):
                scores[row, self._begin_suppress] = -np.inf
            if timestamps:
                _timestamp_rules(scores[row], tokens, d["timestamp_begin"], d["eot"], d["no_timestamps"], self._max_initial)
        logprobs = _log_softmax(scores)
        if timestamps:
            begin = d["timestamp_begin"]
            stamps = np.logaddexp.reduce(logprobs[:, begin:], axis=-1)
            text = np.flatnonzero(stamps > logprobs[:, :begin].max(axis=-1))
            if len(text):
                scores[text, :begin] = -np.inf
                logprobs[text] = _log_softmax(scores[text])
        return logprobs

    def _segments(self, window: WindowDecoding, offset, window_frames, timestamps) -> tuple[list[Segment], int, list[int]]:
        """Cut a window's tokens into segments; return them, how many frames to advance, and the
        tokens the advance consumed (what the next window is conditioned on)."""
        d = self._decoding
        tokens, avg_logprob, no_speech_prob = window.tokens, window.avg_logprob, window.no_speech_prob
        ts_begin, step = d["timestamp_begin"], d["time_precision"]

        def segment(start, end, part) -> Segment | None:
            text = self.tokenizer.decode([t for t in part if t < d["eot"]])
            if not text.strip() or end < start:
                return None
            return Segment(round(start, 3), round(end, 3), text, avg_logprob, no_speech_prob, window.temperature,
                           window.compression_ratio, tuple(part))

        window_seconds = window_frames * HOP_LENGTH / SAMPLE_RATE
        if not timestamps:
            found = segment(offset, offset + window_seconds, tokens)
            return ([found] if found else []), window_frames, tokens
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
                return found, window_frames, tokens
            return found, (tokens[last - 1] - ts_begin) * INPUT_STRIDE, tokens[:last]
        duration = window_seconds
        stamps = [t for t in tokens if t >= ts_begin]
        if stamps and stamps[-1] != ts_begin:
            duration = (stamps[-1] - ts_begin) * step
        found = segment(offset, offset + duration, tokens)
        return ([found] if found else []), window_frames, tokens


def _source(audio, sample_rate: int = SAMPLE_RATE) -> AudioSource:
    """A file path or an array of samples as an ``AudioSource``."""
    return AudioSource.open(audio) if isinstance(audio, (str, os.PathLike)) else AudioSource.from_array(audio, sample_rate)


def _on_original_axis(result: Transcription, speech: SpeechAudio, duration: float) -> Transcription:
    """A transcription of the speech regions only, its times moved back onto the whole audio's."""

    def moved(start: float, end: float) -> tuple[float, float]:
        return (round(float(speech.original(start)), 3),
                round(float(max(speech.original(end, is_end=True, clamp_after=start), speech.original(start))), 3))

    segments = []
    for segment in result.segments:
        words = None if segment.words is None else tuple(
            replace(w, **dict(zip(("start", "end"), moved(w.start, w.end)))) for w in segment.words)
        start, end = moved(segment.start, segment.end)
        segments.append(replace(segment, start=start, end=end, words=words))
    result.stats.speech_seconds = result.stats.audio_seconds
    result.stats.audio_seconds = duration
    return replace(result, segments=segments, duration=duration)


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over its zlib-compressed bytes (OpenAI's repetition measure)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Along the last axis; entries at -inf stay there."""
    top = x.max(axis=-1, keepdims=True)
    shifted = x - np.where(np.isfinite(top), top, 0.0)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _timestamp_rules(scores: np.ndarray, tokens: list[int], ts_begin: int, eot: int, no_timestamps: int, max_initial: int) -> None:
    """OpenAI Whisper's ApplyTimestampRules on one row of scores, in place: the rules that follow
    from the tokens so far (the one that weighs timestamps against text is in ``_logprobs``)."""
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
