"""Word timestamps from a Whisper decoder's alignment heads, numpy only (OpenAI whisper's method).

The decoder graph returns ``cross_qk``: the cross-attention scores (before the softmax) of the
heads that follow the audio. For one window's text tokens, run once as a teacher-forced prefill,
``token_frames`` turns them into a path through (token, 20 ms frame): softmax over the window's
frames, each head normalized over the tokens, a median filter of width 7 along time, the mean over
heads, and dynamic time warping on the negated matrix. ``word_timings`` groups the tokens into
words (at spaces, or per character for languages written without them), takes each word's start
and end from where the path enters its first and its last-plus-one token, and its probability as
the mean of its tokens'; punctuation is merged into the neighbouring words as OpenAI's is.

Example::

    path = token_frames(qk, num_frames)          # qk: (heads, tokens, 1500) of the window
    words, median = word_timings(tokenizer.decode, text_tokens, path, probabilities, split_on_spaces=True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOKENS_PER_SECOND = 50  # one encoder position per 20 ms
MEDIAN_FILTER_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"
SPACELESS_LANGUAGES = ("zh", "ja", "th", "lo", "my", "yue")  # split into words per character


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float  # seconds from the window's start
    end: float
    probability: float


def token_frames(qk: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The DTW path (token indices, frame indices) of ``qk`` (heads, tokens, 1500), the alignment
    heads' scores of the rows to align, over the window's first ``num_frames`` // 2 positions."""
    weights = qk[:, :, : max(num_frames // 2, 1)].astype(np.float64)
    weights = np.exp(weights - weights.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = (weights - weights.mean(axis=-2, keepdims=True)) / np.where(std > 0, std, 1.0)
    weights = median_filter(weights, MEDIAN_FILTER_WIDTH)
    return dtw(-weights.mean(axis=0))


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of odd ``width`` along the last axis, reflect-padded (as OpenAI's)."""
    pad = width // 2
    if x.shape[-1] <= pad:  # too short to reflect
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1), axis=-1)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic time warping through ``cost`` (tokens, frames) from (0, 0) to the last cell, moving
    one token, one frame, or both per step; the cheapest path as (token indices, frame indices).

    Row by row in numpy: within a row the recursion ``D[i, j] = min(A[j], x[j] + D[i, j - 1])``
    (``A[j] = x[j] + min(D[i-1, j-1], D[i-1, j])``) unrolls to ``S[j] + min over k <= j of
    (A[k] - S[k])`` with ``S`` the row's prefix sums: a running minimum."""
    n, m = cost.shape
    accumulated = np.full((n + 1, m + 1), np.inf)
    accumulated[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0: diagonal, 1: from the token above, 2: from the left
    for i in range(1, n + 1):
        x = cost[i - 1]
        up, diagonal = accumulated[i - 1, 1:], accumulated[i - 1, :-1]
        from_above = np.minimum(diagonal, up)
        a = x + from_above
        prefix = np.cumsum(x)
        best = np.minimum.accumulate(a - prefix)
        row = prefix + best
        previous_best = np.concatenate([[np.inf], best[:-1]])
        left = previous_best <= a - prefix  # the running minimum came from an earlier frame
        accumulated[i, 1:] = np.where(np.isfinite(row), row, np.inf)
        trace[i, 1:] = np.where(left, 2, np.where(diagonal < up, 0, 1))
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    tokens, frames = [], []
    while i > 0 or j > 0:
        tokens.append(i - 1)
        frames.append(j - 1)
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(tokens[::-1]), np.array(frames[::-1])


def split_words(decode, tokens: list[int], split_on_spaces: bool) -> tuple[list[str], list[list[int]]]:
    """Tokens grouped into whole characters (a multi-byte character may span tokens), then, with
    ``split_on_spaces``, into words: a piece starting with a space or being punctuation starts one."""
    pieces, groups, current = [], [], []
    full = decode(tokens)
    offset = 0
    for token in tokens:
        current.append(token)
        text = decode(current)
        if "\ufffd" not in text or full[offset + text.index("\ufffd") : offset + text.index("\ufffd") + 1] == "\ufffd":
            pieces.append(text)
            groups.append(current)
            current = []
            offset += len(text)
    if current:
        pieces.append(decode(current))
        groups.append(current)
    if not split_on_spaces:
        return pieces, groups
    words, word_tokens = [], []
    for piece, group in zip(pieces, groups):
        if not words or piece.startswith(" ") or piece.strip() in _PUNCTUATION:
            words.append(piece)
            word_tokens.append(list(group))
        else:
            words[-1] += piece
            word_tokens[-1].extend(group)
    return words, word_tokens


_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def word_timings(decode, text_tokens: list[int], path: tuple[np.ndarray, np.ndarray], probabilities: np.ndarray,
                 split_on_spaces: bool, prepended: str = PREPEND_PUNCTUATIONS,
                 appended: str = APPEND_PUNCTUATIONS) -> tuple[list[WordTiming], float]:
    """Words of ``text_tokens`` with their times (seconds from the window's start) from the DTW
    ``path`` over rows [no-timestamps token, text tokens...] and each token's ``probabilities``;
    and the median word duration (capped at 0.7 s, as OpenAI's), which its later hacks use too."""
    if not text_tokens:
        return [], 0.0
    words, groups = split_words(decode, text_tokens, split_on_spaces)
    token_indices, frame_indices = path
    jumps = np.diff(token_indices, prepend=-1).astype(bool)  # where the path enters a new token row
    jump_times = frame_indices[jumps] / TOKENS_PER_SECOND
    boundaries = np.concatenate([[0], np.cumsum([len(g) for g in groups])])
    timings = []
    for word, group, begin, end in zip(words, groups, boundaries[:-1], boundaries[1:]):
        timings.append(WordTiming(word, group, float(jump_times[min(begin, len(jump_times) - 1)]),
                                  float(jump_times[min(end, len(jump_times) - 1)]), float(np.mean(probabilities[begin:end]))))
    durations = np.array([t.end - t.start for t in timings])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    if median:
        _truncate_at_sentence_ends(timings, 2 * median)
    merge_punctuations(timings, prepended, appended)
    return timings, median


def _truncate_at_sentence_ends(timings: list[WordTiming], longest: float) -> None:
    """OpenAI's hack: a word at a sentence boundary is at most twice the median word duration."""
    for i in range(1, len(timings)):
        if timings[i].end - timings[i].start > longest:
            if timings[i].word in SENTENCE_END_MARKS:
                timings[i].end = timings[i].start + longest
            elif timings[i - 1].word in SENTENCE_END_MARKS:
                timings[i].start = timings[i].end - longest


def merge_punctuations(timings: list[WordTiming], prepended: str = PREPEND_PUNCTUATIONS,
                       appended: str = APPEND_PUNCTUATIONS) -> None:
    """Opening punctuation joins the word after it, closing punctuation the word before it (their
    times are the word's); the emptied entries keep their tokens' count at zero."""
    i, j = len(timings) - 2, len(timings) - 1
    while i >= 0:
        previous, following = timings[i], timings[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word, following.tokens = previous.word + following.word, previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(timings):
        previous, following = timings[i], timings[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word, previous.tokens = previous.word + following.word, previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1
