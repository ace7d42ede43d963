"""From a validated FP32 ONNX graph to the graph a package ships: the runtime and precision asked for.

Task-independent: text generation, speech and diffusion exporters all hand their FP32 graphs here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_sdk.converters.onnx_export import _quiet_exporter, describe_graph
from edge_sdk.converters.onnx_graph import canonicalize_rotary_frequencies, gemm_to_matmul, merge_parallel_matmuls
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
) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """Write graph ``role`` into ``staging``; return (manifest graph entry, recipe or None, minimum engine version).

    ``fp32`` is the validated FP32 ONNX graph (with ``<fp32>.data`` beside it); it is moved, not
    copied, when the package is FP32 ONNX Runtime.
    """
    if runtime == "openvino":
        from edge_sdk.converters.openvino_convert import describe_openvino, onnx_to_openvino

        xml = staging / f"{role}.xml"
        recipe = onnx_to_openvino(fp32, xml, options, calibration)
        entry = {"role": role, "path": xml.name, **describe_openvino(xml), "external_data": [xml.with_suffix(".bin").name]}
        return entry, recipe, MIN_OPENVINO

    path = staging / f"{role}.onnx"
    recipe = None
    if options.weights == "fp32":
        for source in (fp32, fp32.with_name(fp32.name + ".data")):
            if source.exists():
                os.replace(source, path.with_name(path.name + source.name[len(fp32.name):]))
    else:
        recipe = quantize_onnx(fp32, path, options, calibration)
    fusions = optimize_for_onnxruntime(path, probe)
    entry = {"role": role, "path": path.name, **describe_graph(path), "fusions": fusions}
    entry["external_data"] = sorted(p.name for p in staging.glob(f"{path.name}.data*"))
    return entry, recipe, _min_onnxruntime(path, entry.get("opset"))


def optimize_for_onnxruntime(path: Path, probe: Probe | None = None) -> dict[str, Any]:
    """Fuse the exporter's primitive ops into ONNX Runtime's transformer kernels, in place.

    A small LM's decode step is thousands of tiny ops; fused kernels (RMSNorm, rotary embedding,
    attention with its KV cache) are most of what makes quantized decode fast. ``probe`` runs a
    task-specific check (e.g. a left-padded batch through prefill and decode) on a session; the
    fused graph is kept only if it reproduces the unfused one, else the unfused graph stays and the
    reason is recorded. Returns ``{"applied": {fusion: count}, "rejected": reason or None}``.
    """
    import tempfile

    import onnx
    import onnx_ir as ir

    from edge_sdk.runtimes.backend import open_session

    proto = onnx.load(str(path))
    gemm_to_matmul(proto)  # the fusions mishandle GPT-2's Gemm (Conv1D) after reshapes; MatMul + Add is safe
    canonicalize_rotary_frequencies(proto)  # lets the RoPE fusion (cos/sin cache) match
    merge_parallel_matmuls(proto)  # q/k/v and gate/up: one wider product each (quantized graphs: already done)
    model = ir.serde.deserialize_model(proto)
    del proto
    with _quiet_exporter():
        counts = _fuse_transformer_ops(model)
    applied = {name: count for name, count in counts.items() if count}
    if not applied:
        return {"applied": {}, "rejected": None}
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        fused = Path(scratch) / path.name
        with _quiet_exporter():
            ir.save(model, str(fused), external_data=f"{path.name}.data")
        del model
        if probe is not None:
            problem = _compare_probes(probe, open_session("onnxruntime", path), fused)
            if problem:
                log.warning("kept the unfused graph: %s", problem)
                return {"applied": {}, "rejected": problem}
        for produced in Path(scratch).iterdir():
            os.replace(produced, path.parent / produced.name)
    return {"applied": applied, "rejected": None}


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


def _compare_probes(probe: Probe, reference_session, fused: Path) -> str | None:
    """None if the fused graph reproduces the reference on the probe, else what went wrong."""
    from edge_sdk.runtimes.backend import open_session

    expected = probe(reference_session)
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
