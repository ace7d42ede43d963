"""A quantized source's blocks in an ONNX Runtime graph: MatMulNBits built from GGUF blocks, each checked against the FP32 weight it replaces.

``carry_over(model, layers, bits_of, carry)`` takes the linear layers whose GGUF tensor is Q4_0,
Q4_1 or Q8_0 and whose planned bits match (4-bit layers take Q4_x, 8-bit layers Q8_0), checks that
the blocks dequantize to exactly the FP32 weight in the graph (the weight transformers loaded from
the same file), and replaces each MatMul by a MatMulNBits with ``block_size`` 32 that holds those
blocks as they are; for Q4_1, beside it, the per-block minimums applied to the sums of the input
over each block. What it did not take is quantized by the package's recipe, and the recipe says
which layers came from the source and why the others did not.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np

from edge_sdk.converters.gguf import BLOCK, CarriedWeight, CarryOver, _reader, read_blocks
from edge_sdk.converters.onnx_graph import WeightLayer, module_path


def plan(model, layers: list[WeightLayer], bits_of: Callable[[WeightLayer], int], carry: CarryOver,
         ) -> tuple[dict[str, CarriedWeight], dict]:
    """The MatMul layers (node name -> blocks) taken from the source, and a summary for the recipe."""
    from onnx import numpy_helper

    reader = _reader(carry.gguf)
    initializers = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    taken: dict[str, CarriedWeight] = {}
    reasons: Counter = Counter()
    for layer in layers:
        if layer.op_type != "MatMul":
            continue
        entries = [carry.tensors.get(name) for name in source_weights(module_path(nodes[layer.node]))]
        if not entries or None in entries:
            reasons["no quantized GGUF tensor of its own"] += 1
            continue
        blocks = _concatenated([read_blocks(reader, e["tensor"], e.get("rows")) for e in entries])
        if blocks is None:
            reasons["its GGUF type is not carried over"] += 1
        elif blocks.bits != bits_of(layer):
            reasons[f"{blocks.type} is {blocks.bits}-bit and the layer is planned {bits_of(layer)}-bit"] += 1
        elif layer.in_channels % BLOCK or blocks.packed.shape[0] != layer.out_channels:
            reasons["its shape does not match the GGUF tensor's"] += 1
        elif not np.array_equal(blocks.dequantized(), numpy_helper.to_array(initializers[layer.weight]).T):
            reasons["its blocks do not dequantize to the exported weight"] += 1
        else:
            taken[layer.node] = blocks
    summary = {
        "format": "gguf",
        "carried": dict(sorted(Counter(b.type for b in taken.values()).items())),
        "requantized": dict(sorted(reasons.items())),
        "check": "each carried layer's blocks dequantize to exactly the FP32 weight it replaces",
    }
    if any(b.type == "Q4_1" for b in taken.values()):
        summary["q4_1"] = ("d * q with zero point 0 in MatMulNBits (its pre-packed kernels), plus each block's "
                           "minimum times the input's sum over the block (two small MatMuls): exact weights, float "
                           "rounding in the order of the sums")
    return taken, summary


def source_weights(path: str | None) -> list[str]:
    """The Hugging Face weights a linear layer holds: one (``layers.0.mlp.down_proj``), or those a
    merged layer concatenates along its outputs (``layers.0.self_attn.q_proj+k_proj+v_proj``)."""
    if not path:
        return []
    prefix, _, last = path.rpartition(".")
    return [f"{prefix + '.' if prefix else ''}{part}.weight" for part in last.split("+")]


def _concatenated(parts: list[CarriedWeight | None]) -> CarriedWeight | None:
    """One weight of several stacked along the outputs, when all are of one carried type."""
    if not parts or any(p is None for p in parts) or len({p.type for p in parts}) != 1:
        return None
    if len(parts) == 1:
        return parts[0]
    joined = {name: np.concatenate([getattr(p, name) for p in parts]) for name in ("packed", "scales", "zero_points")}
    minimums = None if parts[0].minimums is None else np.concatenate([p.minimums for p in parts])
    return CarriedWeight(parts[0].type, parts[0].bits, minimums=minimums, **joined)


def replace(model, node_name: str, blocks: CarriedWeight, accuracy_level: int, block: int = BLOCK, k: int | None = None) -> None:
    """Replace MatMul ``node_name`` (input A, a constant weight) by MatMulNBits over ``blocks``
    (named ``<node>_Q<bits>``, as ONNX Runtime's quantizer names its nodes); ``block``: its block
    size, ``k``: input channels when the last block is padded."""
    from onnx import helper, numpy_helper

    node = next(n for n in model.graph.node if n.name == node_name)
    n, blocks_per_row, _ = blocks.packed.shape
    k = k or blocks_per_row * block
    prefix = f"{node.input[1]}_Q{blocks.bits}_{'gguf' if blocks.type.startswith('Q') else blocks.type}"
    zero_points = blocks.zero_points if blocks.bits == 8 else _pack_pairs(blocks.zero_points)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(blocks.packed), f"{prefix}_B"),
        numpy_helper.from_array(blocks.scales.reshape(-1).astype(np.float32), f"{prefix}_scales"),
        numpy_helper.from_array(np.ascontiguousarray(zero_points).reshape(-1), f"{prefix}_zero_points"),
    ])
    output = node.output[0]
    product = output if blocks.minimums is None else f"{prefix}_product"
    nbits = helper.make_node("MatMulNBits", [node.input[0], f"{prefix}_B", f"{prefix}_scales", f"{prefix}_zero_points"],
                             [product], name=f"{node.name}_Q{blocks.bits}", domain="com.microsoft", K=k, N=n,
                             bits=blocks.bits, block_size=block, accuracy_level=accuracy_level)
    nbits.metadata_props.extend(node.metadata_props)
    added = [nbits]
    if blocks.minimums is not None:  # Q4_1: + (x's sum over each block) times the block's minimum, as two small MatMuls
        indicator = f"block_sums_{k}"  # (K, blocks): 1 where input channel k is in block b; one per K, shared by layers
        if not any(i.name == indicator for i in model.graph.initializer):
            ones = np.zeros((k, blocks_per_row), np.float32)
            ones[np.arange(k), np.arange(k) // BLOCK] = 1.0
            model.graph.initializer.append(numpy_helper.from_array(ones, indicator))
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(blocks.minimums.T), f"{prefix}_minimums"))
        sums, offsets = f"{prefix}_block_sums", f"{prefix}_offsets"
        added += [
            helper.make_node("MatMul", [node.input[0], indicator], [sums], name=f"{prefix}_sums"),
            helper.make_node("MatMul", [sums, f"{prefix}_minimums"], [offsets], name=f"{prefix}_offsets"),
            helper.make_node("Add", [product, offsets], [output], name=f"{prefix}_add"),
        ]
    index = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    for offset, new in enumerate(added):
        model.graph.node.insert(index + offset, new)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _pack_pairs(values: np.ndarray) -> np.ndarray:
    """4-bit zero points (rows, blocks) two per byte along each row, the first in the low nibble
    (MatMulNBits' layout: each row's blocks padded to whole bytes)."""
    rows, count = values.shape
    if count % 2:
        values = np.concatenate([values, np.zeros((rows, 1), values.dtype)], axis=1)
    return (values[:, 0::2] | (values[:, 1::2] << 4)).astype(np.uint8)
