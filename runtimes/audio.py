"""Audio in, Whisper's log-mel features out, in numpy (no torch).

``AudioSource`` gives 16 kHz mono samples by window: files that libsndfile reads (WAV, FLAC, OGG,
MP3 in recent builds) are read and resampled a window at a time, so a two-hour recording never
sits in memory whole; other formats go through ``librosa.load`` up to ``MAX_DECODED_SECONDS``.
``log_mel`` matches transformers' ``WhisperFeatureExtractor`` (tested to 1e-4).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from edge_sdk.errors import InvalidInputError, optional_import

SAMPLE_RATE = 16000
N_FFT, HOP_LENGTH = 400, 160
MAX_DECODED_SECONDS = 3 * 3600  # formats that must be decoded whole (through audioread): refuse longer
_MARGIN = 64  # native-rate samples read either side of a window, so resampling has context


class AudioSource:
    """16 kHz mono float32 samples of a file or an array, read by window.

    Example::

        audio = AudioSource.open("talk.wav")
        first_30s = audio.read(0, 30 * SAMPLE_RATE)
    """

    def __init__(self, samples: np.ndarray | None = None, sound_file=None, name: str = "audio"):
        self._samples, self._file, self.name = samples, sound_file, name
        if sound_file is not None:
            self._rate = sound_file.samplerate
            self.num_samples = int(round(sound_file.frames * SAMPLE_RATE / self._rate))
        else:
            self.num_samples = len(samples)

    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE

    @classmethod
    def from_array(cls, samples, sample_rate: int = SAMPLE_RATE) -> "AudioSource":
        """An array of samples ((n,) mono or (n, channels) / (channels, n) with channels <= 8)."""
        array = np.asarray(samples)
        if array.dtype.kind not in "fiu":
            raise InvalidInputError(f"audio samples must be numbers, got {array.dtype}")
        if array.dtype.kind in "iu":  # PCM integers -> [-1, 1]
            array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
        array = array.astype(np.float32)
        if array.ndim == 2:
            array = array.mean(axis=0 if array.shape[0] <= 8 < array.shape[1] else 1)
        if array.ndim != 1:
            raise InvalidInputError(f"audio must be 1-D (mono) or 2-D (channels), got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise InvalidInputError("the audio contains NaN or infinite samples")
        if sample_rate != SAMPLE_RATE:
            array = _resample(array, sample_rate)
        return cls(samples=np.ascontiguousarray(array, dtype=np.float32))

    @classmethod
    def open(cls, path: str | os.PathLike) -> "AudioSource":
        path = Path(path).expanduser()
        if not path.exists():
            raise InvalidInputError(f"audio file {path} does not exist")
        if path.is_dir():
            raise InvalidInputError(f"{path} is a directory; pass audio files")
        if path.stat().st_size == 0:
            raise InvalidInputError(f"audio file {path} is empty (0 bytes)")
        soundfile = optional_import("soundfile", "audio", "reading audio files")
        try:
            sound_file = soundfile.SoundFile(str(path))
        except Exception:  # not a libsndfile format: let librosa/audioread try (e.g. m4a via ffmpeg)
            return cls._decode_whole(path)
        if sound_file.frames <= 0:
            raise InvalidInputError(f"audio file {path} holds no samples")
        return cls(sound_file=sound_file, name=str(path))

    @classmethod
    def _decode_whole(cls, path: Path) -> "AudioSource":
        librosa = optional_import("librosa", "audio-formats", f"reading {path.suffix or 'this'} audio (not a WAV/FLAC/OGG/MP3)")

        try:
            duration = librosa.get_duration(path=str(path))
        except Exception as e:
            raise InvalidInputError(f"{path} is not an audio file edge-sdk can read ({type(e).__name__}); "
                                    "convert it to WAV or FLAC") from None
        if duration > MAX_DECODED_SECONDS:
            raise InvalidInputError(f"{path} is {duration / 3600:.1f} h long in a format that must be decoded whole; "
                                    "convert it to WAV or FLAC, which are read a window at a time")
        try:
            samples, _ = librosa.load(str(path), sr=SAMPLE_RATE, mono=True)
        except Exception as e:
            raise InvalidInputError(f"cannot decode {path} ({type(e).__name__}); convert it to WAV or FLAC") from None
        if samples.size == 0:
            raise InvalidInputError(f"audio file {path} holds no samples")
        return cls(samples=samples.astype(np.float32), name=str(path))

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples [start, start + count) at 16 kHz (shorter at the end of the audio)."""
        start, stop = max(0, start), min(self.num_samples, start + count)
        if stop <= start:
            return np.zeros(0, np.float32)
        if self._file is None:
            return self._samples[start:stop]
        return self._read_file(start, stop)

    def _read_file(self, start: int, stop: int) -> np.ndarray:
        rate = self._rate
        first = int(np.floor(start * rate / SAMPLE_RATE))
        last = int(np.ceil(stop * rate / SAMPLE_RATE))
        # start the block on a native sample that falls exactly on a 16 kHz sample (every 441 at
        # 44.1 kHz), so the window is not shifted by a fraction of a sample
        step = rate // math.gcd(rate, SAMPLE_RATE)
        lo, hi = max(0, (first - _MARGIN) // step * step), min(self._file.frames, last + _MARGIN)
        self._file.seek(lo)
        block = self._file.read(hi - lo, dtype="float32", always_2d=True).mean(axis=1)
        if rate != SAMPLE_RATE:
            block = _resample(block, rate)
        offset = int(round((start - lo * SAMPLE_RATE / rate)))
        window = block[offset : offset + (stop - start)]
        if not np.all(np.isfinite(window)):
            raise InvalidInputError(f"{self.name} contains NaN or infinite samples")
        return np.ascontiguousarray(window, dtype=np.float32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """To 16 kHz with soxr (HQ), the resampler librosa.resample uses by default, called directly:
    librosa's first resample costs ~1 s of lazy imports, a lot for a short clip."""
    soxr = optional_import("soxr", "audio", "resampling audio to 16 kHz")
    return soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def hann_window(length: int = N_FFT) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def log_mel(samples: np.ndarray, filters: np.ndarray, num_samples: int) -> np.ndarray:
    """Whisper's log-mel spectrogram (n_mels, num_samples // 160) of ``samples`` zero-padded to ``num_samples``."""
    audio = np.zeros(num_samples, np.float64)
    audio[: min(len(samples), num_samples)] = samples[:num_samples]
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    spectrum = np.fft.rfft(frames * hann_window(), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2)[:-1]  # Whisper drops the last frame
    mel = filters.astype(np.float64) @ power.T
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)
