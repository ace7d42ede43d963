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
tokens, as transformers' sliding masks do). Where a layer has plain full-width rotary embedding,
that moves into the kernel too (``do_rotary``, positions from ``seqlens_k``) and q/k/v reach it
packed from their one merged product, as onnxruntime-genai's graphs do: no split, reshapes,
transposes or rotary ops per layer (``_rotary_into_attention``). Partial rotary and q/k norms
keep the fused RotaryEmbedding before the kernel, fed by position_ids.

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


def group_query_attention(model, windows: list[int | None], positions: int | None = None, weights_dir=None):
    """A copy of ``model`` (an onnx.ModelProto, weights may stay external) in which every layer's
    MultiHeadAttention and cache concatenations are one GroupQueryAttention; ``model`` itself is
    not changed. ``windows``: each layer's sliding window (None: full attention). With
    ``positions`` (the model's context length) the rotary embedding moves into the kernel too
    where a layer's shape allows (see ``_rotary_into_attention``); ``weights_dir`` is where
    external weights are read from for that. None when the graph does not have the expected shape."""
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    try:
        _rewrite(work, windows)
    except _NoMatch as e:
        log.debug("GroupQueryAttention not applied: %s", e)
        return None
    if positions:
        folded = _rotary_into_attention(work, positions, weights_dir)
        log.debug("rotary embedding inside GroupQueryAttention in %d of %d layers", folded, len(windows))
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


def _rotary_into_attention(model, positions: int, weights_dir) -> int:
    """Move each layer's rotary embedding (and, where q/k/v come from one product, its split) into
    its GroupQueryAttention: ``do_rotary`` with cos/sin tables of ``positions`` rows, evaluated
    once from the graph's own rotary subgraph (so any rope scaling the exporter traced is kept).

    The kernel takes each token's position from ``seqlens_k`` (rows start at cache position 0, as
    the runtime drives them), where the RotaryEmbedding ops read ``position_ids``: the same
    positions, one Split, two Reshape/Transpose pairs on each side and two rotary ops fewer per
    layer. Applies per layer to the plain pattern only: query rotated as (batch, seq, hidden) or as
    heads (Phi-3), key reshaped and transposed to heads, rotated and transposed back, full-width
    non-interleaved rotary. Partial rotary (Phi, GPT-NeoX), per-head q/k norms between the product
    and rotary (Qwen3) and learned positions keep their graph; q/k/v sliced (not split) from one
    product (Phi-3) stay three inputs. Returns the layers changed.
    """
    from onnx import helper

    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1

    def made_by(name: str, op: str, domain: str = ""):
        node = producer.get(name)
        return node if node is not None and node.op_type == op and node.domain == domain else None

    def perm(node) -> list[int] | None:
        return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)

    def heads_to_bsd(name: str) -> str | None:
        """X for a value read as Transpose(Reshape(X), 0213) (batch, heads, seq, head_dim)."""
        transposed = made_by(name, "Transpose")
        reshaped = transposed is not None and perm(transposed) == [0, 2, 1, 3] and made_by(transposed.input[0], "Reshape")
        return reshaped.input[0] if reshaped else None

    def back_to_bsd(name: str) -> str | None:
        """Y for our own Reshape(Transpose(Y, 0213), [0, 0, -1]) feeding GroupQueryAttention."""
        reshaped = made_by(name, "Reshape")
        transposed = reshaped is not None and reshaped.input[1] == _RESHAPE_BSD and made_by(reshaped.input[0], "Transpose")
        return transposed.input[0] if transposed and perm(transposed) == [0, 2, 1, 3] else None

    def plain_rotary(node) -> bool:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return (node.input[1] == POSITIONS and not attrs.get("interleaved", 0) and not attrs.get("rotary_embedding_dim", 0)
                and attrs.get("scale", 1.0) == 1.0 and not attrs.get("is_packed_batching", 0))

    tables: dict[tuple[str, str], tuple[str, str]] = {}
    changed = 0
    for node in graph.node:
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft" or len(node.input) != 7:
            continue
        rotary_q, query = made_by(node.input[0], "RotaryEmbedding", "com.microsoft"), None
        if rotary_q is not None:  # rotated as (batch, seq, hidden)
            query = rotary_q.input[0]
        else:  # rotated as heads, then back: Reshape(Transpose(RotaryEmbedding(heads), 0213)) (Phi-3)
            reshaped = made_by(node.input[0], "Reshape")
            transposed = reshaped is not None and made_by(reshaped.input[0], "Transpose")
            rotary_q = transposed and perm(transposed) == [0, 2, 1, 3] and made_by(transposed.input[0], "RotaryEmbedding", "com.microsoft")
            query = rotary_q and heads_to_bsd(rotary_q.input[0])
        rotated_k = back_to_bsd(node.input[1])
        rotary_k = rotated_k and made_by(rotated_k, "RotaryEmbedding", "com.microsoft")
        if not rotary_q or not rotary_k or not plain_rotary(rotary_q) or not plain_rotary(rotary_k):
            continue
        if tuple(rotary_q.input[2:4]) != tuple(rotary_k.input[2:4]):
            continue
        key = heads_to_bsd(rotary_k.input[0])
        value = back_to_bsd(node.input[2])
        value = value and heads_to_bsd(value)
        if not query or key is None or value is None or readers.get(rotary_q.output[0]) != 1:
            continue
        cos, sin = rotary_q.input[2], rotary_q.input[3]
        head_size = _cache_head_size(graph, node.input[3])
        if not head_size or head_size % 16:  # the kernel's rotary path needs head sizes in multiples of 16
            continue
        if (cos, sin) not in tables:
            try:
                tables[(cos, sin)] = _rotary_tables(model, POSITIONS, cos, sin, positions, weights_dir, len(tables))
            except Exception as e:  # a subgraph it cannot copy or run: rotary stays outside, as before
                log.debug("rotary embedding stays outside attention: %s: %s", type(e).__name__, e)
                continue
        packed = _packed_projection(graph, made_by, [query, key, value], weights_dir)
        if packed is not None:
            query, key, value = packed, "", ""  # (batch, seq, (heads + 2 kv_heads) x head_dim)
        node.input[0], node.input[1], node.input[2] = query, key, value
        node.input.extend(tables[(cos, sin)])
        node.attribute.extend([helper.make_attribute("do_rotary", 1), helper.make_attribute("rotary_interleaved", 0)])
        changed += 1
    if changed:
        _remove_dead_nodes(graph)
    return changed


