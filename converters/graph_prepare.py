"""Rewrites that put an exported graph in the form fusion and quantization tools recognize.

Done with onnx_ir rather than protobuf: weights stay memory-mapped from the external data file
until written, and replaced tensors are freed (protobuf's arena keeps every byte it ever held,
which cost SmolLM2-135M an extra 940 MB on the q/k/v merge alone).

- ``untie``: ``Transpose(embedding)`` feeding the LM head becomes a matrix of its own, so the LM
  head is a plain constant weight that can be quantized like every other layer;
- ``Gemm(A, B, C)`` (GPT-2's Conv1D, ``addmm``) -> ``MatMul(A, B) + C``, the form MatMulNBits and
  the fusions recognize;
- RoPE angles ``positions[..., None] * inv_freq`` -> ``(inv_freq @ positions).T``: transformers
  writes a matrix product with inner dimension 1, the exporter's optimizer turns it into a
  broadcast Mul, and onnxscript's rotary fusion (cos/sin cache) only knows the product form;
- MatMuls that read the same input with constant weights (q/k/v, gate/up) -> one wider MatMul and
  a Split: fewer, larger kernels per token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_sdk.converters.onnx_graph import NAME_SCOPES_KEY, module_path_of


def prepare_graph(src: Path, dst: Path, untie: bool) -> dict[str, int]:
    """Write ``src`` with the rewrites applied to ``dst`` (+ ``<dst>.data``); return counts per rewrite."""
    import onnx_ir as ir

    model = ir.load(str(src))
    graph = model.graph
    counts = {"untied": _untie(graph) if untie else 0}
    counts["gemm_to_matmul"] = _gemm_to_matmul(graph)
    counts["rope_product_form"] = _rope_product_form(graph)
    counts["merged_matmuls"] = _merge_parallel_matmuls(graph)
    ir.save(model, str(dst), external_data=f"{dst.name}.data")
    return {name: count for name, count in counts.items() if count}


def _constant(graph, name: str, array: np.ndarray):
    import onnx_ir as ir

    value = ir.Value(name=name, const_value=ir.Tensor(np.ascontiguousarray(array), name=name))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(value.const_value.dtype)
    graph.register_initializer(value)
    return value


def _const(value) -> np.ndarray | None:
    return value.const_value.numpy() if value is not None and value.const_value is not None else None


def _replace(graph, old_node, new_nodes: list, old_output, new_output) -> None:
    """Put ``new_nodes`` where ``old_node`` was; ``new_output`` takes over ``old_output``'s uses and name."""
    graph.insert_before(old_node, new_nodes)
    name = old_output.name
    old_output.replace_all_uses_with(new_output, replace_graph_outputs=True)
    graph.remove(old_node, safe=True)
    new_output.name = name


def _drop_if_unused(graph, value) -> None:
    if value is not None and value.is_initializer() and not value.uses() and not value.is_graph_output():
        graph.initializers.pop(value.name, None)


