"""Voice activity detection: the Silero VAD model (bundled in speech packages) through the package's engine.

The model scores 32 ms chunks of 16 kHz audio (512 samples, with the 64 before them as context and
a recurrent state carried from chunk to chunk) with a speech probability. ``speech_regions`` turns
those scores into speech regions with faster-whisper's parameters and defaults (``VadOptions``):
speech starts where the probability reaches ``threshold`` and ends after ``min_silence_duration_ms``
below ``neg_threshold``; regions shorter than ``min_speech_duration_ms`` are dropped, longer than
``max_speech_duration_s`` split at their longest pause, and every region is padded by
``speech_pad_ms`` on both sides. ``SpeechAudio`` then reads only the speech of an ``AudioSource``,
end to end, and maps times in it back onto the original audio.

Example::

    vad = VoiceActivityDetector(package.path("vad/silero_vad.onnx"), "onnxruntime")
    regions = vad.speech_regions(AudioSource.open("talk.wav"), VadOptions(min_silence_duration_ms=500))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.runtimes.audio import SAMPLE_RATE, AudioSource
from edge_sdk.runtimes.backend import open_session

CHUNK = 512  # samples per speech probability (32 ms at 16 kHz)
CONTEXT = 64  # samples of the chunk before, fed with each chunk
STATE_SHAPE = (2, 1, 128)
_READ_BLOCK = 30 * SAMPLE_RATE  # the audio is scored 30 s at a time
_MIN_SPLIT_PAUSE = int(0.098 * SAMPLE_RATE)  # a pause at least this long may split an over-long region


@dataclass(frozen=True)
class VadOptions:
    """Silero VAD parameters, with faster-whisper's names and defaults."""

    threshold: float = 0.5  # speech starts where the speech probability reaches this ...
    neg_threshold: float | None = None  # ... and pauses below this (None: threshold - 0.15)
    min_speech_duration_ms: int = 0  # shorter speech regions are dropped
    max_speech_duration_s: float = math.inf  # longer ones are split at their longest pause (or cut)
    min_silence_duration_ms: int = 2000  # a pause must last this long to end a region
    speech_pad_ms: int = 400  # kept on each side of a region

    def __post_init__(self):
        def number(name, low, high=math.inf, infinite=False):
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) and (
                math.isfinite(value) or (infinite and value == math.inf)) and low <= value <= high
            if not ok:
                raise InvalidInputError(f"vad_parameters: {name} must be a number in [{low}, {high}], got {value!r}")

        number("threshold", 0.0, 1.0)
        if self.neg_threshold is not None:
            number("neg_threshold", 0.0, 1.0)
        number("min_speech_duration_ms", 0)
        number("max_speech_duration_s", 0.1, infinite=True)
        number("min_silence_duration_ms", 0)
        number("speech_pad_ms", 0)

    @classmethod
    def from_value(cls, value) -> "VadOptions":
        """``None`` (defaults), a ``VadOptions``, or a dict of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise InvalidInputError(f"vad_parameters: unknown parameter(s) {', '.join(unknown)}; "
                                        f"known: {', '.join(cls.__dataclass_fields__)}")
            return cls(**value)
        raise InvalidInputError(f"vad_parameters must be a dict or VadOptions, got {type(value).__name__}")


class VoiceActivityDetector:
    """The Silero VAD graph at ``path``, opened with the engine ``runtime`` ("onnxruntime" or "openvino")."""

    def __init__(self, path: Path, runtime: str, threads: int | None = 1):
        self._session = open_session(runtime, Path(path), threads)

    def probabilities(self, source: AudioSource) -> np.ndarray:
        """One speech probability per 512-sample chunk of ``source`` (the last chunk zero-padded)."""
        state = np.zeros(STATE_SHAPE, np.float32)
        context = np.zeros((1, CONTEXT), np.float32)
        scores = []
        for block_start in range(0, source.num_samples, _READ_BLOCK):
            block = source.read(block_start, _READ_BLOCK)
            if len(block) % CHUNK:
                block = np.pad(block, (0, CHUNK - len(block) % CHUNK))
            for chunk in block.reshape(-1, CHUNK):
                feed = np.concatenate([context, chunk[None]], axis=1)
                outputs = self._session.run({"input": feed, "state": state})
                state = outputs["stateN"]
                scores.append(float(outputs["output"][0, 0]))
                context = feed[:, -CONTEXT:]
        return np.asarray(scores, np.float32)

    def speech_regions(self, source: AudioSource, options: VadOptions | None = None) -> list[tuple[int, int]]:
        """Speech regions of ``source`` as (start, end) sample offsets, padded, in order, not overlapping."""
        return regions_from_probabilities(self.probabilities(source), source.num_samples, options or VadOptions())


def regions_from_probabilities(probabilities: np.ndarray, num_samples: int, options: VadOptions) -> list[tuple[int, int]]:
    """Speech regions (start, end samples) from per-chunk speech probabilities (see the module's docstring)."""
    low = options.neg_threshold if options.neg_threshold is not None else max(options.threshold - 0.15, 0.01)
    min_silence = options.min_silence_duration_ms * SAMPLE_RATE / 1000
    pad = int(options.speech_pad_ms * SAMPLE_RATE / 1000)
    # hysteresis: in speech from a chunk >= threshold until a pause (a run of chunks < low) long enough
    regions, pauses = [], []  # pauses: (start, end) of the short pauses inside the current region
    start = pause = None
    for i, p in enumerate(probabilities):
        position = i * CHUNK
        if start is None:
            if p >= options.threshold:
                start, pause, pauses = position, None, []
            continue
        if p >= options.threshold and pause is not None:
            pauses.append((pause, position))
            pause = None
        elif p < low and pause is None:
            pause = position
        if pause is not None and position + CHUNK - pause >= min_silence:
            regions.append((start, pause, pauses))
            start = pause = None
    if start is not None:
        regions.append((start, num_samples if pause is None else pause, pauses))

    max_speech = options.max_speech_duration_s * SAMPLE_RATE - CHUNK - 2 * pad
    split = []
    for start, end, inside in regions:
        split += _split_long(start, end, inside, max_speech)
    min_speech = options.min_speech_duration_ms * SAMPLE_RATE / 1000
    kept = [(s, e) for s, e in split if e - s >= max(min_speech, 1)]

    padded = []  # pad each side; where two regions are closer than two pads, meet in the middle
    for i, (s, e) in enumerate(kept):
        s = max(0, s - pad) if not padded else s
        if i + 1 < len(kept):
            gap = kept[i + 1][0] - e
            e = e + (gap // 2 if gap < 2 * pad else pad)
            kept[i + 1] = (kept[i + 1][0] - (gap - gap // 2 if gap < 2 * pad else pad), kept[i + 1][1])
        else:
            e = min(num_samples, e + pad)
        padded.append((int(s), int(min(e, num_samples))))
    return [(s, e) for s, e in padded if e > s]


def _split_long(start: int, end: int, pauses: list, max_speech: float) -> list[tuple[int, int]]:
    """A region longer than ``max_speech`` split at its longest pause (of at least 98 ms) inside it,
    recursively; with no such pause, cut into equal parts."""
    if end - start <= max_speech:
        return [(start, end)]
    usable = [(b - a, a, b) for a, b in pauses if b - a >= _MIN_SPLIT_PAUSE and start < a and b < end]
    if usable:
        _, a, b = max(usable)
        return (_split_long(start, a, [p for p in pauses if p[1] <= a], max_speech)
                + _split_long(b, end, [p for p in pauses if p[0] >= b], max_speech))
    parts = int(math.ceil((end - start) / max(max_speech, CHUNK)))
    bounds = np.linspace(start, end, parts + 1).round().astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


class SpeechAudio:
    """The speech regions of an ``AudioSource`` read end to end (an ``AudioSource`` of its own: ``read``,
    ``num_samples``, ``duration``), and ``original(seconds)`` mapping a time in it back to the source."""

    def __init__(self, source: AudioSource, regions: list[tuple[int, int]]):
        self._source, self.regions = source, regions
        lengths = np.array([e - s for s, e in regions], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])  # where each region starts in the speech stream
        self.num_samples = int(self._starts[-1])
        self.name = source.name

    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE

    def read(self, start: int, count: int) -> np.ndarray:
        start, stop = max(0, start), min(self.num_samples, start + count)
        parts = []
        for i, (s, e) in enumerate(self.regions):
            lo, hi = max(start, self._starts[i]), min(stop, self._starts[i + 1])
            if lo < hi:
                parts.append(self._source.read(int(s + lo - self._starts[i]), int(hi - lo)))
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def original(self, seconds: float, is_end: bool = False, clamp_after: float | None = None) -> float:
        """Where ``seconds`` into the speech lies in the original audio; an end on a region's boundary
        stays in the region before it. ``clamp_after`` (the start of what ends here): an end that ran
        less than 0.5 s into the next region (Whisper's segment ends overshoot) is kept at the end of
        the start's region, rather than stretched across the silence between them."""
        if not self.regions:
            return seconds
        position = seconds * SAMPLE_RATE
        index = self._region(position, is_end)
        if clamp_after is not None:
            first = self._region(clamp_after * SAMPLE_RATE, False)
            if index > first and position - self._starts[index] < SAMPLE_RATE // 2:
                return self.regions[first][1] / SAMPLE_RATE
        return (self.regions[index][0] + position - self._starts[index]) / SAMPLE_RATE

    def _region(self, position: float, is_end: bool) -> int:
        index = int(np.searchsorted(self._starts[1:], position, side="left" if is_end else "right"))
        return min(index, len(self.regions) - 1)

    def close(self) -> None:
        self._source.close()
