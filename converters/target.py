"""From a validated FP32 ONNX graph to the graph a package ships: the engine and precision asked for.

Task-independent: text generation, speech and diffusion exporters all hand their FP32 graphs here.
Each engine is one module with the same functions (``build``, ``describe``, ``summarize_layers``):
``onnxruntime_engine`` and ``openvino_engine``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from edge_sdk.converters.quantize import CalibrationFeeds, Probe
from edge_sdk.quantization import RUNTIMES, QuantizationOptions

ENGINES = {"onnxruntime": "edge_sdk.converters.onnxruntime_engine", "openvino": "edge_sdk.converters.openvino_engine"}
assert set(ENGINES) == set(RUNTIMES)


def engine(runtime: str):
    """The converter module of ``runtime`` (``build``, ``describe``, ``summarize_layers``)."""
    return importlib.import_module(ENGINES[runtime])


def build_graph(
    fp32: Path,
    staging: Path,
    role: str,
    runtime: str,
    options: QuantizationOptions,
    calibration: CalibrationFeeds | None = None,
    probe: Probe | None = None,
    model_type: str = "transformer",
    attention: dict[str, Any] | None = None,
    carry=None,
) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """Write graph ``role`` into ``staging`` for ``runtime``; return (manifest graph entry, recipe or
    None, minimum engine version).

    ``fp32`` is the validated FP32 ONNX graph (with ``<fp32>.data`` beside it); ``probe`` runs a
    task's check on a session (kept fusions must reproduce the unfused graph on it); ``model_type``
    ("transformer" or "cnn", see ``quantize.MODEL_TYPES``) decides which layers quantization covers;
    ``attention`` (a KV decoder's ``{"windows": [...], "positions": context length}``) lets an
    engine run attention over a preallocated cache; ``carry`` (a ``gguf.CarryOver``) offers a
    quantized source's blocks, taken as they are where the engine holds them.
    """
    return engine(runtime).build(fp32, staging, role, options, calibration, probe, model_type, attention, carry)
