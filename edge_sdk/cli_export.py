"""``edge-sdk export`` and ``edge-sdk inspect``: making a package, and showing what one holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_sdk.cli_common import warn_numerics
from edge_sdk.quantization import ALGORITHMS, HEADS, MODES, RUNTIMES, WEIGHTS
from edge_sdk.tasks import get_task


@click.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Package directory to write.")
@click.option("--task", default=None, help="Task of the package, e.g. text-generation (default: from the architecture).")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None, help="Engine the package runs on [onnxruntime, or the --device's].")
@click.option("--weights", type=click.Choice(WEIGHTS), default=None, help="Precision of the weights [fp32, or the --device's].")
@click.option("--device", default=None, help="Device profile (name or .toml) choosing runtime, precision and threads.")
@click.option("--static-prompt-length", type=int, default=64, show_default=True, help="NPU profiles: tokens per call (static).")
@click.option("--static-cache-length", type=int, default=384, show_default=True, help="NPU profiles: KV-cache positions (static).")
@click.option("--quant-mode", type=click.Choice(MODES), default=None, help="int8: weight-only (default), dynamic or static (calibrated) activations.")
@click.option("--group-size", type=int, default=None, help="Weights per scale along input channels (power of two >= 16; -1 per-channel) [128].")
@click.option("--sym/--asym", default=False, show_default=True, help="Symmetric (no zero points) or asymmetric quantization.")
@click.option("--calibration", type=click.Path(), default=None,
              help="Data for --quant-mode static and calibrated int4: text file/dir (LLMs), audio file/dir (speech), 'sampling' (diffusion).")
@click.option("--num-samples", type=int, default=32, show_default=True, help="Calibration samples (windows, audio files, or UNet inputs).")
@click.option("--accuracy-level", type=int, default=4, show_default=True,
              help="ONNX Runtime MatMulNBits compute type: 4 computes in int8 (its fast kernels); 1 in fp32, "
                   "exact but ~35x slower to decode on CPUs (measured on SmolLM2-135M).")
@click.option("--ratio", type=float, default=1.0, show_default=True,
              help="int4: share of the layers' weights in 4 bits; the rest INT8, the most sensitive first (ONNX Runtime: measured "
                   "on --calibration).")
@click.option("--algorithm", default=None, metavar="NAME[,NAME]",
              help=f"int4 rounding: {', '.join(ALGORITHMS)} [rtn]. gptq, awq and scale-estimation need --calibration; "
                   "OpenVINO (NNCF) has gptq, awq, scale-estimation (combine with ','); k-quant and hqq are ONNX Runtime's "
                   "(hqq's float zero points decode ~15x slower).")
@click.option("--head-weights", "head", type=click.Choice(HEADS), default=None,
              help="int4: precision of the embedding table and LM head [int8, as llama.cpp and NNCF keep them].")
@click.option("--eval-data", type=click.Path(), default=None, help="Held-back text for the accuracy figures [bundled text].")
@click.option("--requantize", is_flag=True,
              help="GGUF sources: quantize the dequantized weights with this recipe instead of carrying the file's "
                   "Q4_0/Q4_1/Q8_0 blocks over as they are.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it already holds a package.")
@click.option("--atol", type=float, default=1e-3, show_default=True, help="Largest |ONNX - PyTorch| accepted at validation.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def export(model: str, output: str, task, runtime, weights, device, static_prompt_length, static_cache_length, quant_mode,
           group_size, sym, calibration, num_samples, accuracy_level, ratio, algorithm, head, eval_data, requantize: bool, overwrite: bool,
           atol: float, quiet: bool) -> None:
    """Export MODEL (a Hugging Face directory or hub id, a GGUF file, a Whisper checkpoint, a diffusers
    pipeline) to an edge package.

    The FP32 graph is validated against the PyTorch model; quantized packages are derived from it
    and their accuracy against it is measured and written to the manifest. A failed export leaves
    nothing behind.

    \b
    Examples:
      edge-sdk export ./SmolLM2-135M -o out/smollm
      edge-sdk export SmolLM2-135M-Instruct.Q4_1.gguf -o out/smollm-int4 --weights int4   # Q4_1 blocks carried over
      edge-sdk export ./SmolLM2-135M -o out/smollm-int4 --weights int4 --group-size 64
      edge-sdk export ./SmolLM2-135M -o out/smollm-awq --runtime openvino --weights int4 --algorithm awq,scale-estimation --calibration texts/
      edge-sdk export ./SmolLM2-135M -o out/smollm-mixed --weights int4 --ratio 0.8 --calibration texts/
      edge-sdk export ./SmolLM2-135M -o out/smollm-ov --runtime openvino --weights int8
      edge-sdk export ./SmolLM2-135M -o out/smollm-static --weights int8 --quant-mode static --calibration texts/
      edge-sdk export ./ddpm-digits -o out/digits-static --weights int8 --quant-mode static --calibration sampling
      edge-sdk export ./SmolLM2-135M -o out/smollm-pi5 --device raspberry-pi-5
      edge-sdk export ./SmolLM2-135M -o out/smollm-npu --device intel-core-ultra-npu --static-prompt-length 128
    """
    import edge_sdk
    from edge_sdk.converters.export import options_for_device
    from edge_sdk.quantization import QuantizationOptions

    quantization_fields = dict(mode=quant_mode, group_size=group_size, accuracy_level=accuracy_level, ratio=ratio, head=head,
                               calibration=Path(calibration) if calibration else None, num_samples=num_samples,
                               algorithm=tuple(a.strip() for a in algorithm.split(",") if a.strip()) if algorithm else ())
    if sym:
        quantization_fields["sym"] = True
    common = dict(task=task, atol=atol, eval_data=Path(eval_data) if eval_data else None, requantize=requantize)
    if device:
        options = options_for_device(device, runtime=runtime, weights=weights, static_prompt_length=static_prompt_length,
                                     static_cache_length=static_cache_length, quantization_fields=quantization_fields, **common)
        chosen = options.device
        click.echo(f"{chosen.name}: runtime {options.runtime}, weights {options.quantization.weights}"
                   f"{' (symmetric)' if options.quantization.sym else ''}, {chosen.threads} threads"
                   + (f", static shapes {chosen.static_shapes}" if chosen.static_shapes else "") + " (from the profile)", err=True)
    else:
        quantization = QuantizationOptions(weights=weights or "fp32", **quantization_fields)
        options = _export_options(runtime=runtime or "onnxruntime", quantization=quantization, **common)
    path = edge_sdk.export(model, output, options, overwrite=overwrite, progress=not quiet)
    from edge_sdk.package import Package

    package = Package.open(path, verify=False)
    accuracy = package.manifest.get("accuracy", {})
    figures = []
    differences = accuracy.get("max_abs_diff") or {}
    if differences:
        figures.append(f"FP32 graph max |ONNX - PyTorch| {max(differences.values()):.2g}")
    if (accuracy.get("eval") or {}).get("summary"):
        figures.append(accuracy["eval"]["summary"])
    precision = package.manifest["precision"]["weights"]
    click.echo(f"Wrote {package.task} package {path} ({package.runtime}, {precision}, {_megabytes(package.size_bytes)})")
    for figure in figures:
        click.echo(f"  {figure}")
    device = package.manifest.get("device") or {}
    if device.get("static_shapes"):
        click.echo(f"Static shapes for {device['name']}: runs here on OpenVINO's CPU device; on the device set "
                   "EDGE_SDK_OPENVINO_DEVICE=NPU")
    click.echo(f"Try it: {get_task(package.task).try_it.format(path=path)}")


def _export_options(**fields):
    from edge_sdk.converters.export import ExportOptions

    return ExportOptions(**fields)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@click.command()
@click.argument("package", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip checking the files' sha256.")
def inspect(package: str, as_json: bool, no_verify: bool) -> None:
    """Show what PACKAGE holds: task, source, precision, graphs, files and accuracy.

    \b
    Examples:
      edge-sdk inspect out/smollm
      edge-sdk inspect out/smollm --json | jq .accuracy
    """
    from edge_sdk.describe import render_manifest
    from edge_sdk.package import Package

    pkg = Package.open(package, verify=not no_verify)
    if as_json:
        click.echo(json.dumps(pkg.manifest, indent=2))
        return
    warn_numerics(package)
    from rich.console import Console

    Console().print(render_manifest(pkg, verified=not no_verify))
