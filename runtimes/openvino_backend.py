"""OpenVINO backend: one IR (``.xml`` + ``.bin``) -> ``run(inputs) -> outputs``, numpy at the boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Collection

import numpy as np

from edge_sdk.errors import PackageError, optional_import
from edge_sdk.runtimes.backend import TensorInfo, register_backend


@register_backend("openvino")
class OpenVINOSession:
    """An OpenVINO CPU compiled model over one graph, tuned for latency (one stream).

    ``threads`` sets ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, all cores). Inference
    runs in f32 (``INFERENCE_PRECISION_HINT``) so packages reproduce their FP32 reference; on CPUs
    with bf16 units OpenVINO would otherwise compute in bf16.

    Example::

        session = OpenVINOSession(Path("pkg/decoder.xml"), threads=2)
        outputs = session.run({"input_ids": ids, ...})
    """

    device = "CPU"

    def __init__(self, path: Path, threads: int | None = None):
        ov = optional_import("openvino", "openvino", "running an OpenVINO package")

        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        try:
            core = ov.Core()
            self._compiled = core.compile_model(str(path), self.device, config)
        except Exception as e:  # OpenVINO raises RuntimeError with its own text for unreadable IR
            raise PackageError(f"OpenVINO cannot load {path.name}: {e}; re-export the package") from e
        self._request = self._compiled.create_infer_request()
        self.inputs = [TensorInfo(p.get_any_name(), p.get_element_type().get_type_name(), _shape(p)) for p in self._compiled.inputs]
        self.outputs = [TensorInfo(p.get_any_name(), p.get_element_type().get_type_name(), _shape(p)) for p in self._compiled.outputs]
        self.threads = threads
        self._output_ports = [(o.get_any_name(), o) for o in self._compiled.outputs]

    @staticmethod
    def engine_version() -> str:
        ov = optional_import("openvino", "openvino", "running an OpenVINO package")

        return ov.get_version().split("-")[0]

    def state_request(self) -> "StatefulRequest":
        """A request of its own for one stateful sequence batch: ``run`` keeps the state, ``reset`` empties it."""
        return StatefulRequest(self._compiled.create_infer_request(), self._output_ports)

    def run(self, inputs: dict[str, np.ndarray], keep: Collection[str] = ()) -> dict[str, np.ndarray]:
        # share_outputs=False copies results out: the next call would overwrite OpenVINO's buffers,
        # and the KV cache outputs are fed back in as inputs. ``keep`` (outputs that may stay
        # engine values) is accepted for the common interface; every output is numpy here.
        results = self._request.infer(inputs, share_inputs=True, share_outputs=False)
        return {name: results[port] for name, port in self._output_ports}


class StatefulRequest:
    """One infer request of a stateful graph: the KV cache stays inside it between ``run`` calls."""

    def __init__(self, request, output_ports):
        self._request = request
        self._output_ports = output_ports

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer(inputs, share_inputs=True, share_outputs=False)
        return {name: results[port] for name, port in self._output_ports}

    def reset(self) -> None:
        self._request.reset_state()


def _shape(port) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
