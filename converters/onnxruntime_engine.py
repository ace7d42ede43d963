"""The ONNX Runtime engine on the converter side: from a validated FP32 ONNX graph to the graph a
package ships — fused into ONNX Runtime's kernels, quantized with onnxruntime.quantization — plus
its description for the manifest and a summary of its quantized layers.

The OpenVINO engine (``openvino_engine``) has the same three functions: ``build``, ``describe``,
``summarize_layers``. Task-independent: text, speech and diffusion exporters hand their FP32
graphs to ``target.build_graph``, which picks the engine.

    weights  mode         ONNX Runtime                                    OpenVINO (openvino_engine)
    fp16     -            float16 weights and compute, float32 I/O        weights stored as fp16
    int8     weight-only  MatMulNBits 8-bit, GatherBlockQuantized 8-bit   NNCF INT8 per-channel
    int8     dynamic      quantize_dynamic (int8 weights, dynamic acts)   -
    int8     static       quantize_static, QDQ, calibrated activations    nncf.quantize
    int4     weight-only  MatMulNBits 4-bit, GatherBlockQuantized 4-bit   NNCF INT4 groups

Every linear layer and embedding is quantized, the LM head included: it is read at every decode
step, so leaving it in FP32 leaves most of a small LM's per-token bytes unquantized.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.converters.graph_prepare import prepare_graph
from edge_sdk.converters.onnx_export import quiet_exporter, use_exact_no_op_rules
from edge_sdk.converters.onnx_graph import WeightLayer, remove_unused_initializers, save_with_external_data, weight_layers
from edge_sdk.converters.ort_heads import gather_from_head, head_nodes, quantize_embedding, tied_table
from edge_sdk.converters.quantize import CalibrationFeeds, Probe, effective_group, plan_group_size
from edge_sdk.errors import InvalidInputError
from edge_sdk.quantization import DEFAULT_GROUP_SIZE, MIN_GROUP_SIZE, PER_CHANNEL, QuantizationOptions

log = logging.getLogger("edge_sdk")

# onnxscript's rewriter and optimizer are not safe to run from two threads at once (seen: a
# "number of values and replacements must match" PassError when two exports fused together)
FUSION_LOCK = threading.Lock()

# the oldest ONNX Runtime that implements each default-domain opset our graphs may use
_MIN_ORT_FOR_OPSET = {17: "1.13", 18: "1.14", 19: "1.16", 20: "1.17", 21: "1.20", 22: "1.20", 23: "1.22"}


def build(fp32: Path, staging: Path, role: str, options: QuantizationOptions, calibration: CalibrationFeeds | None = None,
          probe: Probe | None = None, model_type: str = "transformer",
          attention: dict[str, Any] | None = None, carry=None) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """Write graph ``role`` (``<role>.onnx`` + data) into ``staging``; return (manifest graph entry,
    recipe or None, minimum ONNX Runtime version). ``fp32`` stays where it is. ``attention`` (a
    KV decoder's ``{"windows": [per-layer sliding window or None], "positions": context length}``)
    lets its attention run over a preallocated cache, rotary embedding inside (``ort_attention``);
    ``carry`` (a ``gguf.CarryOver``): weight-only layers take a quantized source's blocks as they are
    (``carry_over``)."""
    path = staging / f"{role}.onnx"
    fused = staging / "fused-work" / path.name
    fused.parent.mkdir()
    # fuse while the graph is FP32, where "same as unfused" can be checked tightly; quantizing the
    # fused graph then touches only its weight MatMuls and embeddings, which fusion leaves alone
    # static QDQ calibrated on the fused graph lost accuracy (top-1 vs FP32 0.65 against 0.93 unfused,
    # trained tiny LM): static packages keep the primitive ops
    fuse = options.effective_mode != "static"
    fusions = fuse_for_onnxruntime(fp32, fused, probe, untie_weights=options.quantized, fuse=fuse, attention=attention)
    recipe = None
    if options.weights == "fp32":
        for source in (fused, fused.with_name(fused.name + ".data")):
            os.replace(source, staging / source.name)
    else:
        recipe = quantize_onnx(fused, path, options, calibration, model_type, carry)
    shutil.rmtree(fused.parent)
    entry = {"role": role, "path": path.name, **describe(path), "fusions": fusions}
    entry["external_data"] = sorted(p.name for p in staging.glob(f"{path.name}.data*"))
    return entry, recipe, _min_onnxruntime(path, entry.get("opset"))



def describe(path: Path) -> dict[str, Any]:
    """Inputs and outputs of a saved ONNX graph as manifest entries (name, dtype, shape)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def entry(value) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None) for d in tensor.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": shape}

    return {
        "inputs": [entry(v) for v in model.graph.input],
        "outputs": [entry(v) for v in model.graph.output],
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
    }


