"""Attention over a preallocated KV cache for ONNX Runtime: MultiHeadAttention -> GroupQueryAttention.

After onnxscript's fusions a decoder layer's attention reads

    present.i.key   = Concat(past_key_values.i.key, K)        (batch, kv_heads, past + new, head_dim)
    present.i.value = Concat(past_key_values.i.value, V)
    out             = MultiHeadAttention(Q, repeat(present.i.key), repeat(present.i.value), attention_bias)

so every step copies the whole cache twice (the concatenation, then the repeat over query heads)
and builds a (batch, new, past + new) mask. This rewrite makes each layer one

    out, present.i.key, present.i.value = GroupQueryAttention(Q, K, V, past.i.key, past.i.value, seqlens_k, total_sequence_length)

which onnxruntime-genai also runs: the caller binds one buffer per cache tensor as both past input
and present output (``(batch, kv_heads, capacity, head_dim)``, allocated once per generation),
and the kernel writes the new keys and values in place. Rows are not left-padded: each row's
tokens start at position 0 and ``seqlens_k`` (int32, per row) says how many the cache holds after
this call, minus one; ``total_sequence_length`` (int32 scalar) is the longest row's. Sliding
windows go into the kernel (``local_window_size``: a token sees itself and the window's previous
tokens, as transformers' sliding masks do). Rotary embedding stays the fused RotaryEmbedding
before it, fed by position_ids.

The graph contract the runtime reads (``runtimes.decoder.DecoderGraph.shared_cache``): inputs
``seqlens_k`` and ``total_sequence_length`` instead of ``attention_mask``. The rewrite is applied
only when every layer matches and nothing else reads the attention mask (OPT computes positions
from it, for instance); the export's probe then checks the result against the unfused graph.
"""

from __future__ import annotations

import logging

log = logging.getLogger("edge_sdk")

SEQLENS, TOTAL = "seqlens_k", "total_sequence_length"  # the inputs GroupQueryAttention graphs add
MASK, POSITIONS = "attention_mask", "position_ids"
PAST, PRESENT = "past_key_values.", "present."
CAPACITY_AXIS = "cache_capacity"  # axis 2 of the cache inputs and outputs: the buffer, not the past
_PASS_THROUGH = {"Reshape", "Expand", "Unsqueeze", "Transpose", "Identity", "Squeeze"}  # repeat_kv and layout changes
_RESHAPE_BSD = "gqa_reshape_bsd"


def group_query_attention(model, windows: list[int | None]):
    """A copy of ``model`` (an onnx.ModelProto, weights may stay external) in which every layer's
    MultiHeadAttention and cache concatenations are one GroupQueryAttention; ``model`` itself is
    not changed. ``windows``: each layer's sliding window (None: full attention). None when the
    graph does not have the expected shape."""
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    try:
        _rewrite(work, windows)
    except _NoMatch as e:
        log.debug("GroupQueryAttention not applied: %s", e)
        return None
    return work


class _NoMatch(Exception):
    pass


