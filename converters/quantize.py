"""What both engines' quantizers share: group-size planning, calibration feeds, the task's probe type.

The quantizers themselves live with their engine (``onnxruntime_engine``: onnxruntime.quantization;
``openvino_engine``: NNCF); the options and their vocabularies in the torch-free
``edge_sdk.quantization`` (re-exported here for converters).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from edge_sdk.quantization import (  # noqa: F401  (the options and vocabularies, re-exported for converters)
    DEFAULT_GROUP_SIZE,
    MIN_GROUP_SIZE,
    MODES,
    PER_CHANNEL,
    RUNTIMES,
    SAMPLING,
    WEIGHTS,
    QuantizationOptions,
)

log = logging.getLogger("edge_sdk")

CalibrationFeeds = Callable[[], list[dict[str, np.ndarray]]]
# A task's check of a graph: runs a session on fixed inputs, returns an array to compare.
Probe = Callable[[Any], np.ndarray]
# what a graph is made of, which decides the layers quantized: "transformer" (MatMul + Gather) or "cnn"
# (Conv too; the model type NNCF is told)
MODEL_TYPES = ("transformer", "cnn")


class FeedRecorder:
    """A session that records every input it is given (static calibration's feeds) while a task's
    own loop drives it, e.g. a ``DecoderState`` through prefill and decode steps of an FP32 graph."""

    def __init__(self, session):
        self._session = session
        self.inputs, self.outputs = session.inputs, session.outputs
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, inputs: dict, keep=()) -> dict:
        self.feeds.append(dict(inputs))
        return self._session.run(inputs)  # every output as numpy: the recorded feeds must be plain arrays

    def shared_cache_request(self, buffers: dict):
        """A shared-cache graph's request (ONNX Runtime GroupQueryAttention), recording each call's
        inputs with the cache buffers as they are: a graph reads a buffer only up to the tokens
        cached before the call, which later calls do not overwrite, so a recorded feed replays
        through a plain session as it ran."""
        request, feeds = self._session.shared_cache_request(buffers), self.feeds

        class Recording:
            def run(self, inputs: dict, out: dict | None = None) -> dict:
                feeds.append({**inputs, **{past: array for past, (_, array) in buffers.items()}})
                return request.run(inputs, out)

        return Recording()


def plan_group_size(in_channels: int, requested: int) -> int:
    """The group size a layer gets: ``requested`` if it divides ``in_channels``, else the largest
    smaller power of two >= 16 that does, else per-channel (-1).

    >>> plan_group_size(576, 128), plan_group_size(1536, 128), plan_group_size(24, 128)
    (64, 128, -1)
    """
    if requested == PER_CHANNEL:
        return PER_CHANNEL
    size = requested
    while size >= MIN_GROUP_SIZE:
        if in_channels % size == 0:
            return size
        size //= 2
    return PER_CHANNEL


def effective_group(group: int, in_channels: int) -> int:
    """How a group size reads in a summary: a group spanning all input channels is per-channel."""
    return PER_CHANNEL if group == PER_CHANNEL or group >= in_channels else group
