"""The OpenVINO engine on the converter side: ONNX -> OpenVINO IR, with NNCF for weight compression
(int8/int4) and static quantization; the IR's description for the manifest, a summary of its
quantized layers, and static shapes for NPUs.

The same three functions as ``onnxruntime_engine``: ``build``, ``describe``, ``summarize_layers``.
Generic over tasks: it takes an FP32 ONNX graph and writes ``<role>.xml`` + ``<role>.bin``; the
recipe records what NNCF actually did per layer kind, read from the compressed model.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.converters.graph_prepare import prepare_graph
from edge_sdk.converters.onnx_export import quiet_exporter
from edge_sdk.converters.onnx_graph import weight_layers
from edge_sdk.converters.quantize import CalibrationFeeds, Probe, effective_group
from edge_sdk.quantization import DEFAULT_GROUP_SIZE, MIN_GROUP_SIZE, PER_CHANNEL, QuantizationOptions
from edge_sdk.errors import ExportError, InvalidInputError

log = logging.getLogger("edge_sdk")

# OpenVINO element types of compressed weights -> bits
_LOW_BIT_TYPES = {"u4": 4, "i4": 4, "nf4": 4, "u8": 8, "i8": 8}


MIN_OPENVINO = "2024.4"  # IR with NNCF's u4/u8 weight decompression patterns


def build(fp32: Path, staging: Path, role: str, options: QuantizationOptions, calibration: CalibrationFeeds | None = None,
          probe: Probe | None = None, model_type: str = "transformer",
          attention: dict[str, Any] | None = None, carry=None) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """Write graph ``role`` (``<role>.xml`` + ``.bin``) into ``staging``; return (manifest graph entry,
    recipe or None, minimum OpenVINO version). ``attention`` (a KV decoder's): attention as
    ScaledDotProductAttention (``attention_as_sdpa``). ``probe`` is accepted for the common
    signature: OpenVINO does its own fusing, so there is no rewrite of ours to check against the
    unfused graph beyond that one, which the export's accuracy step and the tests measure."""
    from edge_sdk.converters.onnxruntime_engine import describe as describe_onnx

    xml = staging / f"{role}.xml"
    names = {e["name"]: e["shape"] for e in describe_onnx(fp32)["inputs"]}  # before fp32 is consumed
    recipe = onnx_to_openvino(fp32, xml, options, calibration, model_type, attention, carry)
    entry = {"role": role, "path": xml.name, **describe(xml, names), "external_data": [xml.with_suffix(".bin").name]}
    return entry, recipe, MIN_OPENVINO


def onnx_to_openvino(src: Path, dst_xml: Path, options: QuantizationOptions, calibration: CalibrationFeeds | None,
                     model_type: str = "transformer", attention: dict[str, Any] | None = None, carry=None) -> dict:
    """Convert ONNX graph ``src`` to ``dst_xml`` (+ .bin) in the precision ``options`` asks for.
    ``attention`` (a KV decoder's): its attention reaches OpenVINO as ScaledDotProductAttention
    (``attention_as_sdpa``); ``carry`` (a ``gguf.CarryOver``): weight-only layers take a quantized
    source's blocks as they are (``openvino_carry``), NNCF compresses the others."""
    import onnx
    import openvino as ov

    prepared = dst_xml.with_name(dst_xml.stem + ".prepared.onnx")
    prepare_graph(src, prepared, untie=options.quantized)
    sdpa = attention_as_sdpa(prepared, len(attention["windows"])) if attention is not None else 0
    layers = weight_layers(onnx.load(str(prepared), load_external_data=False), convolutions=model_type == "cnn")
    try:
        # Core.read_model maps the ONNX weights file instead of copying it (convert_model copied it:
        # +0.97 GB against +0.08 GB on SmolLM2-135M), so the prepared file lives until save_model
        try:
            model = ov.Core().read_model(str(prepared))
        except Exception as e:
            raise ExportError(f"OpenVINO cannot convert the ONNX graph: {e}") from e
        tool = "openvino ONNX frontend"
        carried, from_source = set(), None
        if options.quantized and options.effective_mode == "weight-only":
            if carry is not None:
                from edge_sdk.converters.ort_heads import head_nodes
                from edge_sdk.converters.openvino_carry import carry_into

                graph = onnx.load(str(prepared))
                heads = head_nodes(graph)
                bits = 8 if options.weights == "int8" else 4
                head_bits = 8 if options.weights == "int8" or options.head_weights == "int8" else 4
                carried, from_source = carry_into(model, graph, layers, lambda l: head_bits if l.node in heads else bits, carry)
                del graph
            # weights as (out, in) rows, as optimum-intel's models reach NNCF: GPTQ takes only that
            # layout, and an untied LM head then compresses to the same rows as the token embedding,
            # which save_model stores once (SmolLM2-135M int4: 88 MB instead of 116)
            weights_as_rows(model, keep=carried)
            model, tool = _compress_weights(model, options, calibration, sorted(carried))
        elif options.effective_mode == "static":
            model, tool = _quantize_static(model, options, calibration)
        ov.save_model(model, str(dst_xml), compress_to_fp16=options.weights == "fp16")
    finally:
        for path in (prepared, prepared.with_name(prepared.name + ".data")):
            path.unlink(missing_ok=True)
    if options.weights == "fp16":
        tool += " (weights stored as fp16)"
    by_name = {name: layer for layer in layers for name in (layer.node, layer.output)}
    if sdpa:
        tool += f" (attention as ScaledDotProductAttention in {sdpa} layers)"
    recipe = {
        "tool": tool,
        "options": options.describe("openvino"),
        "layers": summarize_layers(model, by_name) if options.quantized else {},
    }
    if from_source is not None:
        recipe["from_source"] = from_source
    return recipe


def attention_as_sdpa(path: Path, layers: int) -> int:
    """Rewrite the decoder graph at ``path`` (with its data file) so each layer's attention is one
    ONNX ``Attention`` (opset 23) node, which OpenVINO's ONNX frontend reads as
    ScaledDotProductAttention; its CPU plugin then fuses that with the stateful cache into
    ScaledDotProductAttentionWithKVCache, as it does for optimum-intel's IR (measured on the
    SmolLM2-135M shape, int4, OpenVINO's profiler on: 68-74 against 40-45 decode steps/s).
    onnxscript's SDPA pattern finds the attention; where it does not find one per layer (Gemma 2's
    soft-capped eager attention), or OpenVINO cannot read the result, the graph stays as it was.
    Returns the layers rewritten."""
    import onnx_ir as ir
    import openvino as ov
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa

    from edge_sdk.converters.onnxruntime_engine import FUSION_LOCK, simplify_for_fusion

    model = ir.load(str(path))
    with FUSION_LOCK, quiet_exporter():
        simplify_for_fusion(model)
        if fuse_sdpa(model, apply_shape_inference=True) != layers:
            return 0
        count = 0
        for node in list(model.graph):
            if node.op_type != "SDPA":
                continue
            if node.attributes.get("key_format") is not None and node.attributes["key_format"].as_string() != "BHSd":
                return 0
            scale = {"scale": node.attributes["scale"].as_float()} if "scale" in node.attributes else {}
            attention = ir.node("Attention", inputs=list(node.inputs), attributes={**scale, "is_causal": 0},
                                domain="", version=23, num_outputs=1)
            model.graph.insert_before(node, attention)
            node.outputs[0].replace_all_uses_with(attention.outputs[0], replace_graph_outputs=True)
            model.graph.remove(node, safe=True)
            count += 1
        model.opset_imports[""] = max(23, model.opset_imports.get("", 0))
        optimize(model)
        for key in [k for k in model.functions if k[0].startswith("ai.onnxruntime._fusion")]:
            del model.functions[key]
        rewritten = path.parent / "sdpa-work" / path.name  # the same names: a graph names its data file
        rewritten.parent.mkdir(exist_ok=True)
        ir.save(model, str(rewritten), external_data=f"{path.name}.data")
    del model
    try:
        converted = ov.Core().read_model(str(rewritten))
        found = sum(op.get_type_name() == "ScaledDotProductAttention" for op in converted.get_ops())
        del converted
    except Exception as e:  # an OpenVINO without the opset-23 Attention translation
        log.warning("attention stays decomposed in the OpenVINO graph: %s", str(e).splitlines()[0][:200])
        found = 0
    if found == count:
        for produced in (rewritten, rewritten.with_name(rewritten.name + ".data")):
            os.replace(produced, path.parent / produced.name)
    shutil.rmtree(rewritten.parent)
    return count if found == count else 0


def weights_as_rows(model, keep=()) -> int:
    """Give each MatMul with a constant (K, N) weight that weight as (N, K) rows with transpose_b, as
    PyTorch's Linear layers reach OpenVINO from optimum-intel: NNCF's GPTQ takes only that layout, and
    a head untied from the token embedding (prepare_graph) holds the embedding's own rows again, so
    the two compress alike and the IR stores them once. MatMuls named in ``keep`` (carried from a
    GGUF, compressed already, with their helper products) stay as they are. Returns the MatMuls rewritten."""
    from openvino import opset13 as ops

    count = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or op.get_friendly_name() in keep:
            continue
        attributes = op.get_attributes()
        weight = op.input(1).get_source_output().get_node()
        if attributes["transpose_b"] or weight.get_type_name() != "Constant" or len(weight.get_output_shape(0)) != 2:
            continue
        rows = ops.constant(np.ascontiguousarray(weight.get_data().T))
        rows.set_friendly_name(weight.get_friendly_name())
        replacement = ops.matmul(op.input(0).get_source_output(), rows, attributes["transpose_a"], True)
        replacement.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(replacement.output(0))
        count += 1
    model.validate_nodes_and_infer_types()
    return count


def _nncf():
    try:
        import nncf
    except ImportError as e:
        from edge_sdk.errors import missing_extra

        raise missing_extra("nncf", "convert", "quantizing for OpenVINO") from e
    nncf.set_log_level(logging.ERROR)  # its INFO tables and progress bars would interleave with ours
    return nncf


def _position_tables(model) -> list[str]:
    """Gathers that look rows up by the graph's ``position_ids`` input: learned position embeddings.
    NNCF would compress them as it does token embeddings; they are small, and a Whisper decoder that
    slices its table by the cache length (dynamic shapes) keeps it FP32, so static-shape packages,
    which must gather it by position, then give the dynamic package's tokens."""
    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Gather":
            continue
        source = op.input(1).get_source_output().get_node()
        while source.get_type_name() in ("Convert", "Reshape", "Unsqueeze", "Squeeze") and source.get_input_size():
            source = source.input(0).get_source_output().get_node()
        if source.get_type_name() == "Parameter" and "position_ids" in source.output(0).get_names():
            found.append(op.get_friendly_name())
    return found


def _compress_weights(model, options: QuantizationOptions, calibration: CalibrationFeeds | None = None, carried=()):
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

    modes = {
        ("int8", False): nncf.CompressWeightsMode.INT8_ASYM,
        ("int8", True): nncf.CompressWeightsMode.INT8_SYM,
        ("int4", False): nncf.CompressWeightsMode.INT4_ASYM,
        ("int4", True): nncf.CompressWeightsMode.INT4_SYM,
    }
    mode = modes[(options.weights, options.sym)]
    kwargs = {}
    if options.weights == "int4":
        group = options.group_size or DEFAULT_GROUP_SIZE
        kwargs = dict(
            group_size=group,
            ratio=options.ratio,
            all_layers=options.head_weights == "int4",  # embeddings and the LM head in 4 bits too, or INT8 (NNCF's default)
            advanced_parameters=AdvancedCompressionParameters(
                # a layer whose input channels the group size does not divide gets the largest smaller
                # power of two that does (576 channels, group 128 -> 64), as quantize.plan_group_size
                group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST,
                min_adjusted_group_size=MIN_GROUP_SIZE,
            ),
        )
        algorithms = options.algorithms
        kwargs.update(awq="awq" in algorithms, scale_estimation="scale-estimation" in algorithms, gptq="gptq" in algorithms)
        if options.data_aware and options.calibration is not None:
            if calibration is None:
                raise InvalidInputError("calibrated int4 (--algorithm awq/scale-estimation/gptq, --ratio with --calibration) is "
                                        "built for text-generation models; this model's packages take --algorithm rtn")
            feeds = calibration()
            if not feeds:
                raise InvalidInputError(f"no calibration samples could be made from {options.calibration}; give more text")
            # with data, NNCF also ranks layers for --ratio by their input activations (its data-aware sensitivity)
            kwargs.update(dataset=nncf.Dataset(feeds), subset_size=len(feeds))
    elif options.group_size not in (None, PER_CHANNEL):
        raise InvalidInputError("NNCF compresses int8 weights per channel; drop --group-size for --runtime openvino --weights int8")
    positional = _position_tables(model)
    # learned position tables stay FP32, as a sliced table (Whisper's dynamic decoder) does anyway;
    # layers carried from a quantized source are already compressed
    if positional or carried:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=positional + list(carried), validate=False)
    try:
        compressed = nncf.compress_weights(model, mode=mode, **kwargs)
    except Exception as e:
        raise ExportError(f"NNCF weight compression failed: {type(e).__name__}: {e}") from e
    chosen = [a for a in ("awq", "scale_estimation", "gptq") if kwargs.get(a)]
    return compressed, f"nncf.compress_weights ({mode.value}{', ' + ', '.join(chosen) if chosen else ''})"


