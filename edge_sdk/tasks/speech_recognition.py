"""``automatic-speech-recognition``: Whisper-style encoder + KV-cache decoder transcribing audio."""

from __future__ import annotations

from pathlib import Path

from edge_sdk.tasks import Budget, Metric, Projection, Task, register

REAL_TIME_FACTOR = Metric("real_time_factor", "real-time factor", "x audio duration", higher_is_better=False)
ENCODER_SECONDS = Metric("encoder_seconds", "encoder s", "s", higher_is_better=False)
DECODER_SECONDS = Metric("decoder_seconds", "decoder s", "s", higher_is_better=False)
AUDIO_SECONDS = Metric("audio_seconds", "audio s", "s", higher_is_better=True)
SPEECH_SAMPLE = Path(__file__).resolve().parent.parent / "data" / "speech-sample.wav"  # espeak-ng, 7.8 s, 16 kHz


def workload(model, options):
    """Transcribe ``options.audio`` (default: the bundled 7.8 s espeak-ng sentence)."""
    audio = Path(options.audio) if options.audio else SPEECH_SAMPLE

    def run() -> dict:
        s = model.transcribe(audio).stats
        return {REAL_TIME_FACTOR.key: s.real_time_factor, AUDIO_SECONDS.key: s.audio_seconds,
                ENCODER_SECONDS.key: s.encoder_seconds, DECODER_SECONDS.key: s.decoder_seconds}

    return run, {"audio": str(audio)}


def figures(metrics: dict) -> str:
    return f"RTF {metrics[REAL_TIME_FACTOR.key]:.4f}"


TASK = register(Task(
    name="automatic-speech-recognition",
    summary="transcribe (or translate) speech with a Whisper-style model",
    runtime="edge_sdk.runtimes.speech:SpeechRecognizer",
    headline=REAL_TIME_FACTOR,
    metrics=(REAL_TIME_FACTOR, ENCODER_SECONDS, DECODER_SECONDS, AUDIO_SECONDS),
    workload=workload,
    figures=figures,
    projection=Projection(compute_bound=(REAL_TIME_FACTOR.key,)),
    budgets=(Budget("speech_real_time_factor", REAL_TIME_FACTOR),),
    aliases=("speech-recognition",),
    exporter="edge_sdk.converters.whisper:export_whisper",
    accuracy="edge_sdk.evaluation:speech_package_accuracy",
    command="transcribe",
    try_it="edge-sdk transcribe {path} audio.wav",
    calibration="audio files",
))
