"""Small passes over ONNX graphs (protos) that quantization needs, independent of the model's task.

- ``weight_layers``: the linear layers (MatMul with a constant 2-D weight) and embeddings (Gather
  from a constant table) of a graph, with their input channels and a layer kind read from the
  exporter's module-path metadata (``model.layers.*.self_attn.q_proj``).
- ``materialize_constant_transposes``: undo ``store_transposed_weights_once`` so a tied LM head is
  a plain constant weight again and can be quantized like every other layer.
- ``gemm_to_matmul``: ``Gemm(A, B, C)`` (GPT-2's Conv1D, ``addmm``) -> ``MatMul(A, B) + C``, the
  form weight-only quantizers (MatMulNBits) recognize.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_LAYER_INDEX = re.compile(r"\.\d+(?=\.|$)")


@dataclass(frozen=True)
class WeightLayer:
    """A layer whose weight is a constant matrix: the unit weight quantization works on."""

    node: str  # ONNX node name
    op_type: str  # "MatMul" or "Gather"
    weight: str  # initializer name
    kind: str  # module path with layer indices as "*", e.g. "model.layers.*.mlp.down_proj"
    in_channels: int  # the axis quantization groups run along (K of a MatMul, hidden size of an embedding)
    out_channels: int
    output: str  # name of the node's output tensor (engines may name the op after it)


def layer_kind(node) -> str:
    """The module path of ``node`` from the exporter's metadata, layer indices replaced by ``*``.

    The outermost ``model.`` (our export wrapper's attribute) is dropped. Graphs without the
    metadata get the op type as their kind.
    """
    scopes = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES_KEY), None)
    if not scopes:
        return node.op_type
    try:
        paths = [s for s in ast.literal_eval(scopes) if isinstance(s, str) and s]
    except (ValueError, SyntaxError):
        return node.op_type
    modules = [p for p in paths if "." in p] or paths
    path = modules[-1] if modules else node.op_type
    path = path[len("model.") :] if path.startswith("model.") else path
    return _LAYER_INDEX.sub(".*", path)


def weight_layers(model) -> list[WeightLayer]:
    """Linear layers (MatMul, constant 2-D B) and embeddings (Gather, constant 2-D table) of ``model``."""
    initializers = {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            dims = list(initializers[node.input[1]].dims)
            if len(dims) == 2:
                layers.append(WeightLayer(node.name, "MatMul", node.input[1], layer_kind(node), dims[0], dims[1], node.output[0]))
        elif node.op_type == "Gather" and node.input[0] in initializers:
            dims = list(initializers[node.input[0]].dims)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if len(dims) == 2 and axis == 0:
                layers.append(WeightLayer(node.name, "Gather", node.input[0], layer_kind(node), dims[1], dims[0], node.output[0]))
    return layers


def _replace_node(model, old, new_nodes) -> None:
    nodes = list(model.graph.node)
    index = nodes.index(old)
    model.graph.node.remove(old)
    for offset, node in enumerate(new_nodes):
        model.graph.node.insert(index + offset, node)


def materialize_constant_transposes(model) -> int:
    """Replace ``Transpose(initializer)`` nodes by a transposed initializer; return how many."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    done = 0
    for node in list(model.graph.node):
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = numpy_helper.to_array(initializers[node.input[0]])
        transposed = np.ascontiguousarray(array.transpose(perm) if perm else array.T)
        model.graph.initializer.append(numpy_helper.from_array(transposed, node.output[0]))
        model.graph.node.remove(node)
        done += 1
    return done


def gemm_to_matmul(model) -> int:
    """Rewrite ``Gemm`` with a constant 2-D B as ``MatMul`` (+ ``Add`` for C); return how many."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    done = 0
    for node in list(model.graph.node):
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
            continue
        weight = node.input[1]
        if attributes.get("transB", 0):
            array = numpy_helper.to_array(initializers[weight]).T
            weight = f"{weight}_transposed"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), weight))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name)
        matmul.metadata_props.extend(node.metadata_props)
        replacement = [matmul]
        if has_bias:
            replacement.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        _replace_node(model, node, replacement)
        done += 1
    return done


def merge_parallel_matmuls(model) -> int:
    """Merge MatMuls that read the same input with constant weights into one MatMul and a Split.

    Attention's q/k/v projections and an MLP's gate/up projections become one wider matrix
    product each: fewer, larger kernels (and, quantized, fewer MatMulNBits calls per token). The
    merged node's layer kind joins the originals' (``self_attn.q_proj+k_proj+v_proj``). Returns
    how many groups were merged.
    """
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    by_input: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers and len(initializers[node.input[1]].dims) == 2:
            by_input.setdefault(node.input[0], []).append(node)
    merged = 0
    for source, nodes in by_input.items():
        if len(nodes) < 2:
            continue
        weights = [initializers[n.input[1]] for n in nodes]
        if len({w.dims[0] for w in weights}) != 1 or len({w.data_type for w in weights}) != 1:
            continue
        arrays = [numpy_helper.to_array(w) for w in weights]
        widths = [a.shape[1] for a in arrays]
        name = f"{nodes[0].name}_merged"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.concatenate(arrays, axis=1), f"{name}.weight"),
            numpy_helper.from_array(np.array(widths, dtype=np.int64), f"{name}.split"),
        ])
        matmul = helper.make_node("MatMul", [source, f"{name}.weight"], [f"{name}_output"], name=name)
        kinds = [layer_kind(n) for n in nodes]
        prefix = kinds[0].rsplit(".", 1)[0] + "." if "." in kinds[0] else ""
        joined = prefix + "+".join(k[len(prefix):] if k.startswith(prefix) else k for k in kinds)
        matmul.metadata_props.add(key=NAME_SCOPES_KEY, value=repr(["model." + joined]))
        split = helper.make_node("Split", [f"{name}_output", f"{name}.split"], [n.output[0] for n in nodes],
                                 name=f"{name}_split", axis=-1)
        index = min(list(model.graph.node).index(n) for n in nodes)
        for node in nodes:
            model.graph.node.remove(node)
        model.graph.node.insert(index, split)
        model.graph.node.insert(index, matmul)
        merged += 1
    if merged:
        remove_unused_initializers(model)
    return merged


def canonicalize_rotary_frequencies(model) -> int:
    """Rewrite RoPE angles ``positions[..., None] * inv_freq`` into ``(inv_freq @ positions).T``.

    transformers computes the angles as a matrix product ``inv_freq[None, :, None] @
    positions[:, None, :]``; since the inner dimension is 1, the exporter's optimizer turns it into a
    broadcast Mul. onnxscript's RoPE fusion (cos/sin cache + ONNX Runtime's RotaryEmbedding)
    recognizes only the matrix-product form, so this puts it back. Same values; returns how many.
    """
    from onnx import TensorProto, helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    done = 0
    for node in list(model.graph.node):
        if node.op_type != "Mul":
            continue
        cast, inv_freq = producers.get(node.input[0]), initializers.get(node.input[1])
        if cast is None or inv_freq is None or cast.op_type != "Cast" or len(inv_freq.dims) != 1:
            continue
        unsqueeze = producers.get(cast.input[0])
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(unsqueeze.input) < 2:
            continue
        axes = initializers.get(unsqueeze.input[1])
        if axes is None or numpy_helper.to_array(axes).tolist() not in ([-1], [2]):
            continue
        if not all(c.op_type == "Concat" for c in consumers.get(node.output[0], [])):
            continue
        name = node.name or node.output[0]
        frequencies = numpy_helper.to_array(inv_freq).reshape(1, -1, 1)
        model.graph.initializer.extend([
            numpy_helper.from_array(frequencies, f"{name}.inv_freq_3d"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), f"{name}.axis_1"),
        ])
        replacement = [
            helper.make_node("Unsqueeze", [unsqueeze.input[0], f"{name}.axis_1"], [f"{name}_positions"], name=f"{name}_unsqueeze"),
            helper.make_node("Cast", [f"{name}_positions"], [f"{name}_positions_float"], name=f"{name}_cast", to=TensorProto.FLOAT),
            helper.make_node("MatMul", [f"{name}.inv_freq_3d", f"{name}_positions_float"], [f"{name}_angles"], name=f"{name}_matmul"),
            helper.make_node("Transpose", [f"{name}_angles"], [node.output[0]], name=f"{name}_transpose", perm=[0, 2, 1]),
        ]
        _replace_node(model, node, replacement)
        done += 1
    return done


def remove_unused_initializers(model) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def save_with_external_data(model, path: Path) -> list[Path]:
    """Save ``model`` as ``path`` with its weights in ``<path>.data``; return both files."""
    import onnx

    data = path.with_name(path.name + ".data")
    for stale in (path, data):
        if stale.exists():
            stale.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    return [path, data] if data.exists() else [path]
