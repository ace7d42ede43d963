"""Segments and words: a decoded window cut at its timestamp tokens, words timed by the alignment heads, times mapped back after VAD."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge_sdk.runtimes import alignment
from edge_sdk.runtimes.audio import HOP_LENGTH, SAMPLE_RATE
from edge_sdk.runtimes.speech_decoding import WindowDecoder
from edge_sdk.runtimes.transcription import Segment, Transcription, TranscriptionOptions, WindowDecoding, Word
from edge_sdk.runtimes.vad import SpeechAudio

CROSS_QK = "cross_qk"  # the decoder output with the alignment heads' cross-attention scores (word timestamps)
INPUT_STRIDE = 2  # encoder positions per mel frame: one timestamp step is 2 frames (0.02 s)


def single_timestamp_ending(tokens: list[int], timestamp_begin: int) -> bool:
    """Whether a window's tokens end on text and then one timestamp (its speech runs on past the window)."""
    return len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]


def cut_segments(decoder: WindowDecoder, window: WindowDecoding, offset: float, window_frames: int,
                 timestamps: bool) -> tuple[list[Segment], int, list[int]]:
    """Cut a window's tokens into segments; return them, how many frames to advance, and the
    tokens the advance consumed (what the next window is conditioned on)."""
    d = decoder.decoding
    tokens, avg_logprob, no_speech_prob = window.tokens, window.avg_logprob, window.no_speech_prob
    ts_begin, step = d["timestamp_begin"], d["time_precision"]

    def segment(start, end, part) -> Segment | None:
        text = decoder.tokenizer.decode([t for t in part if t < d["eot"]])
        if not text.strip() or end < start:
            return None
        return Segment(round(start, 3), round(end, 3), text, avg_logprob, no_speech_prob, window.temperature,
                       window.compression_ratio, tuple(part))

    window_seconds = window_frames * HOP_LENGTH / SAMPLE_RATE
    if not timestamps:
        found = segment(offset, offset + window_seconds, tokens)
        return ([found] if found else []), window_frames, tokens
    is_ts = [t >= ts_begin for t in tokens]
    single_ending = single_timestamp_ending(tokens, ts_begin)
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


def add_words(decoder: WindowDecoder, segments: list[Segment], cross, language: str, opts: TranscriptionOptions,
              window_frames: int, offset: float, last_speech: float) -> tuple[list[Segment], float]:
    """The window's segments with their words (OpenAI's add_word_timestamps): its text tokens
    run once more through the decoder after the start-of-transcript sequence and
    <|notimestamps|>, the alignment heads' scores warped onto the window's frames; segment
    bounds follow their words, and every word lies inside its segment, after the word before it."""
    d = decoder.decoding
    per_segment = [[t for t in s.tokens if t < d["eot"]] for s in segments]
    text_tokens = [t for tokens in per_segment for t in tokens]
    if not text_tokens:
        return segments, last_speech
    sot_sequence = decoder.sot_sequence(language, opts.task, True)
    tokens = sot_sequence + [d["no_timestamps"]] + text_tokens + [d["eot"]]
    with decoder.state(cross) as state:
        logits = state.prefill([tokens])[0]
        qk = state.outputs[CROSS_QK][0]
    rows = slice(len(sot_sequence), len(tokens) - 1)  # <|notimestamps|> and the text tokens
    scores = logits[rows, : d["eot"]].astype(np.float64)
    probabilities = np.exp(scores - scores.max(-1, keepdims=True))
    probabilities = (probabilities / probabilities.sum(-1, keepdims=True))[np.arange(len(text_tokens)), text_tokens]
    path = alignment.token_frames(qk[:, rows], window_frames)
    timings, median = alignment.word_timings(decoder.tokenizer.decode, text_tokens, path, probabilities,
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


def on_original_axis(result: Transcription, speech: SpeechAudio, duration: float) -> Transcription:
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