def _quantize_static(model, options: QuantizationOptions, calibration: CalibrationFeeds | None):
    nncf = _nncf()
    feeds = calibration() if calibration else []
    if not feeds:
        raise InvalidInputError(f"no calibration samples could be made from {options.calibration}; give more text")
    try:
        quantized = nncf.quantize(
            # the transformer model type for CNNs too: it quantizes convolutions, MatMuls and attention
            # but not the residual Adds / Multiplies the default type adds; on the digits DDPM the
            # default type gave 13.4 dB PSNR against FP32 samples, the transformer type ~29 dB
            model, nncf.Dataset(feeds), subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED if not options.sym else nncf.QuantizationPreset.PERFORMANCE,
        )
    except Exception as e:
        raise ExportError(f"NNCF static quantization failed: {type(e).__name__}: {e}") from e
    return quantized, f"nncf.quantize (static int8, {len(feeds)} calibration feeds, transformer model type)"


_DECOMPRESSION_OPS = {"Convert", "Reshape", "Multiply", "Subtract", "Transpose", "Constant", "FakeQuantize"}


def _weight_source(op):
    """Follow a MatMul's (input 1) or Gather's (input 0) weight up its decompression subgraph.

    Returns (node, how): the low-bit Constant NNCF stored ("compressed"), a FakeQuantize of static
    quantization ("fake-quantized"), or (None, None) for a plain float weight.
    """
    start = op.input(0 if op.get_type_name() == "Gather" else 1).get_source_output().get_node()
    frontier, seen, stored = [start], set(), []
    while frontier:
        node = frontier.pop()
        if id(node) in seen or node.get_type_name() not in _DECOMPRESSION_OPS:
            continue
        seen.add(id(node))
        if node.get_type_name() == "Constant" and node.get_element_type().get_type_name() in _LOW_BIT_TYPES:
            stored.append(node)
        if node.get_type_name() == "FakeQuantize":
            return node, "fake-quantized"
        frontier += [i.get_source_output().get_node() for i in node.inputs()]
    if not stored:
        return None, None
    # the weights are the largest low-bit constant; zero points are low-bit constants too
    return max(stored, key=lambda c: int(np.prod(list(c.get_output_shape(0))))), "compressed"