def fuse_for_onnxruntime(
    src: Path, dst: Path, probe: Probe | None = None, untie_weights: bool = False, fuse: bool = True,
    attention: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``src`` to ``dst`` with the exporter's primitive ops fused into ONNX Runtime kernels.

    A small LM's decode step is thousands of tiny ops; fused kernels (RMSNorm, rotary embedding,
    attention with its KV cache) and merged q/k/v and gate/up products are most of what makes
    quantized decode fast. ``probe`` runs a task-specific check (a left-padded batch through
    prefill and decode) on a session; the fused graph is kept only if it reproduces ``src``,
    else the unfused (but otherwise prepared) graph is written and the reason recorded.
    ``untie_weights`` stores a tied LM head as its own matrix (to be quantized like the others);
    ``fuse=False`` applies only those preparing rewrites. ``attention`` (a KV decoder's sliding
    windows per layer) adds GroupQueryAttention over a shared cache buffer where every layer
    matches; if that graph fails the probe, the fusions without it are tried before none.
    Returns ``{"applied": {fusion: count}, "rejected": reason or None}``.
    """
    import onnx_ir as ir

    # Gemm -> MatMul matters here too: the fusions mishandle GPT-2's Gemm (Conv1D) after reshapes
    prepare_graph(src, dst, untie=untie_weights)
    if not fuse:
        return {"applied": {}, "rejected": None}
    model = ir.load(str(dst))  # weights read lazily from dst's data file
    with FUSION_LOCK, quiet_exporter():
        counts = _fuse_transformer_ops(model)
    applied = {name: count for name, count in counts.items() if count}
    if not applied:
        return {"applied": {}, "rejected": None}
    # written under the final names in a directory of its own (a graph names its data file)
    fused = dst.parent / "fused" / dst.name
    fused.parent.mkdir()
    with quiet_exporter():
        ir.save(model, str(fused), external_data=f"{dst.name}.data")
    del model
    problem = shared_cache_problem = None
    if attention is not None:
        applied["group_query_attention"], without = _shared_cache_attention(fused, attention["windows"], attention.get("positions"))
        if not applied["group_query_attention"]:
            del applied["group_query_attention"]
        elif probe is not None:
            shared_cache_problem = _compare_probes(probe, src, fused)
            if shared_cache_problem:  # keep the other fusions: the graph as it was before this rewrite
                log.warning("attention over a shared cache not kept: %s", shared_cache_problem)
                import onnx

                onnx.save(without, str(fused))
                del applied["group_query_attention"]
    if probe is not None and "group_query_attention" not in applied:
        problem = _compare_probes(probe, src, fused)
    if problem:
        log.warning("kept the unfused graph: %s", problem)
    else:
        for produced in fused.parent.iterdir():
            os.replace(produced, dst.parent / produced.name)
    shutil.rmtree(fused.parent)
    result = {"applied": {} if problem else applied, "rejected": problem}
    if shared_cache_problem:
        result["group_query_attention_rejected"] = shared_cache_problem
    return result


def _shared_cache_attention(path: Path, windows: list[int | None], positions: int | None = None) -> tuple[int, Any]:
    """Rewrite the graph at ``path`` (weights stay in its data file) to GroupQueryAttention; return
    the layers rewritten and the graph as it was (to restore if the probe rejects the rewrite)."""
    import onnx

    from edge_sdk.converters.ort_attention import group_query_attention

    before = onnx.load(str(path), load_external_data=False)
    rewritten = group_query_attention(before, windows, positions, path.parent)
    if rewritten is None:
        return 0, before
    onnx.save(rewritten, str(path))
    return len(windows), before


def _fuse_transformer_ops(model) -> dict[str, int]:
    """onnxscript's ONNX Runtime fusions, in its own order, without GroupQueryAttention.

    GroupQueryAttention takes the valid tokens of each row to be contiguous from position 0
    (``seqlens_k``); our runtime batches prompts with left padding and an attention mask, which
    MultiHeadAttention honours (measured: GQA broke left-padded batches, MHA keeps them exact).
    """
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES
    from onnxscript.rewriter.ort_fusions.cos_sin_cache import fuse_cos_sin_cache
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
    from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
    from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_partial_rotary_embedding, fuse_rotary_embedding
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_layer_normalization, fuse_skip_rms_normalization

    simplify_for_fusion(model)
    counts = {}
    for name, fuse in (
        ("rms_normalization", fuse_rms_normalization),
        ("skip_layer_normalization", fuse_skip_layer_normalization),
        ("skip_rms_normalization", fuse_skip_rms_normalization),
        ("rotary_embedding", fuse_rotary_embedding),
        ("cos_sin_cache", fuse_cos_sin_cache),
        ("partial_rotary_embedding", fuse_partial_rotary_embedding),
    ):
        counts[name] = fuse(model)
    counts["sdpa"] = fuse_sdpa(model, apply_shape_inference=True)
    for name, fuse in (("mha1", fuse_mha1), ("mha2", fuse_mha2), ("mha_scale", fuse_mha_scale)):
        counts[name] = fuse(model)
    if counts["mha1"] or counts["mha2"]:
        counts["mha_bias"] = fuse_mha_bias(model)
    counts["gelu"] = fuse_gelu(model)
    counts["sdpa_via_mha"] = replace_sdpa_by_mha(model)
    optimize(model)  # inlines intermediate fusion functions nothing consumed, drops dead nodes
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model)
    common_passes.RemoveInitializersFromInputsPass()(model)
    common_passes.ShapeInferencePass()(model)
    return counts


def simplify_for_fusion(model) -> None:
    """What the fusion patterns expect first: shapes inferred, constants folded, shape arithmetic simplified."""
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter.ort_fusions import shape_optimization

    use_exact_no_op_rules()
    common_passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)


def _compare_probes(probe: Probe, reference: Path, fused: Path) -> str | None:
    """None if the fused graph reproduces the reference graph on the probe, else what went wrong.

    One session at a time: two sessions of a large model would double the export's peak memory.
    """
    from edge_sdk.runtimes.backend import open_session

    expected = probe(open_session("onnxruntime", reference))
    gc.collect()
    try:
        actual = probe(open_session("onnxruntime", fused))
    except Exception as e:  # a fused kernel may refuse a shape (head size not a multiple of 16, ...)
        return f"fused graph failed on the probe: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    scale = max(1.0, float(np.abs(expected).max()))
    difference = float(np.abs(actual - expected).max())
    if not difference <= 1e-3 * scale:
        return f"fused graph differs from the unfused one by {difference:.3g} (allowed {1e-3 * scale:.3g})"
    return None


# The oldest ONNX Runtime release that runs each contrib operator as our packages use it, measured
# by benchmarks/engine_floors.py (every release from 1.17 to 1.32 on PyPI loading and running each
# package kind and agreeing with the newest; BENCHMARKS.md "Engine floors"). An operator not listed
# here keeps the exporting release as the floor (unmeasured: the safe answer).
ORT_OP_FLOORS = {
    "GroupQueryAttention": "1.18", "SkipSimplifiedLayerNormalization": "1.18", "SimplifiedLayerNormalization": "1.18",
    "SkipLayerNormalization": "1.18", "MultiHeadAttention": "1.18", "FusedMatMul": "1.18", "RotaryEmbedding": "1.18",
    ("MatMulNBits", 8): "1.23", ("MatMulNBits", 4): "1.23",  # 1.22 and older refuse the graphs (with GatherBlockQuantized)
    ("GatherBlockQuantized", 8): "1.23",  # the tied lookup (the head's blocks); unregistered before 1.20, refused 1.20-1.22
    ("GatherBlockQuantized", 8, "table"): "1.30",  # over a table of its own (Whisper's positions): 1.23-1.28 differ (0.04)
    ("GatherBlockQuantized", 4): "1.28",  # 1.23-1.26 load the 4-bit lookup of the head's blocks and compute it WRONG
}
ORT_BASE_FLOOR = "1.18"  # 1.17 refuses the graphs our exporter writes at all


def _min_onnxruntime(path: Path, opset: int | None) -> str:
    """The oldest release that runs the graph: the largest floor of its opset and its contrib operators."""
    import onnx
    import onnxruntime

    from edge_sdk.runtimes.backend import version_tuple

    model = onnx.load(str(path), load_external_data=False)
    floors = [_MIN_ORT_FOR_OPSET.get(opset or 0, "1.17"), ORT_BASE_FLOOR]
    exporting = ".".join(onnxruntime.__version__.split(".")[:2])
    initializers = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.domain != "com.microsoft":
            continue
        bits = next((a.i for a in node.attribute if a.name == "bits"), None)
        own_table = node.op_type == "GatherBlockQuantized" and node.input[0] in initializers
        floor = ((own_table and ORT_OP_FLOORS.get((node.op_type, bits, "table")))
                 or ORT_OP_FLOORS.get((node.op_type, bits)) or ORT_OP_FLOORS.get(node.op_type))
        floors.append(floor or exporting)
    return max(floors, key=version_tuple)


MAX_NBITS_BLOCK = 256  # the largest block ONNX Runtime's blockwise quantizer (MLAS) accepts


def nbits_block(in_channels: int, group: int) -> int:
    """MatMulNBits block size for a planned group: per-channel is one block spanning all of K (zero
    padded to a power of two), up to the largest block MLAS quantizes; a wider layer gets blocks of
    that size (the manifest's layer summary shows the group each layer got).

    >>> nbits_block(576, 64), nbits_block(200, -1), nbits_block(768, -1)
    (64, 256, 256)
    """
    if group != PER_CHANNEL:
        return group
    block = MIN_GROUP_SIZE
    while block < in_channels:
        block *= 2
    return min(block, MAX_NBITS_BLOCK)


def quantize_onnx(src: Path, dst: Path, options: QuantizationOptions, calibration: CalibrationFeeds | None,
                  model_type: str = "transformer", carry=None) -> dict:
    """Write the quantized (or fp16) version of graph ``src`` to ``dst``; return the recipe for the manifest.

    ``src`` is a prepared graph (``graph_prepare.prepare_graph`` with ``untie``): every linear layer
    a MatMul with a constant weight, the LM head included. ``model_type`` "cnn" quantizes the
    convolutions too in dynamic and static modes; weight-only leaves them FP32 (ONNX Runtime has
    no weight-only convolution kernel).
    """
    import onnx

    model = onnx.load(str(src))
    layers = weight_layers(model, convolutions=model_type == "cnn")
    if options.weights == "fp16":
        return _fp16(model, dst, options)
    if options.effective_mode == "weight-only":
        return _weight_only(model, layers, dst, options, carry, calibration, src)
    staged = dst.with_name(dst.stem + ".prepared.onnx")
    save_with_external_data(model, staged)
    del model
    try:
        if options.effective_mode == "dynamic":
            return _dynamic(staged, layers, dst, options)
        return _static(staged, layers, dst, options, calibration)
    finally:
        for path in (staged, staged.with_name(staged.name + ".data")):
            path.unlink(missing_ok=True)


def _weight_only(model, layers: list[WeightLayer], dst: Path, options: QuantizationOptions, carry=None,
                 calibration: CalibrationFeeds | None = None, src: Path | None = None) -> dict:
    from edge_sdk.converters import ort_weight_only

    bits = 8 if options.weights == "int8" else 4
    head_bits = 8 if options.weights == "int8" or options.head_weights == "int8" else 4
    heads = head_nodes(model)
    requested = options.group_size or DEFAULT_GROUP_SIZE
    feeds: list | None = None

    def calibration_feeds() -> list:  # recorded once, on this (fused) graph, when an algorithm or the ratio needs them
        nonlocal feeds
        if feeds is None:
            if calibration is None:
                raise InvalidInputError("calibrated int4 (--ratio below 1) is built for text-generation models; this "
                                        "model's packages take --algorithm rtn, k-quant or hqq")
            feeds = calibration(src)
        return feeds

    def block_of(layer: WeightLayer) -> int:
        return nbits_block(layer.in_channels, plan_group_size(layer.in_channels, requested))

    def planned_bits(layer: WeightLayer) -> int:
        return head_bits if layer.op_type == "Gather" or layer.node in heads else bits

    promoted, mixed = set(), None  # --ratio: 4-bit-planned layers kept in 8 bits, by measured sensitivity
    if bits == 4 and options.ratio < 1:
        promoted, mixed = ort_weight_only.sensitive_layers(model, layers, planned_bits, block_of, options, calibration_feeds())

    def bits_of(layer: WeightLayer) -> int:
        return 8 if layer.node in promoted else planned_bits(layer)

    tied = tied_table(model, layers, heads)
    carried, from_source = {}, None
    if carry is not None:
        from edge_sdk.converters import carry_over

        carried, from_source = carry_over.plan(model, layers, bits_of, carry)
    by_block: dict[tuple[int, int], list[str]] = defaultdict(list)
    for layer in layers:
        if layer.op_type == "MatMul" and layer.node not in carried:
            by_block[(bits_of(layer), block_of(layer))].append(layer.node)
    for (pass_bits, block), nodes in sorted(by_block.items()):  # one pass per bits and block size
        model = ort_weight_only.quantize_pass(model, nodes, pass_bits, block, options, calibration_feeds)
    for name, blocks in carried.items():
        carry_over.replace(model, name, blocks, options.accuracy_level)
    for layer in layers:
        shared = tied and tied[0] is layer and (tied[1].node not in carried or carried[tied[1].node].minimums is None)
        if layer.op_type == "Gather" and shared and gather_from_head(model, layer, tied[1], bits_of(layer)):
            continue
        if layer.op_type == "Gather":
            group = plan_group_size(layer.in_channels, requested)
            quantize_embedding(model, layer, bits_of(layer), group if group != PER_CHANNEL else layer.in_channels, options.sym)
    remove_unused_initializers(model)
    save_with_external_data(model, dst)
    algorithm = options.algorithms[0] if bits == 4 else "rtn"
    recipe = _recipe(options, f"onnxruntime.quantization MatMulNBits ({ALGORITHM_TOOLS[algorithm]}) + GatherBlockQuantized",
                     dst, layers)
    if mixed:
        recipe["mixed_precision"] = mixed
    if from_source is not None:
        recipe["from_source"] = from_source
    return recipe


ALGORITHM_TOOLS = {"rtn": "round to nearest", "k-quant": "k-quant", "hqq": "HQQ"}


def _dynamic(src: Path, layers: list[WeightLayer], dst: Path, options: QuantizationOptions) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, use_external_data_format=True,
        op_types_to_quantize=sorted({"MatMul", "Gather"} | {layer.op_type for layer in layers}),
        nodes_to_quantize=[layer.node for layer in layers],
        # its shape inference cannot type contrib ops' outputs (GroupQueryAttention): say they are float
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return _recipe(options, "onnxruntime.quantization.quantize_dynamic (int8 weights per channel, int8 activations at run time)", dst, layers)


class _FeedReader:
    """onnxruntime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def _static(src: Path, layers, dst: Path, options: QuantizationOptions, calibration: CalibrationFeeds | None) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    feeds = calibration() if calibration else []
    if not feeds:
        raise InvalidInputError(f"no calibration samples could be made from {options.calibration}; give more text")
    quantize_static(
        str(src), str(dst), _FeedReader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=sorted({"MatMul"} | {layer.op_type for layer in layers if layer.op_type == "Conv"}),
        nodes_to_quantize=[layer.node for layer in layers if layer.op_type in ("MatMul", "Conv")],
        use_external_data_format=True, extra_options={"WeightSymmetric": True, "ActivationSymmetric": options.sym},
    )
    recipe = _recipe(options, "onnxruntime.quantization.quantize_static (QDQ, int8 weights per channel, uint8 activations, MinMax)", dst, layers)
    recipe["calibration_feeds"] = len(feeds)
    return recipe


def _fp16(model, dst: Path, options: QuantizationOptions) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    save_with_external_data(model, dst)
    return {"tool": "onnxruntime.transformers.float16 (float32 inputs/outputs)", "options": options.describe("onnxruntime")}


def _recipe(options: QuantizationOptions, tool: str, dst: Path, layers: list[WeightLayer]) -> dict:
    import onnx

    return {
        "tool": tool,
        "options": options.describe("onnxruntime"),
        "layers": summarize_layers(onnx.load(str(dst), load_external_data=False), {l.node: l for l in layers}),
    }


def summarize_layers(model, planned: dict[str, WeightLayer]) -> dict[str, dict]:
    """What each layer kind ended up as, read from the written graph's nodes."""
    from onnx import helper

    kinds: dict[str, dict] = {}
    names = {layer.node for layer in planned.values()}
    dequantized = {output for node in model.graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    for node in model.graph.node:
        # quantizers name their nodes after the original ("node_linear_1" -> "node_linear_1_Q4"); the
        # longest matching original wins, so "node_linear_1_Q4" is not taken for "node_linear"
        matches = [n for n in names if node.name == n or node.name.startswith(n + "_")]
        source = max(matches, key=len) if matches else None
        if source is None or node.op_type in ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "Add", "Mul", "Cast", "Split"):
            continue
        layer = planned[source]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        entry = {"op": node.op_type, "in_channels": layer.in_channels}
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            entry.update(bits=attributes["bits"], group_size=effective_group(attributes["block_size"], layer.in_channels))
        elif node.op_type in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"):
            entry.update(bits=8)
        elif len(node.input) > 1 and node.input[1] in dequantized:  # static QDQ: the weight through DequantizeLinear
            entry.update(bits=8)
        else:
            entry.update(bits=None)  # float weights
        summary = kinds.setdefault(layer.kind, {**entry, "count": 0})
        summary["count"] += 1
    return kinds
