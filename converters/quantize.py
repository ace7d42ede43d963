"""Quantization of ONNX graphs with ONNX Runtime's own tools, generic over tasks.

Input: an FP32 ONNX graph (any task), the options, and — for static quantization — a callable that
returns calibration feeds (``dict[input name, array]``, built by the task). Output: the quantized
graph and a recipe for the manifest that records what was done per layer kind, read back from the
written graph rather than assumed.

    weights  mode         ONNX Runtime                                    OpenVINO (openvino_convert)
    fp16     -            float16 weights and compute, float32 I/O        weights stored as fp16
    int8     weight-only  MatMulNBits 8-bit, GatherBlockQuantized 8-bit   NNCF INT8 per-channel
    int8     dynamic      quantize_dynamic (int8 weights, dynamic acts)   -
    int8     static       quantize_static, QDQ, calibrated activations    nncf.quantize
    int4     weight-only  MatMulNBits 4-bit, GatherBlockQuantized 4-bit   NNCF INT4 groups

Every linear layer and embedding is quantized, the LM head included: it is read at every decode
step, so leaving it in FP32 leaves most of a small LM's per-token bytes unquantized.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_sdk.converters.onnx_graph import WeightLayer, remove_unused_initializers, save_with_external_data, weight_layers
from edge_sdk.errors import InvalidInputError

log = logging.getLogger("edge_sdk")

RUNTIMES = ("onnxruntime", "openvino")
WEIGHTS = ("fp32", "fp16", "int8", "int4")
MODES = ("weight-only", "dynamic", "static")
PER_CHANNEL = -1
MIN_GROUP_SIZE = 16  # MatMulNBits' smallest block
DEFAULT_GROUP_SIZE = 128  # optimum-cli's default for int4
CalibrationFeeds = Callable[[], list[dict[str, np.ndarray]]]
# what a graph is made of, which decides the layers quantized: "transformer" (MatMul + Gather) or "cnn"
# (Conv too; the model type NNCF is told)
MODEL_TYPES = ("transformer", "cnn")
SAMPLING = "sampling"  # --calibration value of diffusion models: record the model's own sampling trajectories


@dataclass(frozen=True)
class QuantizationOptions:
    """Precision and recipe of the package's weights (and activations for dynamic/static)."""

    weights: str = "fp32"  # fp32 | fp16 | int8 | int4
    mode: str | None = None  # weight-only | dynamic | static; None: weight-only
    group_size: int | None = None  # weights sharing a scale along input channels; -1 per-channel; None: 128 (int4, ORT int8)
    sym: bool = False  # symmetric quantization (no zero points); default asymmetric, as optimum-cli
    accuracy_level: int = 4  # ONNX Runtime MatMulNBits compute: 0 default, 1 fp32, 2 fp16, 3 bf16, 4 int8
    ratio: float = 1.0  # OpenVINO int4: share of layers in 4 bits, the rest INT8 (NNCF's ratio)
    calibration: Path | None = None  # static: text (file or directory), audio files, or "sampling" (diffusion), by task
    num_samples: int = 32  # calibration samples drawn from that data

    @property
    def activations(self) -> str:
        """How activations run, for the manifest: fp32, or int8 dynamic / static."""
        return {"dynamic": "int8 (dynamic)", "static": "int8 (static, calibrated)"}.get(self.effective_mode, "fp32")

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise InvalidInputError(f"unknown --weights '{self.weights}'; valid: {', '.join(WEIGHTS)}")
        if self.mode is not None and self.mode not in MODES:
            raise InvalidInputError(f"unknown --quant-mode '{self.mode}'; valid: {', '.join(MODES)}")
        if self.weights in ("fp32", "fp16") and self.mode not in (None, "weight-only"):
            raise InvalidInputError(f"--quant-mode {self.mode} needs --weights int8 (it quantizes activations too)")
        if self.weights == "int4" and self.effective_mode != "weight-only":
            raise InvalidInputError(
                f"int4 is weight-only; --quant-mode {self.mode} exists for int8 (use --weights int8 --quant-mode {self.mode})"
            )
        if self.group_size is not None:
            if self.weights not in ("int8", "int4") or self.effective_mode != "weight-only":
                raise InvalidInputError("--group-size applies to int8/int4 weight-only quantization")
            size = self.group_size
            if size != PER_CHANNEL and (size < MIN_GROUP_SIZE or size & (size - 1)):
                raise InvalidInputError(
                    f"group size {size} is not a power of two >= {MIN_GROUP_SIZE}: ONNX Runtime's MatMulNBits packs "
                    f"weights in blocks of 16, 32, 64, 128, ... (NNCF uses the same sizes); pass one of those, or -1 "
                    "for per-channel"
                )
        if self.effective_mode == "static" and self.calibration is None:
            raise InvalidInputError(
                "static quantization calibrates activations on real inputs and needs calibration data: "
                "pass --calibration PATH (text models: a text file or a directory of .txt files; "
                "speech models: an audio file or a directory of audio files; diffusion UNets: --calibration "
                f"{SAMPLING}, which records the model's own sampling trajectories)"
            )
        if self.calibration is not None and not self.self_calibrated and not Path(self.calibration).exists():
            raise InvalidInputError(f"calibration data {self.calibration} does not exist")
        if not 0 < self.ratio <= 1:
            raise InvalidInputError(f"--ratio must be in (0, 1], got {self.ratio}")
        if self.accuracy_level not in range(5):
            raise InvalidInputError(f"--accuracy-level must be 0..4, got {self.accuracy_level}")
        if self.num_samples < 1:
            raise InvalidInputError(f"--num-samples must be >= 1, got {self.num_samples}")

    @property
    def self_calibrated(self) -> bool:
        """--calibration sampling: calibration inputs come from the model's own sampling (diffusion)."""
        return self.calibration is not None and str(self.calibration) == SAMPLING and not Path(SAMPLING).exists()

    @property
    def effective_mode(self) -> str | None:
        if self.weights in ("fp32", "fp16"):
            return None
        return self.mode or "weight-only"

    @property
    def quantized(self) -> bool:
        return self.weights in ("int8", "int4")

    def check_runtime(self, runtime: str) -> None:
        if runtime not in RUNTIMES:
            raise InvalidInputError(f"unknown --runtime '{runtime}'; valid: {', '.join(RUNTIMES)}")
        if runtime == "openvino" and self.effective_mode == "dynamic":
            raise InvalidInputError(
                "--quant-mode dynamic is an ONNX Runtime mode; OpenVINO's CPU plugin quantizes activations of "
                "compressed weights by itself: use --quant-mode weight-only (or static) with --runtime openvino"
            )

    def describe(self, runtime: str) -> dict[str, Any]:
        """The options that shaped a package for ``runtime``, as manifest values."""
        values: dict[str, Any] = {"weights": self.weights}
        if not self.quantized:
            return values
        values.update(mode=self.effective_mode, sym=self.sym)
        if self.effective_mode == "weight-only" and (self.weights == "int4" or runtime == "onnxruntime"):
            values["group_size"] = self.group_size or DEFAULT_GROUP_SIZE
        if self.effective_mode == "weight-only" and runtime == "onnxruntime":
            values["accuracy_level"] = self.accuracy_level
        if self.weights == "int4" and runtime == "openvino":
            values["ratio"] = self.ratio
        if self.effective_mode == "static":
            values.update(calibration=str(self.calibration), num_samples=self.num_samples)
        return values


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


