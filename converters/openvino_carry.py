"""A quantized source's blocks in an OpenVINO model: GGUF Q4_0 / Q8_0 / Q4_1 blocks as the compressed-weight subgraphs NNCF writes and OpenVINO's CPU plugin fuses into its MatMuls.

Each carried layer's weight becomes codes in a low-precision constant, converted to float and
multiplied by the block's scale, (N, K / 32, 32) reshaped to (N, K), the MatMul reading it as rows
(transpose_b), as NNCF's compressed weights are: Q4_0 as i4 codes (q - 8), Q8_0 as i8 codes, Q4_1
as u4 codes times d, with its per-block minimums applied to the input's sums over each block by two
small MatMuls beside the layer (OpenVINO's zero points are integers, as MatMulNBits' fast ones are;
the same choice as ``carry_over`` makes for ONNX Runtime). Which layers are taken, and the check
that their blocks dequantize to exactly the exported FP32 weight, are ``carry_over.plan``'s.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np

from edge_sdk.converters.gguf import BLOCK, CarriedWeight, CarryOver, _unpack
from edge_sdk.converters.onnx_graph import WeightLayer


def carry_into(model, onnx_model, layers: list[WeightLayer], bits_of: Callable[[WeightLayer], int],
               carry: CarryOver) -> tuple[set[str], dict]:
    """Replace the weights of the MatMuls (OpenVINO ops named as the ONNX nodes of ``onnx_model``)
    whose GGUF blocks can be carried; return their names (for NNCF to leave alone) and the recipe's summary."""
    from edge_sdk.converters import carry_over

    taken, summary = carry_over.plan(onnx_model, layers, bits_of, carry)
    # a MatMul keeps its ONNX node's name, or (the frontend folds a transposed weight in: a tied
    # head) its weight constant keeps the initializer's
    weights = {layer.node: layer.weight for layer in layers}
    ops = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul":
            ops[op.get_friendly_name()] = op
            ops.setdefault(op.input(1).get_source_output().get_node().get_friendly_name(), op)
    done, replaced = set(), []
    for name, blocks in taken.items():
        op = ops.get(name) or ops.get(weights.get(name))
        if op is None:
            continue
        done |= _replace(op, blocks)
        replaced.append(blocks.type)
    model.validate_nodes_and_infer_types()
    if len(replaced) < len(taken):
        summary["requantized"]["not found in the OpenVINO model"] = len(taken) - len(replaced)
    summary["carried"] = dict(sorted(Counter(replaced).items()))
    if "Q4_1" in replaced:
        summary["q4_1"] = ("u4 codes times d (OpenVINO's compressed-weight form), plus each block's minimum times the "
                           "input's sum over the block (two small MatMuls): exact weights, float rounding in the order of the sums")
    return done, summary


def decompressed_weight(blocks: CarriedWeight):
    """The (N, K) float32 weight output of the compressed-weight subgraph for ``blocks``, without the
    Q4_1 minimums (those are added to the layer's output)."""
    import openvino as ov
    from openvino import opset13 as ops

    n, count, _ = blocks.packed.shape
    codes = _unpack(blocks.packed, blocks.bits).astype(np.int16) - blocks.zero_points[..., None].astype(np.int16)
    kind = {"Q4_0": ov.Type.i4, "Q8_0": ov.Type.i8, "Q4_1": ov.Type.u4}[blocks.type]
    weight = ops.convert(ops.constant(codes.astype(np.int8 if blocks.type != "Q4_1" else np.uint8), dtype=kind), ov.Type.f32)
    scaled = ops.multiply(weight, ops.constant(blocks.scales.astype(np.float32)[..., None]))
    return ops.reshape(scaled, ops.constant(np.array([n, count * BLOCK], dtype=np.int64)), special_zero=False)


def _replace(op, blocks: CarriedWeight) -> set[str]:
    """Returns the names of the MatMuls it made (NNCF must not compress the minimums' two)."""
    from openvino import opset13 as ops

    x = op.input(0).get_source_output()
    n, count, _ = blocks.packed.shape
    product = ops.matmul(x, decompressed_weight(blocks), op.get_attributes()["transpose_a"], True)
    product.set_friendly_name(op.get_friendly_name())
    output, name = product.output(0), op.get_friendly_name()
    made = {name}
    if blocks.minimums is not None:
        k = count * BLOCK
        indicator = np.zeros((k, count), np.float32)
        indicator[np.arange(k), np.arange(k) // BLOCK] = 1.0
        sums = ops.matmul(x, ops.constant(indicator), False, False)
        offsets = ops.matmul(sums, ops.constant(np.ascontiguousarray(blocks.minimums.T.astype(np.float32))), False, False)
        sums.set_friendly_name(f"{name}_block_sums")
        offsets.set_friendly_name(f"{name}_offsets")
        made |= {f"{name}_block_sums", f"{name}_offsets"}
        added = ops.add(product, offsets)
        added.set_friendly_name(f"{name}_minimums")
        output = added.output(0)
    op.output(0).replace(output)
    return made