def _group_of(shape: list[int], in_channels: int) -> int:
    """Group size of a grouped low-bit weight: [groups, group, out] (MatMul weights as ONNX stores
    them, input channels first) or [out, groups, group] (transposed, as for a Gather's table)."""
    if len(shape) == 3:
        if shape[0] * shape[1] == in_channels:
            return effective_group(int(shape[1]), in_channels)
        if shape[1] * shape[2] == in_channels:
            return effective_group(int(shape[2]), in_channels)
    return PER_CHANNEL


def summarize_layers(model, planned: dict) -> dict[str, dict]:
    """Per layer kind: the op, bits and group size NNCF gave it, read from the compressed model.

    ``planned`` maps ONNX node names and output names to layers: OpenVINO names an op after its ONNX
    node, or after the graph output it produces (the LM head becomes "logits").
    """
    kinds: dict[str, dict] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Gather", "Convolution"):
            continue
        name = op.get_friendly_name().split("/")[0]
        layer = planned.get(name)
        if layer is None:
            continue
        source, how = _weight_source(op)
        entry = {"op": op.get_type_name(), "in_channels": layer.in_channels}
        if how == "compressed":
            shape = list(source.get_output_shape(0))
            entry.update(bits=_LOW_BIT_TYPES[source.get_element_type().get_type_name()],
                         group_size=_group_of(shape, layer.in_channels))
        elif how == "fake-quantized":
            entry.update(bits=8, quantization="static")
        else:
            entry.update(bits=None)
        summary = kinds.setdefault(layer.kind, {**entry, "count": 0})
        summary["count"] += 1
    return kinds