def _nbits_block(in_channels: int, group: int) -> int:
    """MatMulNBits block size for a planned group: per-channel is one block spanning all of K."""
    if group != PER_CHANNEL:
        return group
    block = MIN_GROUP_SIZE
    while block < in_channels:
        block *= 2
    return block


def quantize_onnx(src: Path, dst: Path, options: QuantizationOptions, calibration: CalibrationFeeds | None,
                  model_type: str = "transformer") -> dict:
    """Write the quantized (or fp16) version of graph ``src`` to ``dst``; return the recipe for the manifest.

    ``src`` is a prepared graph (``graph_prepare.prepare_graph`` with ``untie``): every linear layer
    a MatMul with a constant weight, the LM head included. ``model_type`` "cnn" quantizes the
    convolutions too in dynamic and static modes; weight-only leaves them FP32 (ONNX Runtime has
    no weight-only convolution kernel).
    """
    import onnx

    model = onnx.load(str(src))
    layers = weight_layers(model, convolutions=model_type == "cnn")
    if options.weights == "fp16":
        return _fp16(model, dst, options)
    if options.effective_mode == "weight-only":
        return _weight_only(model, layers, dst, options)
    staged = dst.with_name(dst.stem + ".prepared.onnx")
    save_with_external_data(model, staged)
    del model
    try:
        if options.effective_mode == "dynamic":
            return _dynamic(staged, layers, dst, options)
        return _static(staged, layers, dst, options, calibration)
    finally:
        for path in (staged, staged.with_name(staged.name + ".data")):
            path.unlink(missing_ok=True)


