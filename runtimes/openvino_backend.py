"""OpenVINO backend: one IR (``.xml`` + ``.bin``) -> ``run(inputs) -> outputs``, numpy at the boundary."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
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

    def __init__(self, path: Path, threads: int | None = None, *, _model=None):
        ov = optional_import("openvino", "openvino", "running an OpenVINO package")

        self.path, self.device = Path(path), _device(ov)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self.device == "CPU":
            config.update({"NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"})
            if threads:
                config["INFERENCE_NUM_THREADS"] = str(threads)
        config.update(_extra_config())
        try:
            with signal_stack_kept():
                core = ov.Core()
                self._compiled = core.compile_model(_model if _model is not None else str(path), self.device, config)
                self._request = self._compiled.create_infer_request()
        except Exception as e:  # OpenVINO raises RuntimeError with its own text for unreadable IR
            raise PackageError(f"OpenVINO cannot load {self.path.name} on {self.device}: {e}; re-export the package") from e
        self._variants: dict = {}
        self.inputs = [TensorInfo(p.get_any_name(), p.get_element_type().get_type_name(), _shape(p)) for p in self._compiled.inputs]
        self.outputs = [TensorInfo(p.get_any_name(), p.get_element_type().get_type_name(), _shape(p)) for p in self._compiled.outputs]
        self.threads = threads
        self._output_ports = [(o.get_any_name(), o) for o in self._compiled.outputs]

    @staticmethod
    def engine_version() -> str:
        ov = optional_import("openvino", "openvino", "running an OpenVINO package")

        return ov.get_version().split("-")[0]

    def variant(self, shapes: dict[str, list[int]]) -> "OpenVINOSession":
        """The same graph compiled with other fixed input ``shapes`` (a static NPU decoder's
        one-token decode step beside its prompt-chunk graph, as OpenVINO GenAI's NPU pipeline
        does); compiled once per shape set."""
        key = tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))
        if key not in self._variants:
            ov = optional_import("openvino", "openvino", "running an OpenVINO package")
            model = ov.Core().read_model(str(self.path))
            try:
                model.reshape({name: ov.PartialShape(shape) for name, shape in shapes.items()})
            except Exception as e:
                raise PackageError(f"{self.path.name} cannot be reshaped to {dict(shapes)}: {e}; re-export the package") from e
            self._variants[key] = OpenVINOSession(self.path, self.threads, _model=model)
        return self._variants[key]

    def state_request(self) -> "StatefulRequest":
        """A request of its own for one stateful sequence batch: ``run`` keeps the state, ``reset`` empties it."""
        with signal_stack_kept():
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


class _Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


@contextlib.contextmanager
def signal_stack_kept():
    """Put back the calling thread's alternate signal stack after OpenVINO compiles a model.

    Compiling installs a signal stack of OpenVINO's own on the calling thread, and releasing the
    compiled models does not always put the previous one back before that memory is unmapped: the
    next signal the process handles on that thread (Ctrl-C, SIGTERM) then runs on unmapped memory
    and crashes the process with SIGSEGV instead of raising KeyboardInterrupt. (Measured with
    OpenVINO 2026: a stateful and a static package loaded and released in one process.)"""
    libc = _libc()
    if libc is None:
        yield
        return
    before = _Stack()
    if libc.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sigaltstack  # noqa: B018 (present on Linux and macOS)
        return libc
    except (OSError, AttributeError):
        return None


DEVICE_VARIABLE = "EDGE_SDK_OPENVINO_DEVICE"
CONFIG_VARIABLE = "EDGE_SDK_OPENVINO_CONFIG"


def _device(ov) -> str:
    """The OpenVINO device packages run on: CPU, or ``$EDGE_SDK_OPENVINO_DEVICE`` (NPU, GPU, GPU.1,
    AUTO:NPU,CPU ...). A single device is checked against those OpenVINO sees. Only the CPU gets
    edge-sdk's f32 precision hints: another device computes at its own precision (an NPU or a GPU in
    f16), so its results differ from the package's recorded accuracy."""
    device = os.environ.get(DEVICE_VARIABLE, "CPU").strip() or "CPU"
    if device != "CPU" and ":" not in device:
        available = ov.Core().available_devices
        if device.split(".")[0] not in {d.split(".")[0] for d in available}:
            raise PackageError(f"{DEVICE_VARIABLE}={device}, but OpenVINO sees only {', '.join(available)} here; "
                               f"unset it to run on the CPU")
    return device


def _extra_config() -> dict[str, str]:
    """Compile properties from ``$EDGE_SDK_OPENVINO_CONFIG`` (a JSON object), over edge-sdk's, e.g.
    ``{"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}``: the CPU plugin otherwise quantizes activations on
    the fly for int4/int8 weights, not alike for graphs of different shapes."""
    text = os.environ.get(CONFIG_VARIABLE, "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
    except ValueError as e:
        raise PackageError(f"{CONFIG_VARIABLE} is not JSON ({e}); give an object such as "
                           '{"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}') from None
    if not isinstance(config, dict):
        raise PackageError(f"{CONFIG_VARIABLE} must be a JSON object of OpenVINO properties, got {text!r}")
    return {str(k): str(v) for k, v in config.items()}


def _shape(port) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
