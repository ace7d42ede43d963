"""From a validated FP32 ONNX graph to the graph a package ships: the runtime and precision asked for.

Task-independent: text generation, speech and diffusion exporters all hand their FP32 graphs here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edge_sdk.converters.onnx_export import describe_graph
from edge_sdk.converters.quantize import CalibrationFeeds, QuantizationOptions, quantize_onnx

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
    entry = {"role": role, "path": path.name, **describe_graph(path)}
    entry["external_data"] = sorted(p.name for p in staging.glob(f"{path.name}.data*"))
    return entry, recipe, _min_onnxruntime(path, entry.get("opset"))


def _min_onnxruntime(path: Path, opset: int | None) -> str:
    """The opset's minimum, or the version we validated with when the graph uses contrib ops."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path), load_external_data=False)
    if any(o.domain == "com.microsoft" for o in model.opset_import):
        major, minor = onnxruntime.__version__.split(".")[:2]
        return f"{major}.{minor}"  # MatMulNBits 8-bit, GatherBlockQuantized bits: recent contrib features
    return _MIN_ORT_FOR_OPSET.get(opset or 0, "1.17")