def _nbits_quantizer_module():
    """Import onnxruntime's MatMulNBits quantizer without letting it configure the root logger.

    The module calls ``logging.basicConfig(level=INFO)`` at import, which would make every library's
    INFO logs (and one line per graph node from the quantizer) print; with a handler already on the
    root logger, basicConfig does nothing.
    """
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        root.removeHandler(placeholder)
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    return matmul_nbits_quantizer


def _weight_only(model, layers: list[WeightLayer], dst: Path, options: QuantizationOptions) -> dict:
    nbits = _nbits_quantizer_module()
    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer = nbits.DefaultWeightOnlyQuantConfig, nbits.MatMulNBitsQuantizer

    bits = 8 if options.weights == "int8" else 4
    requested = options.group_size or DEFAULT_GROUP_SIZE
    by_block: dict[int, list[str]] = defaultdict(list)
    for layer in layers:
        if layer.op_type == "MatMul":
            by_block[_nbits_block(layer.in_channels, plan_group_size(layer.in_channels, requested))].append(layer.node)
    matmuls = {name for nodes in by_block.values() for name in nodes}
    for block, nodes in sorted(by_block.items()):
        # one pass per block size; the quantizer takes every MatMul not excluded (nodes_to_include
        # adds to its op-type selection rather than narrowing it), so exclude the other groups
        config = DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=options.sym, accuracy_level=options.accuracy_level, bits=bits,
            op_types_to_quantize=("MatMul",),
        )
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=options.sym,
                                         accuracy_level=options.accuracy_level, nodes_to_exclude=sorted(matmuls - set(nodes)),
                                         op_types_to_quantize=("MatMul",), algo_config=config)
        quantizer.process()
        model = quantizer.model.model
    for layer in layers:
        if layer.op_type == "Gather":
            group = plan_group_size(layer.in_channels, requested)
            _quantize_embedding(model, layer, bits, group if group != PER_CHANNEL else layer.in_channels, options.sym)
    remove_unused_initializers(model)
    save_with_external_data(model, dst)
    return _recipe(options, "onnxruntime.quantization MatMulNBits + GatherBlockQuantized", dst, layers)


