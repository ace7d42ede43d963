"""Calibrated and searched int4: k-quant, HQQ and GPTQ on ONNX Runtime, AWQ / scale estimation / GPTQ
on OpenVINO (NNCF), and --ratio's mixed precision chosen by measured sensitivity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edge_sdk
from edge_sdk.converters import ort_weight_only
from edge_sdk.converters.export import ExportOptions, export
from edge_sdk.converters.gguf import _unpack
from edge_sdk.converters.onnx_graph import weight_layers
from edge_sdk.errors import InvalidInputError
from edge_sdk.quantization import QuantizationOptions

pytestmark = pytest.mark.xdist_group("trained-lm")


def _chain(weights: list[np.ndarray]) -> onnx.ModelProto:
    """x -> MatMul(W0) -> MatMul(W1) ... -> logits: linear layers with constant weights, as exported graphs hold them."""
    nodes, inits, current = [], [], "x"
    for i, w in enumerate(weights):
        out = "logits" if i == len(weights) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [out], name=f"mm{i}"))
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"W{i}"))
        current = out
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, weights[0].shape[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, weights[-1].shape[1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _activations(rng, rows: int, channels: int) -> np.ndarray:
    """Inputs like a transformer's: correlated channels, a few of them much larger than the rest."""
    mixing = rng.standard_normal((channels, channels)) / np.sqrt(channels)
    x = rng.standard_normal((rows, channels)) @ mixing
    x[:, :: max(1, channels // 8)] *= 8
    return x.astype(np.float32)


def _output_error(model, x: np.ndarray, reference: np.ndarray) -> float:
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return float(np.mean((y - reference) ** 2) / np.mean(reference ** 2))


def _dequantized(model, node_name: str) -> np.ndarray:
    """The (K, N) weight a MatMulNBits node computes with (4-bit, zero points packed per row)."""
    node = next(n for n in model.graph.node if n.name == node_name)
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, block = attributes["K"], attributes["N"], attributes["block_size"]
    blocks = -(-k // block)
    codes = _unpack(values[node.input[1]].reshape(n, blocks, -1), 4).astype(np.float32)
    scales = values[node.input[2]].reshape(n, blocks)
    zero_points = _unpack(values[node.input[3]].reshape(n, -1)[:, :, None], 4).reshape(n, -1)[:, :blocks].astype(np.float32)
    return ((codes - zero_points[..., None]) * scales[..., None]).reshape(n, -1)[:, :k].T


@pytest.mark.parametrize("algorithm", ["k-quant", "hqq"])
def test_each_algorithm_beats_round_to_nearest_on_a_layers_output(algorithm):
    """96 input channels in blocks of 32: three blocks a row, where onnxruntime's own k-quant writer
    packs zero points wrongly; the output error against FP32 must be lower than round to nearest's."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((96, 48)).astype(np.float32) * 0.05
    calibration, held_out = _activations(rng, 512, 96), _activations(np.random.default_rng(1), 256, 96)
    reference = held_out @ weight
    options = QuantizationOptions(weights="int4", group_size=32, accuracy_level=1, algorithm=(algorithm,))
    feeds = [{"x": calibration[i : i + 64]} for i in range(0, 512, 64)]
    quantized = ort_weight_only.quantize_pass(_chain([weight]), ["mm0"], 4, 32, options, lambda: feeds)
    plain = ort_weight_only.quantize_pass(_chain([weight]), ["mm0"], 4, 32, QuantizationOptions(weights="int4", accuracy_level=1),
                                          lambda: feeds)
    assert [n.op_type for n in quantized.graph.node] == ["MatMulNBits"]
    ours, rtn = _output_error(quantized, held_out, reference), _output_error(plain, held_out, reference)
    assert ours < 0.97 * rtn, (ours, rtn)
    if algorithm == "k-quant":  # the codes it chose, packed as they are: the graph computes with exactly its weights
        from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor_k_quant_cpu

        codes, scales, zero_points = quant_tensor_k_quant_cpu(weight.T.copy(), 4, 32)
        expected = ((codes - zero_points) * scales).reshape(48, 96).T
        np.testing.assert_allclose(_dequantized(quantized, "mm0_Q4"), expected, rtol=1e-6, atol=1e-7)


def test_ratio_keeps_the_layer_whose_rounding_moves_the_output_most_in_int8():
    rng = np.random.default_rng(0)
    smooth = rng.standard_normal((64, 64)).astype(np.float32) * 0.05
    spiky = rng.standard_normal((64, 64)).astype(np.float32) * 0.05
    spiky[::16, :] *= 40  # one outlier row per block: its 4-bit steps swamp the other weights of the block
    model = _chain([smooth, spiky, rng.standard_normal((64, 64)).astype(np.float32) * 0.05])
    layers = weight_layers(model)
    feeds = [{"x": _activations(rng, 32, 64)} for _ in range(4)]
    options = QuantizationOptions(weights="int4", ratio=0.7, calibration=__file__)
    kept, summary = ort_weight_only.sensitive_layers(model, layers, lambda layer: 4, lambda layer: 32, options, feeds)
    assert kept == {"mm1"}
    assert summary["int8_layers"] == 1 and summary["int4_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert summary["most_sensitive"][0]["layer"] == "mm1" and summary["most_sensitive"][0]["kl"] > 0


@pytest.fixture(scope="module")
def calibrated(trained_lm_dir, once):
    """(runtime, algorithm or None, ratio) -> the trained tiny LM in int4 group 64, calibrated on its training text."""
    def get(runtime: str, algorithm: str | None, ratio: float = 1.0):
        quantization = QuantizationOptions(
            weights="int4", group_size=64, ratio=ratio, algorithm=tuple(algorithm.split(",")) if algorithm else (),
            calibration=trained_lm_dir / "calibration.txt", num_samples=8)
        options = ExportOptions(runtime=runtime, quantization=quantization, eval_data=trained_lm_dir / "heldout.txt")
        return once(f"int4-{runtime}-{algorithm}-{ratio}", lambda out: export(trained_lm_dir, out, options, progress=False))

    return get


def _recipe(package) -> dict:
    return json.loads((package / "manifest.json").read_text())["precision"]["recipe"]


def _generates(package) -> None:
    result = edge_sdk.load(package).generate("Return the", max_new_tokens=8, ignore_eos=True)
    assert len(result.token_ids) == 8 and result.text


@pytest.mark.parametrize("algorithm", ["k-quant", "hqq"])
def test_onnxruntime_int4_algorithms_export_run_and_are_recorded(calibrated, trained_lm_dir, algorithm):
    """The trained LM's down projections (192 channels, blocks of 64: three a row) included."""
    package = calibrated("onnxruntime", algorithm)
    recipe = _recipe(package)
    assert recipe["options"]["algorithm"] == [algorithm] and {"k-quant": "k-quant", "hqq": "HQQ"}[algorithm] in recipe["tool"]
    assert recipe["layers"]["model.layers.*.mlp.down_proj"] == {"op": "MatMulNBits", "in_channels": 192, "bits": 4,
                                                                "group_size": 64, "count": 2}
    accuracy = json.loads((package / "manifest.json").read_text())["accuracy"]["eval"]
    assert accuracy["kl_divergence"] < 0.1, accuracy  # a trained model (RTN: ~0.01); broken packing gives nats
    _generates(package)


def test_onnxruntime_ratio_keeps_the_measured_most_sensitive_layers_int8(calibrated):
    package = calibrated("onnxruntime", None, 0.75)
    recipe = _recipe(package)
    mixed = recipe["mixed_precision"]
    assert mixed["int8_layers"] >= 1 and mixed["int4_share"] <= 0.75
    graph = onnx.load(str(package / "decoder.onnx"), load_external_data=False).graph
    bits = {n.name: helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits"))
            for n in graph.node if n.op_type == "MatMulNBits"}
    head = next(n.name for n in graph.node if n.op_type == "MatMulNBits" and "logits" in n.output)
    eight = {name for name, b in bits.items() if b == 8 and name != head}
    assert len(eight) == mixed["int8_layers"], bits
    assert mixed["most_sensitive"][0]["node"] + "_Q8" in eight  # the layer measured most sensitive is among them
    assert mixed["most_sensitive"][0]["layer"].startswith("model.layers.")
    _generates(package)


@pytest.mark.parametrize("algorithm, tool", [("awq,scale-estimation", "awq, scale_estimation"), ("gptq", "gptq")])
def test_openvino_calibrated_algorithms_run_on_text(calibrated, algorithm, tool):
    package = calibrated("openvino", algorithm)
    recipe = _recipe(package)
    assert tool in recipe["tool"] and recipe["options"]["calibration"].endswith("calibration.txt")
    accuracy = json.loads((package / "manifest.json").read_text())["accuracy"]["eval"]
    assert accuracy["kl_divergence"] < 0.1, accuracy
    _generates(package)


def test_calibrated_int4_is_refused_for_speech_models(tiny_en, tmp_path):
    options = ExportOptions(runtime="openvino", quantization=QuantizationOptions(weights="int4", algorithm=("gptq",), calibration=tmp_path))
    with pytest.raises(InvalidInputError, match="calibrated int4 .* is built for text-generation models"):
        export(tiny_en, tmp_path / "out", options, progress=False)
    assert not (tmp_path / "out").exists()