def _cache_head_size(graph, past: str) -> int | None:
    """Dimension 3 of a cache input (batch, kv_heads, positions, head_size), if static."""
    value = next((i for i in graph.input if i.name == past), None)
    dims = value.type.tensor_type.shape.dim if value is not None else []
    return dims[3].dim_value if len(dims) == 4 and dims[3].HasField("dim_value") else None


def _packed_projection(graph, made_by, parts: list[str], weights_dir) -> str | None:
    """The (batch, seq, q + k + v) tensor that ``parts`` (query, key, value) are split from, or
    None. Biases added after the split (Qwen2) move before it: one Add of the three concatenated."""
    import numpy as np
    from onnx import helper, numpy_helper

    split = made_by(parts[0], "Split")
    if split is not None and list(split.output) == parts:
        return split.input[0]
    adds = [made_by(part, "Add") for part in parts]
    if any(add is None for add in adds):
        return None
    split = made_by(adds[0].input[0], "Split")
    if split is None or list(split.output) != [add.input[0] for add in adds]:
        return None
    initializers = {t.name: t for t in graph.initializer}
    if any(add.input[1] not in initializers for add in adds):
        return None
    biases = [_initializer_array(initializers[add.input[1]], weights_dir) for add in adds]
    if any(b.ndim != 1 for b in biases):
        return None
    name = f"{split.name}_packed_bias"
    graph.initializer.append(numpy_helper.from_array(np.concatenate(biases).astype(biases[0].dtype), name))
    position = next(i for i, node in enumerate(graph.node) if node is split)
    graph.node.insert(position + 1, helper.make_node("Add", [split.input[0], name], [f"{name}_out"], name=f"{split.name}_packed_add"))
    return f"{name}_out"


def _initializer_array(tensor, weights_dir):
    """An initializer's values, reading external data from ``weights_dir`` if it has any."""
    import onnx
    from onnx import external_data_helper, numpy_helper

    if external_data_helper.uses_external_data(tensor):
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        external_data_helper.load_external_data_for_tensor(copy, str(weights_dir))
        del copy.external_data[:]
        copy.data_location = onnx.TensorProto.DEFAULT
        tensor = copy
    return numpy_helper.to_array(tensor)


def _rotary_tables(model, positions_input: str, cos: str, sin: str, positions: int, weights_dir, index: int) -> tuple[str, str]:
    """The cos/sin tables GroupQueryAttention reads (``positions`` rows): the graph's own rotary
    subgraph, copied with a constant in place of ``position_ids`` (the largest position), so any
    rope scaling the exporter traced is kept, the package stores only the frequencies, and
    ONNX Runtime folds the tables once at load. Checked here by evaluating the copy."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    initializers = {t.name: t for t in graph.initializer}
    nodes, needed, used, seen = [], [cos, sin], [], set()
    while needed:
        name = needed.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in initializers:
            used.append(name)
            continue
        if name == positions_input:
            continue
        node = producer.get(name)
        if node is None:
            raise _NoMatch(f"the rotary tables depend on {name}, which is not computed from {positions_input}")
        if all(node is not n for n in nodes):  # a node reached through two of its outputs is copied once
            nodes.append(node)
            needed.extend(node.input)
    order = {id(n): i for i, n in enumerate(graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    prefix, constant = f"gqa_rotary_{index}_", f"gqa_rotary_{index}_last_position"
    renamed = {positions_input: constant, **{o: prefix + o for n in nodes for o in n.output if o}}
    copies = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        for field in (copy.input, copy.output):
            for i, name in enumerate(field):
                field[i] = renamed.get(name, name)
        copies.append(copy)
    last = numpy_helper.from_array(np.array([[positions - 1]], dtype=np.int64), constant)
    tables = (renamed[cos], renamed[sin])
    produced = [o for copy in copies for o in copy.output if o]
    check = helper.make_model(
        helper.make_graph(copies, "rotary_tables", [], [onnx.ValueInfoProto(name=name) for name in produced],
                          initializer=[last] + [numpy_helper.from_array(_initializer_array(initializers[n], weights_dir), n) for n in used]),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    values = dict(zip(produced, ort.InferenceSession(check.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})))
    if values[tables[0]].ndim != 2 or values[tables[0]].shape[0] != positions:
        raise _NoMatch(f"the rotary tables have shape {values[tables[0]].shape}, not ({positions}, head_dim / 2)")
    graph.initializer.append(last)
    for copy in reversed(copies):
        graph.node.insert(0, copy)
    # every value's exact shape: ONNX Runtime (>= 1.27) folds a constant node only when it can
    # size its output beforehand, and Range's output has no static shape without this
    for name, value in values.items():
        graph.value_info.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
    return tables
