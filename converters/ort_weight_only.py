"""ONNX Runtime's int4 weight-only algorithms — round to nearest, k-quant, HQQ — and mixed precision by measured sensitivity (which layers stay INT8 under --ratio).

The algorithms are onnxruntime.quantization's (``matmul_nbits_quantizer`` and its
``neural_compressor`` port). Where its own MatMulNBits writer is wrong — the k-quant path packs
4-bit zero points across rows, which breaks for an odd number of blocks per row (576 channels in
groups of 64) — the codes it computed are packed here in MatMulNBits' layout instead
(``carry_over.replace``, the writer GGUF blocks go through).

Its GPTQ is not offered: in onnxruntime 1.32's port (``neural_compressor.weight_only.gptq``) the
error of each rounded column is propagated along the transposed Cholesky factor's zero half, so it
returns round to nearest's weights exactly (measured: identical MatMulNBits weights on correlated
activations). GPTQ runs on OpenVINO, through NNCF.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from edge_sdk.converters.onnx_graph import WeightLayer
from edge_sdk.quantization import QuantizationOptions

log = logging.getLogger("edge_sdk")

SENSITIVITY_FEEDS = 4  # calibration prefill windows the per-layer KL is measured on


def nbits_quantizer_module():
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
    for name in (matmul_nbits_quantizer.__name__, "neural_compressor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return matmul_nbits_quantizer


def quantize_pass(model, nodes: list[str], bits: int, block: int, options: QuantizationOptions,
                  feeds: Callable[[], list[dict]] | None):
    """Quantize MatMul ``nodes`` of ``model`` to ``bits`` in blocks of ``block`` with the options'
    algorithm (8-bit layers: round to nearest); return the model."""
    algorithm = options.algorithms[0] if bits == 4 else "rtn"
    if algorithm == "k-quant":
        return _k_quant(model, nodes, block, options)
    nbits = nbits_quantizer_module()
    matmuls = {node.name for node in model.graph.node if node.op_type == "MatMul"}
    if algorithm == "hqq":
        config = nbits.HQQWeightOnlyQuantConfig(block_size=block, bits=bits, op_types_to_quantize=("MatMul",))
    else:
        config = nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=options.sym, bits=bits,
                                                    accuracy_level=options.accuracy_level, op_types_to_quantize=("MatMul",))
    # the quantizer takes every MatMul with a constant B it is not told to exclude (nodes_to_include
    # adds to its op-type selection rather than narrowing it), so exclude all but this pass's layers
    quantizer = nbits.MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=options.sym,
                                           accuracy_level=options.accuracy_level, nodes_to_exclude=sorted(matmuls - set(nodes)),
                                           op_types_to_quantize=("MatMul",), algo_config=config)
    quantizer.process()
    model = quantizer.model.model
    if algorithm == "hqq":  # its writer sets no accuracy level: give its nodes the package's compute type
        _set_accuracy_level(model, nodes, bits, options.accuracy_level)
    return model


def _set_accuracy_level(model, nodes: list[str], bits: int, level: int) -> None:
    from onnx import helper

    names = {f"{name}_Q{bits}" for name in nodes}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and node.name in names:
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("accuracy_level", level)])


def _weights(model, nodes: list[str]) -> dict[str, tuple]:
    """MatMul node -> (node, its weight initializer) for ``nodes``."""
    initializers = {i.name: i for i in model.graph.initializer}
    return {n.name: (n, initializers[n.input[1]]) for n in model.graph.node if n.name in set(nodes)}


def _k_quant(model, nodes: list[str], block: int, options: QuantizationOptions):
    """llama.cpp's scale-and-minimum search (onnxruntime.quantization's port), 4-bit codes in MatMulNBits."""
    from onnx import numpy_helper
    from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor_k_quant_cpu

    from edge_sdk.converters import carry_over
    from edge_sdk.converters.gguf import CarriedWeight, pack_nibbles

    nbits_quantizer_module()
    for name, (_, initializer) in _weights(model, nodes).items():
        weight = numpy_helper.to_array(initializer).T.astype(np.float32)  # (N, K)
        n, k = weight.shape
        blocks = -(-k // block)
        padded = np.zeros((n, blocks * block), np.float32)
        padded[:, :k] = weight
        codes, scales, zero_points = quant_tensor_k_quant_cpu(padded, 4, block)
        codes = codes.astype(np.uint8).reshape(n, blocks, block)
        carry_over.replace(model, name, CarriedWeight("k-quant", 4, packed=pack_nibbles(codes), scales=scales.reshape(n, blocks).astype(np.float32),
                                                      zero_points=zero_points.reshape(n, blocks).astype(np.uint8), minimums=None),
                           options.accuracy_level, block=block, k=k)
    return model


def sensitive_layers(model, layers: list[WeightLayer], bits_of: Callable[[WeightLayer], int], block_of: Callable[[WeightLayer], int],
                     options: QuantizationOptions, feeds: list[dict]) -> tuple[set[str], dict]:
    """The 4-bit-planned MatMul layers to keep in INT8 so that at most ``options.ratio`` of their
    weights are 4-bit: the ones whose 4-bit rounding alone moves the next-token distribution most
    (mean KL from the FP32 graph's, over calibration prefill windows). Returns them and a summary."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    candidates = [l for l in layers if l.op_type == "MatMul" and bits_of(l) == 4]
    if not candidates or options.ratio >= 1:
        return set(), {}
    feeds = feeds[:SENSITIVITY_FEEDS]
    if not feeds:
        from edge_sdk.errors import InvalidInputError

        raise InvalidInputError(f"no calibration samples could be made from {options.calibration}; give more text")
    # one session with the candidates' weights as inputs, so each layer's rounding is tried without a new session
    variable = onnx.ModelProto()
    variable.CopyFrom(model)
    initializers = {i.name: i for i in variable.graph.initializer}
    originals = {}
    for layer in candidates:
        if layer.weight in originals:
            continue
        tensor = initializers[layer.weight]
        originals[layer.weight] = numpy_helper.to_array(tensor)
        variable.graph.initializer.remove(tensor)
        variable.graph.input.append(onnx.helper.make_tensor_value_info(layer.weight, tensor.data_type, list(tensor.dims)))
    options_ = ort.SessionOptions()
    options_.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(variable.SerializeToString(), options_, providers=["CPUExecutionProvider"])
    del variable
    logits_name = session.get_outputs()[0].name

    def log_probs(weights: dict) -> list[np.ndarray]:
        out = []
        for feed in feeds:
            logits = session.run([logits_name], {**feed, **weights})[0].astype(np.float64)
            logits = logits.reshape(-1, logits.shape[-1])
            logits -= logits.max(-1, keepdims=True)
            out.append(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))
        return out

    reference = log_probs(originals)
    scores: dict[str, float] = {}
    for index, layer in enumerate(candidates):
        trial = dict(originals)
        trial[layer.weight] = rounded_4bit(originals[layer.weight], block_of(layer), options.sym)
        kl = [float((np.exp(p) * (p - q)).sum(-1).mean()) for p, q in zip(reference, log_probs(trial))]
        scores[layer.node] = float(np.mean(kl))
        if (index + 1) % 25 == 0:
            log.info("sensitivity: %d of %d layers", index + 1, len(candidates))
    from edge_sdk.converters.onnx_graph import module_path

    paths = {n.name: module_path(n) or n.name for n in model.graph.node}
    total = sum(l.in_channels * l.out_channels for l in candidates)
    kept, int4 = set(), total
    for layer in sorted(candidates, key=lambda l: -scores[l.node]):
        if int4 <= options.ratio * total:
            break
        kept.add(layer.node)
        int4 -= layer.in_channels * layer.out_channels
    summary = {
        "int8_layers": len(kept), "int4_share": round(int4 / total, 4),
        "measure": f"mean KL from FP32 with one layer rounded to 4 bits, {len(feeds)} calibration windows",
        "most_sensitive": [{"layer": paths.get(l, l), "node": l, "kl": round(scores[l], 6)}
                           for l in sorted(scores, key=lambda n: -scores[n])[:5]],
    }
    return kept, summary


def rounded_4bit(weight: np.ndarray, block: int, sym: bool) -> np.ndarray:
    """``weight`` (K, N) rounded to 4 bits in groups of ``block`` along K and back to float: the
    round-to-nearest error the sensitivity measure tries (zero points as MatMulNBits stores them)."""
    k, n = weight.shape
    block = min(block, k) if block > 0 else k
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = weight
    groups = padded.reshape(blocks, block, n)
    if sym:
        scale = np.abs(groups).max(1, keepdims=True) / 8
        scale[scale == 0] = 1
        codes = np.clip(np.round(groups / scale), -8, 7)
        restored = codes * scale
    else:
        low, high = np.minimum(groups.min(1, keepdims=True), 0), np.maximum(groups.max(1, keepdims=True), 0)
        scale = (high - low) / 15
        scale[scale == 0] = 1
        zero = np.clip(np.round(-low / scale), 0, 15)
        restored = (np.clip(np.round(groups / scale) + zero, 0, 15) - zero) * scale
    return restored.reshape(blocks * block, n)[:k].astype(weight.dtype)