def _quantize_embedding(model, layer: WeightLayer, bits: int, block: int, sym: bool) -> None:
    """Embedding table -> GatherBlockQuantized (ONNX Runtime contrib op), blocks along the hidden axis.

    ONNX Runtime's quantizer handles 4-bit Gather only; the 8-bit layout (uint8 data, zero point 128
    when symmetric) is written here, and both are checked numerically by the export's accuracy step.
    """
    from onnx import TensorProto, helper, numpy_helper

    table = next(i for i in model.graph.initializer if i.name == layer.weight)
    data = numpy_helper.to_array(table).astype(np.float32)
    rows, cols = data.shape
    blocks = data.reshape(rows, cols // block, block)
    levels = (1 << bits) - 1
    if sym:
        half = (levels + 1) // 2
        scales = np.abs(blocks).max(axis=2) / (half - 1)
        scales[scales == 0] = 1.0
        zero = np.full(scales.shape, half, dtype=np.int32)
    else:
        low, high = np.minimum(blocks.min(axis=2), 0), np.maximum(blocks.max(axis=2), 0)
        scales = (high - low) / levels
        scales[scales == 0] = 1.0
        zero = np.clip(np.round(-low / scales), 0, levels).astype(np.int32)
    quantized = np.clip(np.round(blocks / scales[..., None]) + zero[..., None], 0, levels).astype(np.uint8)
    quantized = quantized.reshape(rows, cols)
    name = layer.weight
    element = TensorProto.UINT8 if bits == 8 else TensorProto.UINT4
    packed = quantized if bits == 8 else _pack_uint4(quantized)
    zero_packed = zero.astype(np.uint8) if bits == 8 else _pack_uint4(zero.astype(np.uint8))
    model.graph.initializer.extend([
        helper.make_tensor(f"{name}_Q{bits}", element, [rows, cols], packed.tobytes(), raw=True),
        numpy_helper.from_array(scales.astype(np.float32), f"{name}_scales"),
        helper.make_tensor(f"{name}_zero_points", element, list(scales.shape), zero_packed.tobytes(), raw=True),
    ])
    node = next(n for n in model.graph.node if n.name == layer.node)
    replacement = helper.make_node(
        "GatherBlockQuantized",
        [f"{name}_Q{bits}", node.input[1], f"{name}_scales", f"{name}_zero_points"],
        list(node.output),
        name=f"{node.name}_Q{bits}",
        domain="com.microsoft",
        gather_axis=0,
        quantize_axis=1,
        block_size=block,
        bits=bits,
    )
    replacement.metadata_props.extend(node.metadata_props)
    index = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    model.graph.node.insert(index, replacement)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _pack_uint4(values: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte, the first in the low nibble (ONNX's UINT4 layout)."""
    flat = values.reshape(-1).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)


def _dynamic(src: Path, layers: list[WeightLayer], dst: Path, options: QuantizationOptions) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, use_external_data_format=True,
        op_types_to_quantize=sorted({"MatMul", "Gather"} | {layer.op_type for layer in layers}),
        nodes_to_quantize=[layer.node for layer in layers],
        extra_options={"MatMulConstBOnly": True},
    )
    return _recipe(options, "onnxruntime.quantization.quantize_dynamic (int8 weights per channel, int8 activations at run time)", dst, layers)


class _FeedReader:
    """onnxruntime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def _static(src: Path, layers, dst: Path, options: QuantizationOptions, calibration: CalibrationFeeds | None) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    feeds = calibration() if calibration else []
    if not feeds:
        raise InvalidInputError(f"no calibration samples could be made from {options.calibration}; give more text")
    quantize_static(
        str(src), str(dst), _FeedReader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=sorted({"MatMul"} | {layer.op_type for layer in layers if layer.op_type == "Conv"}),
        nodes_to_quantize=[layer.node for layer in layers if layer.op_type in ("MatMul", "Conv")],
        use_external_data_format=True, extra_options={"WeightSymmetric": True, "ActivationSymmetric": options.sym},
    )
    recipe = _recipe(options, "onnxruntime.quantization.quantize_static (QDQ, int8 weights per channel, uint8 activations, MinMax)", dst, layers)
    recipe["calibration_feeds"] = len(feeds)
    return recipe


def _fp16(model, dst: Path, options: QuantizationOptions) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    save_with_external_data(model, dst)
    return {"tool": "onnxruntime.transformers.float16 (float32 inputs/outputs)", "options": options.describe("onnxruntime")}


def _recipe(options: QuantizationOptions, tool: str, dst: Path, layers: list[WeightLayer]) -> dict:
    import onnx

    return {
        "tool": tool,
        "options": options.describe("onnxruntime"),
        "layers": summarize_onnx_layers(onnx.load(str(dst), load_external_data=False), {l.node: l for l in layers}),
    }


def summarize_onnx_layers(model, planned: dict[str, WeightLayer]) -> dict[str, dict]:
    """What each layer kind ended up as, read from the written graph's nodes."""
    from onnx import helper

    kinds: dict[str, dict] = {}
    names = {layer.node for layer in planned.values()}
    dequantized = {output for node in model.graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    for node in model.graph.node:
        # quantizers name their nodes after the original ("node_linear_1" -> "node_linear_1_Q4"); the
        # longest matching original wins, so "node_linear_1_Q4" is not taken for "node_linear"
        matches = [n for n in names if node.name == n or node.name.startswith(n + "_")]
        source = max(matches, key=len) if matches else None
        if source is None or node.op_type in ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "Add", "Mul", "Cast", "Split"):
            continue
        layer = planned[source]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        entry = {"op": node.op_type, "in_channels": layer.in_channels}
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            entry.update(bits=attributes["bits"], group_size=effective_group(attributes["block_size"], layer.in_channels))
        elif node.op_type in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"):
            entry.update(bits=8)
        elif len(node.input) > 1 and node.input[1] in dequantized:  # static QDQ: the weight through DequantizeLinear
            entry.update(bits=8)
        else:
            entry.update(bits=None)  # float weights
        summary = kinds.setdefault(layer.kind, {**entry, "count": 0})
        summary["count"] += 1
    return kinds
