"""The LM head and the embedding tables in ONNX Runtime packages: which MatMul is the head, a tied
table read from the head's quantized blocks, and embedding tables as GatherBlockQuantized."""

from __future__ import annotations

import numpy as np

from edge_sdk.converters.onnx_graph import WeightLayer


_TO_LOGITS = {"Add", "Mul", "Div", "Tanh", "Cast", "Reshape", "Identity"}  # bias, scale, soft-cap between head and logits


def head_nodes(model) -> set[str]:
    """The LM head: the MatMul whose output reaches a ``logits`` graph output through bias, scale or
    soft-cap ops only (any model's, whatever its module is called; Whisper's wrapper names it
    ``head``). With the embedding tables, what --head-weights sets in int4 packages, as llama.cpp
    keeps its token embedding and output at Q6_K and NNCF keeps them INT8 by default."""
    producer = {name: node for node in model.graph.node for name in node.output}
    found = set()
    for output in model.graph.output:
        if "logits" not in output.name:
            continue
        node = producer.get(output.name)
        for _ in range(8):
            if node is None:
                break
            if node.op_type == "MatMul":
                found.add(node.name)
                break
            if node.op_type not in _TO_LOGITS:
                break
            node = next((producer[i] for i in node.input if i in producer), None)
    return found


def tied_table(model, layers: list[WeightLayer], heads: set[str]) -> tuple[WeightLayer, WeightLayer] | None:
    """(embedding, LM head) when the head is the embedding table transposed (tied weights, which
    the prepared graph stores twice): the package then stores it once (``gather_from_head``)."""
    from onnx import numpy_helper

    tables = [layer for layer in layers if layer.op_type == "Gather"]
    matmuls = [layer for layer in layers if layer.op_type == "MatMul" and layer.node in heads]
    if len(tables) != 1 or len(matmuls) != 1 or (tables[0].in_channels, tables[0].out_channels) != (matmuls[0].in_channels, matmuls[0].out_channels):
        return None
    initializers = {t.name: t for t in model.graph.initializer}
    table, head = (numpy_helper.to_array(initializers[layer.weight]) for layer in (tables[0], matmuls[0]))
    return (tables[0], matmuls[0]) if np.array_equal(table, head.T) else None


def gather_from_head(model, table: WeightLayer, head: WeightLayer, bits: int) -> bool:
    """The embedding lookup as GatherBlockQuantized over the quantized LM head's own initializers.

    MatMulNBits quantizes the head (hidden, vocab) in blocks along hidden for each vocabulary
    entry: the same blocks as an embedding table quantized along its hidden axis, so one copy
    serves both (as llama.cpp's tied token_embd/output). The head's (vocab, blocks, bytes) data and
    flat scales and zero points are reshaped to the (vocab, ...) layout GatherBlockQuantized reads
    (ONNX Runtime folds the reshapes at load). False (nothing changed) when the head's blocks do
    not tile the hidden axis exactly (a per-channel block padded past it).
    """
    from onnx import helper, numpy_helper

    quantized = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith(head.node + "_Q"))
    attributes = {a.name: helper.get_attribute_value(a) for a in quantized.attribute}
    vocab, hidden, block = attributes["N"], attributes["K"], attributes["block_size"]
    if hidden % block:
        return False
    blocks = hidden // block
    shapes = {"data": [vocab, blocks * block * bits // 8], "scales": [vocab, blocks], "zero_points": [vocab, -(-blocks * bits // 8)]}
    inputs = []
    for part, source in zip(("data", "scales", "zero_points"), quantized.input[1:4]):
        shape, reshaped = f"{table.weight}_{part}_shape", f"{table.weight}_{part}_from_head"
        model.graph.initializer.append(numpy_helper.from_array(np.array(shapes[part], dtype=np.int64), shape))
        inputs.append((helper.make_node("Reshape", [source, shape], [reshaped], name=f"shared_table_{part}_{table.node}"), reshaped))
    if len(quantized.input) < 4 or not quantized.input[3]:  # symmetric: both kernels' default zero point (2^(bits-1))
        inputs = inputs[:2]
    node = next(n for n in model.graph.node if n.name == table.node)
    replacement = helper.make_node(
        "GatherBlockQuantized", [inputs[0][1], node.input[1], *[name for _, name in inputs[1:]]], list(node.output),
        name=f"{node.name}_Q{bits}", domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=block, bits=bits)
    replacement.metadata_props.extend(node.metadata_props)
    index = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    for offset, (reshape, _) in enumerate(inputs):
        model.graph.node.insert(index + offset, reshape)
    model.graph.node.insert(index + len(inputs), replacement)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return True


def quantize_embedding(model, layer: WeightLayer, bits: int, block: int, sym: bool) -> None:
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
