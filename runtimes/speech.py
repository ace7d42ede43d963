"""Speech recognition runtime: the recognizer and its windows (a Whisper package transcribed with numpy and the engine only).

The loop follows OpenAI's and faster-whisper's, with faster-whisper's defaults: 30-second windows;
per window the encoder runs once and yields every decoder layer's cross-attention keys/values,
which the ``WindowDecoder`` (``speech_decoding``: greedy, sampling, beam search, Whisper's logit
rules) takes on every step. A window whose text compresses too well (repetition) or is too
unlikely is decoded again at the next temperature, by sampling ``best_of`` candidates; each window
is prompted with the text before it (``condition_on_previous_text``, reset after a
high-temperature window). With timestamps the window is cut into segments (``speech_segments``,
which also times the words) and the next window starts at the last complete segment; a window
whose no-speech probability is high and whose tokens are unlikely is skipped as silence. Options
and results are in ``transcription``.

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

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.package import Package
from edge_sdk.runtimes.audio import HOP_LENGTH, SAMPLE_RATE, AudioSource, log_mel
from edge_sdk.runtimes.backend import open_session
from edge_sdk.runtimes.decoder import DecoderGraph
from edge_sdk.runtimes.options import with_overrides
from edge_sdk.runtimes.speech_decoding import WindowDecoder, compression_ratio
from edge_sdk.runtimes.speech_segments import CROSS_QK, add_words, cut_segments, on_original_axis, single_timestamp_ending
from edge_sdk.runtimes.tokenizer import TextTokenizer
from edge_sdk.runtimes.transcription import (LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD, TEMPERATURES, Segment, Transcription,
                                             TranscriptionOptions, TranscriptionStats, WindowDecoding, Word)
from edge_sdk.runtimes.vad import SpeechAudio, VoiceActivityDetector

__all__ = ["LOGPROB_THRESHOLD", "NO_SPEECH_THRESHOLD", "TEMPERATURES", "Segment", "SpeechRecognizer", "Transcription",
           "TranscriptionOptions", "TranscriptionStats", "WindowDecoding", "Word", "compression_ratio"]

# a window whose loudest sample is below -60 dBFS is silence and is not decoded: on digital silence
# Whisper's no-speech rule alone lets through its classic hallucination (tiny.en: " you", with
# P(no speech) 0.95 but a mean log-probability of -0.7)
SILENCE_PEAK = 1e-3


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
        description = package.graph("decoder")
        graph = DecoderGraph.from_description(description, self._model)
        self._cross_names = list(graph.fixed)  # the encoder's outputs the decoder takes on every call
        # one window for all rows (batch axis 1: rows fold into the query axis), or, in packages
        # exported before, the window's values tiled per row (a dynamic batch axis)
        shapes = {entry["name"]: entry.get("shape") or [None] for entry in description["inputs"]}
        one_window = all(shapes[name][0] == 1 for name in self._cross_names)
        self._decoder_outputs = {entry["name"] for entry in description["outputs"]}
        self.tokenizer = TextTokenizer.from_file(package.path(manifest["tokenizer"]["path"]))
        session = open_session(package.runtime, package.graph_path("decoder"), threads, min_version)
        self.decoder = WindowDecoder(session, graph, self._decoding, self.tokenizer, self._model.get("vocab_size"), one_window)
        filters = np.load(package.path(self._features["mel_filters"]), allow_pickle=False)
        if filters.shape != (self._features["n_mels"], self._features["n_fft"] // 2 + 1):
            raise InvalidInputError(f"mel filter bank of shape {filters.shape} does not fit the package's features")
        self._filters = filters
        self._window_samples = int(self._features["chunk_seconds"]) * SAMPLE_RATE
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
                result = on_original_axis(self._transcribe(speech, language, opts, progress), speech, source.duration)
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
        return self.decoder.language_probabilities(cross)

    def decode(self, cross: dict, options: TranscriptionOptions | None = None, **overrides) -> WindowDecoding:
        """The tokens of one window under Whisper's rules (suppressed tokens, blank suppression at the
        first step, timestamp rules), from its encoded ``cross`` keys/values, at the options' first
        temperature (0: beam search of ``beam_size``, greedy at 1; above: the best of ``best_of``
        samples), with ``initial_prompt`` and ``prefix``. Options as in ``transcribe``; a
        multilingual model without a ``language`` detects it first."""
        opts = self.options(options, **overrides)
        language = self._check_language(opts.language, opts.task) or self.detect_language(cross)
        decoder = self.decoder
        prompt = decoder.previous(decoder.text_tokens(opts.initial_prompt))
        prompt += decoder.sot_sequence(language, opts.task, opts.timestamps) + decoder.text_tokens(opts.prefix)
        return decoder.decode(cross, prompt, opts, opts.temperature[0], np.random.default_rng(0))

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
        decoder = self.decoder
        context = decoder.text_tokens(opts.initial_prompt)  # what the next window is prompted with
        prefix = decoder.text_tokens(opts.prefix)  # the first window's only
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
            prompt = decoder.previous(context) + decoder.sot_sequence(language, opts.task, opts.timestamps) + prefix
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
                found, advance, consumed = cut_segments(decoder, window, offset, window_frames, opts.timestamps)
                start, seek = seek, seek + (advance if advance > 0 else window_frames)
                if opts.word_timestamps and found:
                    t4 = time.perf_counter()
                    found, last_speech = add_words(decoder, found, cross, language, opts, window_frames, offset, last_speech)
                    stats.alignment_seconds += time.perf_counter() - t4
                    words = [w for segment in found for w in segment.words]
                    # OpenAI's: the next window starts where the last word ended, unless this one
                    # ended on a single timestamp (text running on to the window's end)
                    ends_on_one = single_timestamp_ending(window.tokens, self._decoding["timestamp_begin"])
                    if words and words[-1].end > offset and not ends_on_one:
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

    def _decode_with_fallback(self, cross, prompt: list[int], opts: TranscriptionOptions, rng, stats) -> WindowDecoding:
        """Decode at each temperature in turn until the window is neither repetitive (compression
        ratio above its threshold) nor unlikely (mean log-probability below its threshold); a window
        that looks like silence is not retried. If every temperature fails, the likeliest decoding
        whose compression ratio was acceptable (else the likeliest), as faster-whisper keeps."""
        tried = []
        for i, temperature in enumerate(opts.temperature):
            if i:
                stats.fallbacks += 1
            window = self.decoder.decode(cross, prompt, opts, temperature, rng)
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


def _source(audio, sample_rate: int = SAMPLE_RATE) -> AudioSource:
    """A file path or an array of samples as an ``AudioSource``."""
    return AudioSource.open(audio) if isinstance(audio, (str, os.PathLike)) else AudioSource.from_array(audio, sample_rate)
