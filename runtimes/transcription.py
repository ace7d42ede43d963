"""What a transcription is asked and what it returns: options, and the transcript with its segments, words and timings.

``TranscriptionOptions`` (faster-whisper's names and defaults, validated on construction), the
``Transcription`` with ``Segment`` and ``Word`` (SRT / WebVTT included), ``TranscriptionStats``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.runtimes import alignment
from edge_sdk.runtimes.vad import VadOptions

NO_SPEECH_THRESHOLD = 0.6  # a window is silence when P(no speech) is above this ...
LOGPROB_THRESHOLD = -1.0  # ... and the decoded tokens' mean log-probability below this
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