def _rewrite(model, windows: list[int | None]) -> None:
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    if POSITIONS not in inputs or MASK not in inputs:
        raise _NoMatch("the graph has no position_ids / attention_mask inputs")
    producer = {name: node for node in graph.node for name in node.output}
    layers = len(windows)
    concat = {}  # present.i.key/value -> Concat(past, new) node, where the cache is concatenated outside attention
    for kind in ("key", "value"):
        for layer in range(layers):
            present = f"{PRESENT}{layer}.{kind}"
            node = producer.get(present)
            if node is not None and node.op_type == "Concat" and len(node.input) == 2 and node.input[0] == f"{PAST}{layer}.{kind}":
                concat[present] = node
    attention = [n for n in graph.node if n.op_type == "MultiHeadAttention" and n.domain == "com.microsoft"]
    if len(attention) != layers:
        raise _NoMatch(f"{len(attention)} MultiHeadAttention nodes for {layers} layers")

    def source(name: str) -> str | None:
        """The present.* output a MultiHeadAttention key/value input is read from (through repeat_kv)."""
        for _ in range(8):
            if name in concat:
                return name
            node = producer.get(name)
            if node is None or node.op_type not in _PASS_THROUGH:
                return None
            name = node.input[0]
        return None

    heads_of = {}
    for layer in range(layers):
        shape = inputs[f"{PAST}{layer}.key"].type.tensor_type.shape.dim
        if len(shape) != 4 or not shape[1].HasField("dim_value"):
            raise _NoMatch("the cache inputs have no static head count")
        heads_of[layer] = shape[1].dim_value

    done, new_nodes = set(), {}
    for node in attention:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs_of = list(node.input) + [""] * (10 - len(node.input))
        if len(node.input) < 3 or inputs_of[3] or inputs_of[4] or inputs_of[8] or inputs_of[9]:
            raise _NoMatch(f"{node.name} has a bias, key padding mask or other inputs of its own")
        if set(attrs) - {"num_heads", "scale", "mask_filter_value", "unidirectional"} or attrs.get("unidirectional"):
            raise _NoMatch(f"{node.name} has attributes {sorted(attrs)}")
        if inputs_of[6]:  # the cache goes through attention itself: MultiHeadAttention(q, k, v, ..., past_key, past_value)
            key, value = (node.output[1] if len(node.output) > 1 else ""), (node.output[2] if len(node.output) > 2 else "")
            layer = int(key[len(PRESENT):].split(".")[0]) if key.startswith(PRESENT) and key.endswith(".key") else -1
            if layer < 0 or (inputs_of[6], inputs_of[7], value) != (f"{PAST}{layer}.key", f"{PAST}{layer}.value", f"{PRESENT}{layer}.value"):
                raise _NoMatch(f"{node.name} reads a past it does not return as this layer's present")
            prefix, extra = f"gqa_{layer}", []
            new_key, new_value = node.input[1], node.input[2]  # (batch, new, kv_heads x head_dim) already
        else:  # concatenated outside: present = Concat(past, new) in (batch, heads, new, head_dim), repeated for attention
            key, value = source(node.input[1]), source(node.input[2])
            if key is None or value is None or not key.endswith(".key") or not value.endswith(".value"):
                raise _NoMatch(f"{node.name} does not read the cache outputs")
            layer = int(key[len(PRESENT):].split(".")[0])
            if value != f"{PRESENT}{layer}.value":
                raise _NoMatch(f"{node.name}: key and value of different layers")
            prefix, extra = f"gqa_{layer}", []
            for kind, present in (("key", key), ("value", value)):
                transposed, reshaped = f"{prefix}_{kind}_bsnh", f"{prefix}_{kind}_bsd"
                extra += [helper.make_node("Transpose", [concat[present].input[1]], [transposed], name=f"{prefix}_{kind}_transpose",
                                           perm=[0, 2, 1, 3]),
                          helper.make_node("Reshape", [transposed, _RESHAPE_BSD], [reshaped], name=f"{prefix}_{kind}_reshape")]
            new_key, new_value = f"{prefix}_key_bsd", f"{prefix}_value_bsd"
        if layer in done:
            raise _NoMatch(f"two attention nodes for layer {layer}")
        window = windows[layer]
        gqa_attrs = {"num_heads": int(attrs["num_heads"]), "kv_num_heads": int(heads_of[layer]),
                     "local_window_size": int(window) if window else -1}
        if "scale" in attrs:
            gqa_attrs["scale"] = float(attrs["scale"])
        gqa = helper.make_node(
            "GroupQueryAttention",
            [node.input[0], new_key, new_value, f"{PAST}{layer}.key", f"{PAST}{layer}.value", SEQLENS, TOTAL],
            [node.output[0], key, value], name=f"{prefix}_GroupQueryAttention", domain="com.microsoft", **gqa_attrs)
        new_nodes[node.name] = [*extra, gqa]
        done.add(layer)
    if len(done) != layers:
        raise _NoMatch("not every layer has its own attention")
    concat = {present: node for present, node in concat.items() if int(present[len(PRESENT):].split(".")[0]) in done}

    removed = {id(n) for n in concat.values()}
    rebuilt = []
    for node in graph.node:
        if id(node) in removed:
            continue
        rebuilt.extend(new_nodes.get(node.name, [node]) if node.op_type == "MultiHeadAttention" else [node])
    del graph.node[:]
    graph.node.extend(rebuilt)
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), _RESHAPE_BSD))
    _remove_dead_nodes(graph)
    if any(MASK in node.input for node in graph.node):
        raise _NoMatch("something besides attention reads the attention mask")
    kept = [i for i in graph.input if i.name != MASK]
    del graph.input[:]
    graph.input.extend(kept)
    graph.input.extend([helper.make_tensor_value_info(SEQLENS, TensorProto.INT32, ["batch"]),
                        helper.make_tensor_value_info(TOTAL, TensorProto.INT32, [])])
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith((PAST, PRESENT)):
            value.type.tensor_type.shape.dim[2].Clear()
            value.type.tensor_type.shape.dim[2].dim_param = CAPACITY_AXIS
    del graph.value_info[:]  # shapes of removed or changed values; ONNX Runtime infers its own
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _remove_dead_nodes(graph) -> None:
    """Drop nodes whose outputs nothing reads (the repeat_kv copies and the mask code)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attribute in node.attribute:  # subgraphs (If, Loop) read outer values
                for sub in list(attribute.g.node if attribute.HasField("g") else []) + [n for g in attribute.graphs for n in g.node]:
                    needed.update(i for i in sub.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
