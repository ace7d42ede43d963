"""The small interface every inference engine backend implements, and the registry that picks one.

A backend wraps one graph: ``run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]``, plus
``inputs`` / ``outputs`` metadata. Generation loops are written once against this interface.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from edge_sdk.errors import PackageError


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str  # engine's element type name, e.g. "tensor(float)"
    shape: tuple  # ints for fixed axes, strings (or None) for dynamic ones


class Session(Protocol):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


_BACKENDS: dict[str, Callable[..., Session]] = {}
# Backends are imported on first use so that loading an ONNX Runtime package never imports openvino.
_BACKEND_MODULES = {"onnxruntime": "edge_sdk.runtimes.onnxruntime_backend"}


def register_backend(name: str):
    """Class decorator: make a backend available under a runtime name used in manifests."""

    def decorate(cls):
        _BACKENDS[name] = cls
        return cls

    return decorate


def available_backends() -> list[str]:
    return sorted(_BACKEND_MODULES)


def open_session(runtime: str, path: Path, threads: int | None = None) -> Session:
    """Open ``path`` with the backend registered for ``runtime``."""
    if runtime not in _BACKEND_MODULES:
        raise PackageError(
            f"package needs runtime '{runtime}', which this edge-sdk does not have "
            f"(available: {', '.join(available_backends())}); upgrade edge-sdk or re-export for one of those"
        )
    if runtime not in _BACKENDS:
        importlib.import_module(_BACKEND_MODULES[runtime])
    return _BACKENDS[runtime](path, threads=threads)
