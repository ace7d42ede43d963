"""From a validated FP32 ONNX graph to the graph a package ships: the runtime and precision asked for.

Task-independent: text generation, speech and diffusion exporters all hand their FP32 graphs here.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_sdk.converters.onnx_export import quiet_exporter, describe_graph
from edge_sdk.converters.graph_prepare import prepare_graph
from edge_sdk.converters.quantize import CalibrationFeeds, QuantizationOptions, quantize_onnx

log = logging.getLogger("edge_sdk")
# A task's check of a graph: runs a session on fixed inputs, returns an array to compare.
Probe = Callable[[Any], np.ndarray]

# the oldest ONNX Runtime that implements each default-domain opset our graphs may use
_MIN_ORT_FOR_OPSET = {17: "1.13", 18: "1.14", 19: "1.16", 20: "1.17", 21: "1.20", 22: "1.20", 23: "1.22"}
MIN_OPENVINO = "2024.4"  # IR with NNCF's u4/u8 weight decompression patterns


def build_graph(
    fp32: Path,
    staging: Path,
    role: str,
    runtime: str,
    options: QuantizationOptions,
    calibration: CalibrationFeeds | None = None,
    probe: Probe | None = None,
    model_type: str = "transformer",
) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """Write graph ``role`` into ``staging``; return (manifest graph entry, recipe or None, minimum engine version).

    ``fp32`` is the validated FP32 ONNX graph (with ``<fp32>.data`` beside it); it is moved, not
    copied, when the package is FP32 ONNX Runtime. ``model_type`` ("transformer" or "cnn", see
    ``quantize.MODEL_TYPES``) decides which layers quantization covers.
    """
    if runtime == "openvino":
        from edge_sdk.converters.openvino_convert import describe_openvino, onnx_to_openvino

        xml = staging / f"{role}.xml"
        names = {e["name"]: e["shape"] for e in describe_graph(fp32)["inputs"]}  # before fp32 is consumed
        recipe = onnx_to_openvino(fp32, xml, options, calibration, model_type)
        entry = {"role": role, "path": xml.name, **describe_openvino(xml, names), "external_data": [xml.with_suffix(".bin").name]}
        return entry, recipe, MIN_OPENVINO

    path = staging / f"{role}.onnx"
    fused = staging / "fused-work" / path.name
    fused.parent.mkdir()
    # fuse while the graph is FP32, where "same as unfused" can be checked tightly; quantizing the
    # fused graph then touches only its weight MatMuls and embeddings, which fusion leaves alone
    # static QDQ calibrated on the fused graph lost accuracy (top-1 vs FP32 0.65 against 0.93 unfused,
    # trained tiny LM): static packages keep the primitive ops
    fuse = options.effective_mode != "static"
    fusions = fuse_for_onnxruntime(fp32, fused, probe, untie_weights=options.quantized, fuse=fuse)
    recipe = None
    if options.weights == "fp32":
        for source in (fused, fused.with_name(fused.name + ".data")):
            os.replace(source, staging / source.name)
    else:
        recipe = quantize_onnx(fused, path, options, calibration, model_type)
    shutil.rmtree(fused.parent)
    entry = {"role": role, "path": path.name, **describe_graph(path), "fusions": fusions}
    entry["external_data"] = sorted(p.name for p in staging.glob(f"{path.name}.data*"))
    return entry, recipe, _min_onnxruntime(path, entry.get("opset"))


def fuse_for_onnxruntime(
    src: Path, dst: Path, probe: Probe | None = None, untie_weights: bool = False, fuse: bool = True
) -> dict[str, Any]:
    """Write ``src`` to ``dst`` with the exporter's primitive ops fused into ONNX Runtime kernels.

    A small LM's decode step is thousands of tiny ops; fused kernels (RMSNorm, rotary embedding,
    attention with its KV cache) and merged q/k/v and gate/up products are most of what makes
    quantized decode fast. ``probe`` runs a task-specific check (a left-padded batch through
    prefill and decode) on a session; the fused graph is kept only if it reproduces ``src``,
    else the unfused (but otherwise prepared) graph is written and the reason recorded.
    ``untie_weights`` stores a tied LM head as its own matrix (to be quantized like the others);
    ``fuse=False`` applies only those preparing rewrites. Returns ``{"applied": {fusion: count}, "rejected": reason or None}``.
    """
    import onnx_ir as ir

    # Gemm -> MatMul matters here too: the fusions mishandle GPT-2's Gemm (Conv1D) after reshapes
    prepare_graph(src, dst, untie=untie_weights)
    if not fuse:
        return {"applied": {}, "rejected": None}
    model = ir.load(str(dst))  # weights read lazily from dst's data file
    with quiet_exporter():
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
    problem = _compare_probes(probe, src, fused) if probe is not None else None
    if problem:
        log.warning("kept the unfused graph: %s", problem)
    else:
        for produced in fused.parent.iterdir():
            os.replace(produced, dst.parent / produced.name)
    shutil.rmtree(fused.parent)
    return {"applied": {} if problem else applied, "rejected": problem}


def _fuse_transformer_ops(model) -> dict[str, int]:
    """onnxscript's ONNX Runtime fusions, in its own order, without GroupQueryAttention.

    GroupQueryAttention takes the valid tokens of each row to be contiguous from position 0
    (``seqlens_k``); our runtime batches prompts with left padding and an attention mask, which
    MultiHeadAttention honours (measured: GQA broke left-padded batches, MHA keeps them exact).
    """
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES, shape_optimization
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

    common_passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
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


def _min_onnxruntime(path: Path, opset: int | None) -> str:
    """The opset's minimum, or the version we validated with when the graph uses contrib ops."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path), load_external_data=False)
    if any(o.domain == "com.microsoft" for o in model.opset_import):
        major, minor = onnxruntime.__version__.split(".")[:2]
        return f"{major}.{minor}"  # MatMulNBits 8-bit, GatherBlockQuantized bits: recent contrib features
    return _MIN_ORT_FOR_OPSET.get(opset or 0, "1.17")