def _untie(graph) -> int:
    done = 0
    for node in list(graph):
        if node.op_type != "Transpose" or _const(node.inputs[0]) is None or not node.inputs[0].is_initializer():
            continue
        perm = node.attributes["perm"].as_ints() if "perm" in node.attributes else None
        array = _const(node.inputs[0])
        matrix = _constant(graph, f"{node.outputs[0].name}.untied", array.transpose(perm) if perm else array.T)
        node.outputs[0].replace_all_uses_with(matrix, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        done += 1
    return done


def _gemm_to_matmul(graph) -> int:
    import onnx_ir as ir

    done = 0
    for node in list(graph):
        if node.op_type != "Gemm" or _const(node.inputs[1]) is None:
            continue
        attributes = {name: attr.value for name, attr in node.attributes.items()}
        if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
            continue
        weight = original_weight = node.inputs[1]
        if attributes.get("transB", 0):
            weight = _constant(graph, f"{weight.name}_transposed", _const(weight).T)
        matmul = ir.node("MatMul", [node.inputs[0], weight], name=node.name, metadata_props=dict(node.metadata_props))
        new_nodes, result = [matmul], matmul.outputs[0]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            add = ir.node("Add", [matmul.outputs[0], node.inputs[2]], name=f"{node.name}_bias")
            new_nodes, result = [matmul, add], add.outputs[0]
        _replace(graph, node, new_nodes, node.outputs[0], result)
        _drop_if_unused(graph, original_weight)
        done += 1
    return done


def _rope_product_form(graph) -> int:
    import onnx_ir as ir

    done = 0
    for node in list(graph):
        if node.op_type != "Mul" or len(node.inputs) != 2:
            continue
        cast, inv_freq = node.inputs[0].producer(), _const(node.inputs[1])
        if cast is None or cast.op_type != "Cast" or inv_freq is None or inv_freq.ndim != 1:
            continue
        unsqueeze = cast.inputs[0].producer()
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(unsqueeze.inputs) < 2:
            continue
        axes = _const(unsqueeze.inputs[1])
        if axes is None or axes.tolist() not in ([-1], [2]):
            continue
        if not all(use.node.op_type == "Concat" for use in node.outputs[0].uses()):
            continue
        name = node.name or node.outputs[0].name
        frequencies = _constant(graph, f"{name}.inv_freq_3d", inv_freq.reshape(1, -1, 1))
        axis = _constant(graph, f"{name}.axis_1", np.array([1], dtype=np.int64))
        positions = ir.node("Unsqueeze", [unsqueeze.inputs[0], axis], name=f"{name}_unsqueeze")
        as_float = ir.node("Cast", [positions.outputs[0]], {"to": ir.DataType.FLOAT}, name=f"{name}_cast")
        angles = ir.node("MatMul", [frequencies, as_float.outputs[0]], name=f"{name}_matmul")
        transpose = ir.node("Transpose", [angles.outputs[0]], {"perm": [0, 2, 1]}, name=f"{name}_transpose")
        _replace(graph, node, [positions, as_float, angles, transpose], node.outputs[0], transpose.outputs[0])
        done += 1
    return done


def _merge_parallel_matmuls(graph) -> int:
    import onnx_ir as ir

    by_input: dict[int, list] = {}
    for node in graph:
        weight = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) == 2 else None
        if weight is not None and weight.const_value is not None and len(weight.const_value.shape) == 2:
            by_input.setdefault(id(node.inputs[0]), []).append(node)
    done = 0
    for nodes in by_input.values():
        weights = [n.inputs[1] for n in nodes]
        if len(nodes) < 2 or len({w.const_value.shape[0] for w in weights}) != 1 or len({w.const_value.dtype for w in weights}) != 1:
            continue
        name = f"{nodes[0].name}_merged"
        merged = _constant(graph, f"{name}.weight", np.concatenate([_const(w) for w in weights], axis=1))
        widths = _constant(graph, f"{name}.split", np.array([w.const_value.shape[1] for w in weights], dtype=np.int64))
        # the merged layer keeps its modules' paths, indices included ("layers.3.self_attn.q_proj+k_proj+v_proj"):
        # its kind for the manifest, and the source weights it holds (a GGUF source's blocks, carry_over)
        paths = [module_path_of(n.metadata_props.get(NAME_SCOPES_KEY)) or n.op_type for n in nodes]
        prefix = paths[0].rsplit(".", 1)[0] + "." if "." in paths[0] else ""
        joined = prefix + "+".join(p[len(prefix):] if p.startswith(prefix) else p for p in paths)
        matmul = ir.node("MatMul", [nodes[0].inputs[0], merged], name=name,
                         metadata_props={NAME_SCOPES_KEY: repr(["model." + joined])})
        split = ir.node("Split", [matmul.outputs[0], widths], {"axis": -1}, num_outputs=len(nodes), name=f"{name}_split")
        graph.insert_before(nodes[0], [matmul, split])
        for node, output in zip(nodes, split.outputs):
            original = node.outputs[0]
            output_name = original.name
            original.replace_all_uses_with(output, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            output.name = output_name
        for weight in weights:
            _drop_if_unused(graph, weight)
        done += 1
    return done
