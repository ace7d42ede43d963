"""The speech endpoints: ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (OpenAI's multipart forms)."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, PlainTextResponse

from edge_sdk.errors import EdgeSDKError, optional_import
from edge_sdk.serving.cascade import speech_confidence
from edge_sdk.serving.errors import APIError
from edge_sdk.serving.hub import SPEECH, Served, answer_headers, stop_when
from edge_sdk.serving.validation import form_number, form_text


async def translations(server, request):
    """OpenAI's /v1/audio/translations: the speech in English (Whisper's translate task; multilingual models)."""
    return await transcriptions(server, request, task="translate")


async def transcriptions(server, request, task: str = "transcribe"):
    """OpenAI's /v1/audio/transcriptions: a multipart upload transcribed (json, text, srt, vtt or
    verbose_json with segments and words); a cascade's student judged on its whole transcript."""
    started = time.perf_counter()
    try:
        form = await request.form(max_files=1, max_fields=32, max_part_size=server.options.max_body_bytes)
    except APIError:
        raise
    except Exception as e:
        raise APIError(400, f"the body must be multipart/form-data with a 'file' part ({e})") from None
    served = server.hub.get(form_text(form, "model"), SPEECH)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "'file' is required: the audio to transcribe, as a multipart file part", param="file")
    data = await upload.read()
    if not data:
        raise APIError(400, "the uploaded file is empty (0 bytes); send audio", param="file")
    response_format = form_text(form, "response_format") or "json"
    if response_format not in ("json", "text", "srt", "vtt", "verbose_json"):
        raise APIError(400, f"'response_format' must be json, text, srt, vtt or verbose_json, got {response_format!r}",
                       param="response_format")
    # OpenAI's semantics: 0 (the default) decodes at 0 and raises the temperature on a failing
    # window (the model's fallback schedule); above 0, that temperature alone
    temperature = form_number(form, "temperature", low=0, high=1)
    granularities = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    if any(g not in ("segment", "word") for g in granularities):
        raise APIError(400, f"'timestamp_granularities' entries must be 'segment' or 'word', got {granularities!r}",
                       param="timestamp_granularities")
    words = "word" in granularities
    if words and response_format != "verbose_json":
        raise APIError(400, "word timestamps come with response_format 'verbose_json'", param="timestamp_granularities")
    overrides = {"language": form_text(form, "language") or None,
                 "initial_prompt": form_text(form, "prompt") or None, "temperature": temperature or None, "task": task,
                 "word_timestamps": words}
    samples, rate = await asyncio.get_running_loop().run_in_executor(None, _decode_audio, data, upload.filename)
    duration = len(samples) / rate
    if duration > server.options.max_audio_seconds:
        raise APIError(413, f"the audio is {duration:.0f} s long; this server transcribes at most "
                            f"{server.options.max_audio_seconds:.0f} s (edge-sdk serve --max-audio-seconds)",
                       param="file", code="audio_too_long")
    info = {"model": served.name, "endpoint": "transcriptions", "audio_seconds": round(duration, 3)}
    cancelled = threading.Event()
    deadline = started + server.options.request_timeout
    progress = stop_when(cancelled)

    def transcribe(model: Served):
        try:
            return model.runtime.transcribe(samples, sample_rate=rate, progress=progress, **overrides)
        except EdgeSDKError as e:
            raise APIError(400, str(e)) from None

    answering, escalated, confidence = served, False, None
    result = await server.run_serial(served, lambda: transcribe(served), cancelled, deadline, request)
    if served.fallback is not None:
        confidence = speech_confidence(result).value
        if server.escalates(served, confidence):
            escalated, answering = True, server.hub.models[served.fallback.teacher]
            result = await server.run_serial(answering, lambda: transcribe(answering), cancelled, deadline, request)
    server.metrics.audio_seconds.labels(answering.name).inc(duration)
    headers = answer_headers(served, answering, escalated, confidence)
    info.update(answered_by=answering.name, escalated=escalated, confidence=confidence)
    if server.options.log_content:
        info["output"] = result.text
    server.record(info, 200, started)
    if response_format == "text":
        return PlainTextResponse(result.text, headers=headers)
    if response_format == "srt":
        return PlainTextResponse(result.to_srt(), headers=headers)
    if response_format == "vtt":
        return PlainTextResponse(result.to_vtt(), headers=headers, media_type="text/vtt")
    if response_format == "json":
        return JSONResponse({"text": result.text}, headers=headers)
    segments = [{"id": i, "seek": int(s.start * 100), "start": s.start, "end": s.end, "text": s.text, "tokens": [],
                 "temperature": s.temperature, "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
                 "no_speech_prob": s.no_speech_prob} for i, s in enumerate(result.segments)]
    body = {"task": task, "language": result.language, "duration": result.duration, "text": result.text,
            "segments": segments, "model": answering.name}
    if words:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end, "probability": w.probability}
                         for w in result.words]
    return JSONResponse(body, headers=headers)


def _decode_audio(data: bytes, filename: str | None) -> tuple[np.ndarray, int]:
    """Samples and rate of an uploaded file (what libsndfile reads: WAV, FLAC, OGG, MP3)."""
    soundfile = optional_import("soundfile", "audio", "transcribing uploaded audio")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:
        raise APIError(400, f"the uploaded file{' ' + repr(filename) if filename else ''} is not audio this server can "
                            "decode; send WAV, FLAC, OGG or MP3", param="file", code="invalid_audio") from None
    if samples.size == 0:
        raise APIError(400, "the uploaded audio has no samples", param="file", code="invalid_audio")
    if not np.all(np.isfinite(samples)):
        raise APIError(400, "the uploaded audio contains NaN or infinite samples", param="file", code="invalid_audio")
    return samples.mean(axis=1), int(rate)