def describe(xml: Path, names: dict[str, list] | None = None) -> dict:
    """Inputs and outputs of a saved IR as manifest entries (name, dtype, shape). A dynamic axis is
    shown by its name in ``names`` (the ONNX graph's shapes by tensor name: "batch", "sequence",
    ...), else None; the IR itself does not keep the names."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    names = names or {}

    def entry(port) -> dict:
        name = port.get_any_name()
        symbolic = names.get(name) or []
        shape = [d.get_length() if d.is_static else (symbolic[i] if i < len(symbolic) and isinstance(symbolic[i], str) else None)
                 for i, d in enumerate(port.get_partial_shape())]
        return {"name": name, "dtype": port.get_element_type().to_dtype().name, "shape": shape}

    return {"inputs": [entry(p) for p in model.inputs], "outputs": [entry(p) for p in model.outputs]}


def make_stateful(xml: Path, graph: dict) -> dict:
    """Keep the KV cache of decoder IR ``xml`` inside the infer request (ReadValue/Assign), as
    OpenVINO's MakeStateful transformation does; save it in place and return the new manifest entry.

    The cache inputs and outputs are the ones the decoder contract names in ``graph`` (its manifest
    entry: ``runtimes.decoder.DecoderGraph``). Each cache input is first read through a Gather
    over the batch axis by a new ``beam_idx`` input (int32, one index per row), so a caller can
    reorder or select rows (beams) without touching the state; then the pairs become variables
    whose initial value is an empty cache (batch from ``input_ids``, 0 positions). The dynamic axis
    names of the remaining inputs and outputs are kept from ``graph``.
    """
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    from edge_sdk.runtimes.decoder import BEAM, DecoderGraph

    decoder = DecoderGraph.from_description(graph)
    pairs = dict(zip(decoder.past_names, decoder.present_names))
    model = ov.Core().read_model(str(xml))
    names = {entry["name"]: entry["shape"] for entry in graph["inputs"] + graph["outputs"]}
    batch = model.input("input_ids").get_partial_shape()[0]
    beam = opset13.parameter(ov.PartialShape([batch]), ov.Type.i32, name=BEAM)
    beam.output(0).get_tensor().set_names({BEAM})
    model.add_parameters([beam])
    for past in pairs:
        port = model.input(past)
        consumers = port.get_target_inputs()
        gathered = opset13.gather(port, beam, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, pairs)
    # the initial value of every variable: an empty cache with this call's batch
    rows = opset13.gather(opset13.shape_of(model.input("input_ids"), output_type="i64"), opset13.constant([0]), opset13.constant(0))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            shape = op.get_output_partial_shape(0)
            dims = [rows if i == 0 else opset13.constant(np.array([0 if i == 2 else shape[i].get_length()], dtype=np.int64))
                    for i in range(shape.rank.get_length())]
            op.set_arguments([opset13.broadcast(opset13.constant(0.0, dtype=op.get_output_element_type(0)),
                                                opset13.concat(dims, axis=0))])
    model.validate_nodes_and_infer_types()
    _save_in_place(model, xml)
    return {**describe(xml, {**names, BEAM: ["batch"]}), "kv_cache": "stateful"}


def make_static(xml: Path, graph: dict, sizes: dict[str, int]) -> dict:
    """Fix every dynamic axis of the IR ``xml`` to ``sizes[axis name]`` (names from the manifest
    entry ``graph``), check that it compiles on the CPU device with those shapes, and save it in
    place. Returns the new manifest entry's inputs/outputs."""
    import openvino as ov

    from edge_sdk.runtimes.openvino_backend import signal_stack_kept

    core = ov.Core()
    model = core.read_model(str(xml))
    by_name = {entry["name"]: entry["shape"] for entry in graph["inputs"]}
    shapes = {}
    for port in model.inputs:
        name = port.get_any_name()
        static = []
        for i, dim in enumerate(port.get_partial_shape()):
            if dim.is_static:
                static.append(dim.get_length())
                continue
            axis = (by_name.get(name) or [None] * (i + 1))[i]
            if axis not in sizes:
                raise ExportError(f"cannot make input {name} of {xml.name} static: its axis {i} ({axis or 'unnamed'}) has no "
                                  f"size; known axes: {', '.join(sorted(sizes))}")
            static.append(int(sizes[axis]))
        shapes[name] = ov.PartialShape(static)
    try:
        model.reshape(shapes)
        with signal_stack_kept():  # see runtimes.openvino_backend
            core.compile_model(model, "CPU")  # the check: these shapes compile
    except Exception as e:
        raise ExportError(f"the static-shape graph {xml.name} does not compile on the CPU device ({type(e).__name__}: {e}); "
                          "try other --static-prompt-length / --static-cache-length") from e
    _save_in_place(model, xml)
    return describe(xml)


def _save_in_place(model, xml: Path) -> None:
    """Save a model read from ``xml`` over it: written beside it first (its weights are still mapped
    from the old .bin), then moved into place. The weights keep the types they have."""
    import openvino as ov

    temporary = xml.with_name(xml.stem + ".rewritten.xml")
    ov.save_model(model, str(temporary), compress_to_fp16=False)
    os.replace(temporary, xml)
    os.replace(temporary.with_suffix(".bin"), xml.with_suffix(".bin"))
