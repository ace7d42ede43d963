"""Speech recognition runtime: a Whisper package transcribed with numpy and the engine only.

The loop follows OpenAI's and faster-whisper's (greedy, beam 1): 30-second windows; per window
the encoder runs once and yields every decoder layer's cross-attention keys/values, which stay
in the engine while the decoder emits tokens under Whisper's rules (suppressed tokens, blank
suppression at the first step, timestamp rules). With timestamps the window is cut into
segments and the next window starts at the last complete segment; a window whose no-speech
probability is high and whose tokens are unlikely is skipped as silence.

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
from edge_sdk.runtimes.tasks import register_task
from edge_sdk.runtimes.tokenizer import TextTokenizer

NO_SPEECH_THRESHOLD = 0.6  # a window is silence when P(no speech) is above this ...
LOGPROB_THRESHOLD = -1.0  # ... and the decoded tokens' mean log-probability below this
INPUT_STRIDE = 2  # encoder positions per mel frame: one timestamp step is 2 frames (0.02 s)
# a window whose loudest sample is below -60 dBFS is silence and is not decoded: on digital silence
# Whisper's no-speech rule alone lets through its classic hallucination (tiny.en: " you", with
# P(no speech) 0.95 but a mean log-probability of -0.7)
SILENCE_PEAK = 1e-3


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass
class TranscriptionStats:
    audio_seconds: float = 0.0
    windows: int = 0
    tokens: int = 0
    features_seconds: float = 0.0
    encoder_seconds: float = 0.0
    decoder_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def real_time_factor(self) -> float:
        """Processing time over audio time (lower is faster; 0.1 = ten times real time)."""
        return self.total_seconds / self.audio_seconds if self.audio_seconds else 0.0


@dataclass
class Transcription:
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


@register_task("speech-recognition")
class SpeechRecognizer:
    """A loaded Whisper package. ``transcribe(path_or_array)`` returns a ``Transcription``."""

    def __init__(self, package: Package, threads: int | None = None):
        manifest = package.manifest
        self.package = package
        self._model = manifest["model"]
        self._decoding = manifest["decoding"]
        self._features = manifest["features"]
        min_version = manifest["runtime"].get("min_version")
        self._encoder = open_session(package.runtime, package.graph_path("encoder"), threads, min_version)
        self._decoder = open_session(package.runtime, package.graph_path("decoder"), threads, min_version)
        self.tokenizer = TextTokenizer.from_file(package.path(manifest["tokenizer"]["path"]))
        filters = np.load(package.path(self._features["mel_filters"]), allow_pickle=False)
        if filters.shape != (self._features["n_mels"], self._features["n_fft"] // 2 + 1):
            raise InvalidInputError(f"mel filter bank of shape {filters.shape} does not fit the package's features")
        self._filters = filters
        self._window_samples = int(self._features["chunk_seconds"]) * SAMPLE_RATE
        layers = int(self._model["num_layers"])
        self._past_names = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        self._present_names = [name.replace("past", "present") for name in self._past_names]
        self._cross_names = [f"cross.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]

    # ------------------------------------------------------------------ public

    @property
    def languages(self) -> list[str]:
        return sorted(self._decoding.get("languages") or {})

    def transcribe(
        self,
        audio,
        *,
        language: str | None = None,
        task: str = "transcribe",
        timestamps: bool = True,
        sample_rate: int = SAMPLE_RATE,
        progress=None,
    ) -> Transcription:
        """Transcribe a file path or an array of samples (at ``sample_rate``, mono or channels).

        ``language`` (multilingual models; None: detected on the first window), ``task``
        ("transcribe" or "translate"), ``timestamps`` (segment times from Whisper's timestamp
        tokens; False: one segment per 30-second window). ``progress(done_seconds, total_seconds)``
        is called after each window.
        """
        start = time.perf_counter()
        if task not in ("transcribe", "translate"):
            raise InvalidInputError(f"task must be 'transcribe' or 'translate', got {task!r}")
        if isinstance(audio, (str, os.PathLike)):
            source = AudioSource.open(audio)
        else:
            source = AudioSource.from_array(audio, sample_rate)
        try:
            result = self._transcribe(source, language, task, timestamps, progress)
        finally:
            source.close()
        result.stats.total_seconds = time.perf_counter() - start
        return result

    # ------------------------------------------------------------------ loop

    def _transcribe(self, source: AudioSource, language, task, timestamps, progress) -> Transcription:
        d = self._decoding
        stats = TranscriptionStats(audio_seconds=source.duration)
        total_frames = source.num_samples // HOP_LENGTH
        frames_per_window = self._window_samples // HOP_LENGTH
        segments: list[Segment] = []
        seek = 0
        language = self._check_language(language)
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
            features = log_mel(samples, self._filters, self._window_samples)
            t1 = time.perf_counter()
            cross = self._encoder.run({"input_features": features[None]}, keep=self._cross_names)
            t2 = time.perf_counter()
            if d["multilingual"] and language is None:
                language = self._detect_language(cross)
            tokens, avg_logprob, no_speech_prob = self._decode(cross, self._prompt(language, task, timestamps), timestamps)
            t3 = time.perf_counter()
            stats.features_seconds += t1 - t0
            stats.encoder_seconds += t2 - t1
            stats.decoder_seconds += t3 - t2
            stats.windows += 1
            stats.tokens += len(tokens)
            if no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD:
                seek += window_frames  # silence: nothing to emit
            else:
                found, advance = self._segments(tokens, offset, window_frames, timestamps, avg_logprob, no_speech_prob)
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

    def _prompt(self, language, task, timestamps) -> list[int]:
        d = self._decoding
        prompt = [d["sot"]]
        if d["multilingual"]:
            prompt += [d["languages"][language], d[task]]
        if not timestamps:
            prompt.append(d["no_timestamps"])
        return prompt

    def _detect_language(self, cross) -> str:
        d = self._decoding
        logits = self._run_decoder(np.array([[d["sot"]]], np.int64), self._empty_past(), cross)["logits"][0, -1]
        ids = np.array(list(d["languages"].values()))
        best = ids[int(np.argmax(logits[ids]))]
        return next(code for code, token in d["languages"].items() if token == best)

    def _empty_past(self) -> dict:
        heads, head_dim = int(self._model["num_heads"]), int(self._model["head_dim"])
        empty = np.zeros((1, heads, 0, head_dim), np.float32)
        return {name: empty for name in self._past_names}

    def _run_decoder(self, ids, past, cross) -> dict:
        return self._decoder.run({"input_ids": ids, **past, **{name: cross[name] for name in self._cross_names}},
                                 keep=self._present_names)

    def _decode(self, cross, prompt: list[int], timestamps: bool) -> tuple[list[int], float, float]:
        """Greedy tokens of one window (without end-of-text), their mean log-probability, P(no speech)."""
        d = self._decoding
        eot, ts_begin = d["eot"], d["timestamp_begin"]
        limit = min(d["max_target_positions"] // 2, d["max_target_positions"] - len(prompt))
        out = self._run_decoder(np.array([prompt], np.int64), self._empty_past(), cross)
        logits = out["logits"][0]
        no_speech_prob = 0.0
        if d.get("no_speech") is not None:
            at_sot = _log_softmax(logits[prompt.index(d["sot"])].astype(np.float64))
            no_speech_prob = float(np.exp(at_sot[d["no_speech"]]))
        last = logits[-1].astype(np.float64)
        suppress = np.array(d["suppress_tokens"], dtype=np.int64)
        begin_suppress = np.array(d["begin_suppress_tokens"], dtype=np.int64)
        max_initial = int(round(d["max_initial_timestamp"] / d["time_precision"]))
        tokens: list[int] = []
        sum_logprob = 0.0
        for _ in range(limit):
            scores = last.copy()
            if len(suppress):
                scores[suppress] = -np.inf
            if not tokens and len(begin_suppress):
                scores[begin_suppress] = -np.inf
            if timestamps:
                _timestamp_rules(scores, tokens, ts_begin, eot, d["no_timestamps"], max_initial)
            logprobs = _log_softmax(scores)
            token = int(np.argmax(scores))
            sum_logprob += float(logprobs[token])
            if token == eot:
                break
            tokens.append(token)
            past = {name: out[present] for name, present in zip(self._past_names, self._present_names)}
            out = self._run_decoder(np.array([[token]], np.int64), past, cross)
            last = out["logits"][0, -1].astype(np.float64)
        return tokens, sum_logprob / (len(tokens) + 1), no_speech_prob

    def _segments(self, tokens, offset, window_frames, timestamps, avg_logprob, no_speech_prob) -> tuple[list[Segment], int]:
        """Cut a window's tokens into segments; return them and how many frames to advance."""
        d = self._decoding
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
