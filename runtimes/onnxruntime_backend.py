"""ONNX Runtime backend: one graph file -> ``run(inputs) -> outputs``, numpy at the boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Collection

import numpy as np

from edge_sdk.errors import PackageError
from edge_sdk.runtimes.backend import TensorInfo, register_backend


@register_backend("onnxruntime")
class OnnxRuntimeSession:
    """A CPU ONNX Runtime session over one graph.

    ``threads`` sets intra-op parallelism (None: ONNX Runtime's default, one per physical core).

    Example::

        session = OnnxRuntimeSession("pkg/decoder.onnx", threads=2)
        outputs = session.run({"input_ids": ids, ...})
    """

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own untyped errors for unreadable graphs
            raise PackageError(f"ONNX Runtime cannot load {path.name}: {e}; re-export the package") from e
        self.inputs = [TensorInfo(i.name, i.type, tuple(i.shape)) for i in self._session.get_inputs()]
        self.outputs = [TensorInfo(o.name, o.type, tuple(o.shape)) for o in self._session.get_outputs()]
        self.threads = threads
        self._output_names = [o.name for o in self.outputs]

    @staticmethod
    def engine_version() -> str:
        import onnxruntime

        return onnxruntime.__version__

    def run(self, inputs: dict, keep: Collection[str] = ()) -> dict:
        """Run the graph. Outputs named in ``keep`` stay ONNX Runtime values (not copied to numpy),
        to be passed back as inputs of the next call: a KV cache never leaves the engine."""
        if not keep:
            return dict(zip(self._output_names, self._session.run(self._output_names, self._plain(inputs))))
        binding = self._session.io_binding()
        for name, value in inputs.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self._output_names:
            binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {name: value if name in keep else value.numpy() for name, value in zip(self._output_names, values)}

    def shared_cache_request(self, buffers: dict[str, tuple[str, np.ndarray]]) -> "SharedCacheRequest":
        """A request whose cache lives in caller-owned buffers: ``buffers`` maps each past input to
        (its present output, a C-contiguous array); both are bound to the array's memory, so a
        GroupQueryAttention graph writes new keys and values in place and nothing is copied."""
        return SharedCacheRequest(self._session, buffers, [n for n in self._output_names if n not in {p for p, _ in buffers.values()}])

    @staticmethod
    def _plain(inputs: dict) -> dict:
        return {name: value if isinstance(value, np.ndarray) else value.numpy() for name, value in inputs.items()}


class SharedCacheRequest:
    """One IOBinding kept across the calls of a generation: the cache buffers are bound once (as
    input and output), the per-call inputs are rebound on every ``run``."""

    def __init__(self, session, buffers: dict[str, tuple[str, np.ndarray]], outputs: list[str]):
        self._session = session
        self._binding = session.io_binding()
        self._outputs = outputs
        self._buffers = buffers  # keeps the arrays alive as long as the binding points into them
        for past, (present, array) in buffers.items():
            if not array.flags.c_contiguous:
                raise ValueError(f"the buffer for {past} must be C-contiguous")
            pointer = array.ctypes.data
            self._binding.bind_input(past, "cpu", 0, array.dtype, list(array.shape), pointer)
            self._binding.bind_output(present, "cpu", 0, array.dtype, list(array.shape), pointer)

    def run(self, inputs: dict[str, np.ndarray], out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run once; ``out`` names outputs to write into the given arrays (their shape must be the
        output's: a decode step's logits), the rest come back as new arrays."""
        out = out or {}
        for name, value in inputs.items():
            self._binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._outputs:
            if name in out:
                array = out[name]
                self._binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            else:
                self._binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(self._binding)
        if all(name in out for name in self._outputs):
            return dict(out)
        values = self._binding.get_outputs()
        # get_outputs lists every bound output in binding order: the cache outputs first
        return {name: out[name] if name in out else value.numpy()
                for name, value in zip(self._outputs, values[len(self._buffers):])}
