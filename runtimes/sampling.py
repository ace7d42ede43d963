"""Choosing the next token from logits: repetition penalty, greedy, temperature, top-k, top-p. numpy only."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log(softmax) along the last axis, in float64 (token log-probabilities, scoring); entries at
    -inf (filtered tokens) stay there."""
    scores = np.asarray(logits, dtype=np.float64)
    top = scores.max(axis=-1, keepdims=True)
    shifted = scores - np.where(np.isfinite(top), top, 0.0)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def filter_top_k(logits: np.ndarray, top_k: int) -> np.ndarray:
    """Set all but the ``top_k`` largest logits of each row to -inf (0 keeps all)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -top_k, axis=-1)[..., -top_k, None]
    return np.where(logits < kth, -np.inf, logits)


def filter_top_p(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Nucleus filtering: keep the smallest set of tokens whose probability sums to >= ``top_p``."""
    if top_p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1)
    sorted_probs = np.take_along_axis(softmax(logits), order, axis=-1)
    cumulative = np.cumsum(sorted_probs, axis=-1)
    # a token is dropped when the tokens ranked above it already reach top_p; the first always stays
    drop_sorted = (cumulative - sorted_probs) >= top_p
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def penalize_repetition(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's repetition penalty (as transformers applies it): the logits of tokens already ``seen``
    (batch, vocab) are divided by ``penalty`` where positive and multiplied by it where negative."""
    penalized = np.where(logits < 0, logits * penalty, logits / penalty)
    return np.where(seen, penalized, logits).astype(logits.dtype, copy=False)


def select_next_tokens(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator
) -> np.ndarray:
    """Next token id per row of ``logits`` (batch, vocab): argmax when ``temperature`` is 0."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    scaled = logits.astype(np.float64) / temperature
    scaled = filter_top_p(filter_top_k(scaled, top_k), top_p)
    probs = softmax(scaled)
    # inverse-CDF sampling: one uniform draw per row keeps results reproducible for a seed
    draws = rng.random((probs.shape[0], 1))
    chosen = (np.cumsum(probs, axis=-1) < draws).sum(axis=-1)
    return np.minimum(chosen, probs.shape[-1] - 1)
