"""Reading ONNX graphs (protobuf) for quantization, independent of the model's task.

``weight_layers`` lists the linear layers (MatMul with a constant 2-D weight) and embeddings
(Gather from a constant table) of a graph, with their input channels and a layer kind read from
the exporter's module-path metadata (``model.layers.*.self_attn.q_proj``). The rewrites that
prepare a graph for quantization live in ``graph_prepare`` (onnx_ir).
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
    op_type: str  # "MatMul", "Gather" or "Conv"
    weight: str  # initializer name
    kind: str  # module path with layer indices as "*", e.g. "model.layers.*.mlp.down_proj"
    in_channels: int  # the axis quantization groups run along (K of a MatMul, hidden size of an embedding, C_in*kh*kw of a Conv)
    out_channels: int
    output: str  # name of the node's output tensor (engines may name the op after it)


def layer_kind(node) -> str:
    """The layer kind of an ONNX (protobuf) node; see ``layer_kind_of``."""
    return layer_kind_of(node.op_type, next((p.value for p in node.metadata_props if p.key == NAME_SCOPES_KEY), None))


def module_path(node) -> str | None:
    """The module an ONNX (protobuf) node was exported from, layer indices kept
    (``model.layers.3.mlp.down_proj``: the Hugging Face parameter prefix), or None without metadata."""
    return module_path_of(next((p.value for p in node.metadata_props if p.key == NAME_SCOPES_KEY), None))


def module_path_of(scopes: str | None) -> str | None:
    """The innermost module of the exporter's name-scope metadata, without the outermost ``model.``
    (our export wrapper's attribute)."""
    if not scopes:
        return None
    try:
        paths = [s for s in ast.literal_eval(scopes) if isinstance(s, str) and s]
    except (ValueError, SyntaxError):
        return None
    modules = [p for p in paths if "." in p] or paths
    if not modules:
        return None
    path = modules[-1]
    return path[len("model.") :] if path.startswith("model.") else path


def layer_kind_of(op_type: str, scopes: str | None) -> str:
    """The module path from the exporter's name-scope metadata, layer indices replaced by ``*``.
    Graphs without the metadata get the op type as their kind."""
    path = module_path_of(scopes)
    return _LAYER_INDEX.sub(".*", path) if path else op_type


MIN_IN_CHANNELS = 16  # a MatMul over fewer input channels is not a weight layer (rotary positions x frequencies: 1)


def weight_layers(model, convolutions: bool = False) -> list[WeightLayer]:
    """Linear layers (MatMul, constant 2-D B with at least MIN_IN_CHANNELS rows) and embeddings
    (Gather, constant 2-D table) of ``model``; with ``convolutions``, also convolutions with a constant weight (CNNs such as
    diffusion UNets, where they hold most of the weights and the compute)."""
    initializers = {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            dims = list(initializers[node.input[1]].dims)
            if len(dims) == 2 and dims[0] >= MIN_IN_CHANNELS:
                layers.append(WeightLayer(node.name, "MatMul", node.input[1], layer_kind(node), dims[0], dims[1], node.output[0]))
        elif node.op_type == "Gather" and node.input[0] in initializers:
            dims = list(initializers[node.input[0]].dims)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if len(dims) == 2 and axis == 0:
                layers.append(WeightLayer(node.name, "Gather", node.input[0], layer_kind(node), dims[1], dims[0], node.output[0]))
        elif convolutions and node.op_type == "Conv" and node.input[1] in initializers:
            dims = list(initializers[node.input[1]].dims)  # (C_out, C_in / groups, kh, kw)
            layers.append(WeightLayer(node.name, "Conv", node.input[1], layer_kind(node), int(np.prod(dims[1:])), dims[0],
                                      node.output[0]))
    return layers


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
