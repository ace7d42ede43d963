"""The small interface every inference engine backend implements, and the registry that picks one.

A backend wraps one graph: ``run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]``, plus
``inputs`` / ``outputs`` metadata. Generation loops are written once against this interface.
``run(inputs, keep=names)`` may return the outputs in ``keep`` as the engine's own values (a KV
cache that goes straight back in as the next step's input, never copied to numpy); such values are
only ever passed back to the same session.

A backend whose graphs can keep state between calls (OpenVINO's stateful decoders, the KV cache
inside the infer request) also offers ``state_request()``: a request of its own with ``run(inputs)``
and ``reset()``, one per sequence batch. One whose graphs write their cache in place (ONNX Runtime's
GroupQueryAttention over a shared past/present buffer) offers ``shared_cache_request(buffers)``: a
request bound once to caller-owned cache arrays, whose ``run(inputs, out=None)`` rebinds the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Protocol


from edge_sdk.errors import PackageError
from edge_sdk.runtimes.registry import LazyRegistry


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity set: a container's CPU limit included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str  # engine's element type name, e.g. "tensor(float)"
    shape: tuple  # ints for fixed axes, strings (or None) for dynamic ones


# engines' element type names -> numpy's, for graph descriptions read from a session
_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool",
                "f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64", "i32": "int32", "boolean": "bool"}


class Session(Protocol):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    @staticmethod
    def engine_version() -> str: ...

    def run(self, inputs: dict, keep: Collection[str] = ()) -> dict: ...


BACKENDS = LazyRegistry(
    {"onnxruntime": "edge_sdk.runtimes.onnxruntime_backend", "openvino": "edge_sdk.runtimes.openvino_backend"},
    unknown="package needs runtime '{name}', which this edge-sdk does not have (available: {available}); "
    "upgrade edge-sdk or re-export for one of those",
)
register_backend = BACKENDS.register


def available_backends() -> list[str]:
    return BACKENDS.names()


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def describe_session(session: Session) -> dict[str, list[dict]]:
    """An open session's inputs and outputs in the manifest's form (``{"inputs": [{"name", "dtype",
    "shape"}], "outputs": [...]}``), for graphs that have no package yet (an export's FP32 work graph)."""

    def entry(info: TensorInfo) -> dict:
        return {"name": info.name, "dtype": _NUMPY_TYPES.get(info.type, info.type), "shape": list(info.shape)}

    return {"inputs": [entry(i) for i in session.inputs], "outputs": [entry(o) for o in session.outputs]}


def open_session(runtime: str, path: Path, threads: int | None = None, min_version: str | None = None) -> Session:
    """Open the graph at ``path`` with the backend registered for ``runtime``.

    ``min_version`` (from the manifest) is checked against the installed engine first, so an old
    engine gives an "upgrade" message instead of an obscure graph-loading failure.
    """
    backend = BACKENDS.get(runtime)
    installed = backend.engine_version()
    if min_version and version_tuple(installed) < version_tuple(min_version):
        raise PackageError(
            f"this package needs {runtime} >= {min_version}, but {installed} is installed; "
            f"upgrade it with: pip install -U {runtime}"
        )
    return backend(path, threads=threads)
