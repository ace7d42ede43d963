"""``export()``: a model source in, a validated edge package out (written atomically)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_sdk.converters.causal_lm import export_causal_lm
from edge_sdk.converters.diffusion import diffusion_source, export_unet
from edge_sdk.converters.quantize import SAMPLING, QuantizationOptions
from edge_sdk.converters.registry import lookup, supported_architectures
from edge_sdk.converters.sources import read_config, resolve_model_dir, weights_sha256
from edge_sdk.converters.whisper import export_whisper
from edge_sdk.converters.whisper_sources import ARCHITECTURE as WHISPER, whisper_source_kind
from edge_sdk.errors import InvalidInputError
from edge_sdk.package import staged_output, write_manifest
from edge_sdk.progress import Steps

# task -> exporter(model_dir, spec, staging, options, steps) -> manifest sections
EXPORTERS = {"text-generation": export_causal_lm, "speech-recognition": export_whisper, "image-generation": export_unet}


@dataclass(frozen=True)
class ExportOptions:
    """What to export, for which engine and precision, and how strictly to validate it."""

    task: str | None = None  # None: inferred from the model's architecture
    runtime: str = "onnxruntime"  # engine of the package: onnxruntime | openvino
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)  # weights precision and recipe
    atol: float = 1e-3  # largest |ONNX - PyTorch| accepted on logits and cache at validation (FP32 graph)
    eval_data: Path | None = None  # held-back text for the accuracy figures; None: the bundled text
    device: DeviceTarget | None = None  # the device profile the package is made for (see ``options_for_device``)

    def __post_init__(self):
        if self.task is not None and self.task not in EXPORTERS:
            raise InvalidInputError(f"unknown task '{self.task}'; supported: {', '.join(sorted(EXPORTERS))}")
        if not self.atol > 0:
            raise InvalidInputError(f"atol must be > 0, got {self.atol}")
        self.quantization.check_runtime(self.runtime)
        if self.eval_data is not None and not Path(self.eval_data).exists():
            raise InvalidInputError(f"evaluation data {self.eval_data} does not exist")
        if self.device is not None and self.device.static_shapes and self.runtime != "openvino":
            raise InvalidInputError(f"static shapes (for {self.device.name}'s NPU) are built for OpenVINO; use --runtime openvino")


@dataclass(frozen=True)
class DeviceTarget:
    """What a device profile decided for a package (recorded in its manifest as ``device``)."""

    name: str
    threads: int  # the runtime's default thread count for this package
    static_shapes: dict[str, int] | None = None  # symbolic dim -> size, for NPUs (batch, sequence, past_sequence, ...)

    def as_manifest(self, options: "ExportOptions") -> dict:
        return {"name": self.name, "threads": self.threads, "static_shapes": self.static_shapes,
                "chosen": {"runtime": options.runtime, "weights": options.quantization.weights,
                           "sym": options.quantization.sym}}


STATIC_PROMPT_LENGTH = 64  # NPU graphs: tokens per call
STATIC_CACHE_LENGTH = 384  # NPU graphs: KV-cache positions (prompt + cache = 448, Whisper's decoder limit)


def options_for_device(profile: str | os.PathLike, runtime: str | None = None, weights: str | None = None,
                       static_prompt_length: int = STATIC_PROMPT_LENGTH, static_cache_length: int = STATIC_CACHE_LENGTH,
                       **fields) -> ExportOptions:
    """ExportOptions chosen by a device profile: its preferred runtime and first precision (both
    overridable), its thread count as the package's default; for a profile with an NPU that needs
    static shapes, OpenVINO graphs with batch 1, ``static_prompt_length`` tokens per call and
    ``static_cache_length`` cache positions, and symmetric INT4 when the NPU asks for it.
    ``fields``: the other ExportOptions fields; ``quantization`` fields go in ``quantization_fields``.

    Example::

        options = options_for_device("raspberry-pi-5")   # onnxruntime, int8, 4 threads
    """
    from edge_sdk.devices.profiles import load_profile

    device = load_profile(profile)
    static = None
    if device.npu is not None and device.npu.static_shapes:
        if runtime not in (None, "openvino"):
            raise InvalidInputError(f"{device.name}'s NPU runs OpenVINO graphs; drop --runtime {runtime} (or pick a CPU profile)")
        runtime = "openvino"
        for name, value in (("--static-prompt-length", static_prompt_length), ("--static-cache-length", static_cache_length)):
            if value < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {value}")
        static = {"batch": 1, "sequence": static_prompt_length, "past_sequence": static_cache_length,
                  "total_sequence": static_prompt_length + static_cache_length}
    runtime = runtime or device.preferred_runtime
    weights = weights or device.precisions[0]
    quantization_fields = dict(fields.pop("quantization_fields", {}) or {})
    if device.npu is not None and weights == "int4" and "int4-sym" in device.npu.weights:
        quantization_fields["sym"] = True
    quantization = QuantizationOptions(weights=weights, **quantization_fields)
    return ExportOptions(runtime=runtime, quantization=quantization,
                         device=DeviceTarget(device.name, device.cpu.threads, static), **fields)


def export(
    model: str | os.PathLike,
    output: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Export ``model`` (a Hugging Face directory or hub id; for Whisper also an OpenAI ``.pt`` or a
    CTranslate2 directory) to a package directory ``output``.

    The package is built in a staging directory beside ``output`` and moved into place only after
    the graph reproduced the PyTorch model; on failure nothing is left behind.

    Example::

        from edge_sdk.converters.export import export
        export("HuggingFaceTB/SmolLM2-135M", "out/smollm")
    """
    options = options or ExportOptions()
    path = Path(str(model)).expanduser()
    kind = whisper_source_kind(path)  # an OpenAI .pt file or a CTranslate2 directory
    diffusion = diffusion_source(path)  # a diffusers pipeline or UNet directory
    if diffusion is not None:
        (model_dir, scheduler_file), spec = diffusion, lookup(["UNet2DModel"], source=str(model))
        exporter = lambda *args: export_unet(*args, scheduler_file=scheduler_file)  # noqa: E731
    elif kind is not None:
        model_dir, spec = path, lookup([WHISPER], source=str(model))
        exporter = lambda *args: export_whisper(*args, kind=kind)  # noqa: E731
    else:
        model_dir = resolve_model_dir(str(model))
        spec = lookup(read_config(model_dir).get("architectures"), source=str(model))
        exporter = EXPORTERS[spec.task]
    if options.task is not None and options.task != spec.task:
        raise InvalidInputError(
            f"{model} is a {spec.task} model ({spec.architecture}); it cannot be exported as '{options.task}'"
        )
    _check_calibration(spec.task, options.quantization)
    with staged_output(output, overwrite) as staging, Steps(total=1, enabled=progress) as steps:
        sections = exporter(model_dir, spec, staging, options, steps)
        source = {"model": str(model), "architecture": spec.architecture, "weights_sha256": weights_sha256(model_dir)}
        if options.device is not None:
            sections["device"] = options.device.as_manifest(options)
        if options.device is not None and options.device.static_shapes:
            from edge_sdk.converters.openvino_convert import make_static

            model_info = sections.get("model", {})
            limit = model_info.get("max_positions") or (sections.get("decoding") or {}).get("max_target_positions")
            total = options.device.static_shapes["total_sequence"]
            if limit and total > limit:
                raise InvalidInputError(f"--static-prompt-length + --static-cache-length = {total} positions, but the model "
                                        f"has {limit}; lower them")
            with steps.step(f"fixing shapes for {options.device.name} and compiling them"):
                for graph in sections["graphs"]:
                    graph.update(make_static(staging / graph["path"], graph, options.device.static_shapes))
        with steps.step("writing package"):
            write_manifest(staging, {"task": spec.task, "source": source, **sections})
    return Path(output)


def _check_calibration(task: str, quantization: QuantizationOptions) -> None:
    """Diffusion UNets calibrate on their own sampling trajectories, the other tasks on data."""
    if quantization.calibration is None:
        return
    if task == "image-generation" and not quantization.self_calibrated:
        raise InvalidInputError(f"diffusion UNets calibrate on inputs recorded along their own sampling trajectories, "
                                f"not on files: pass --calibration {SAMPLING} (--num-samples sets how many inputs)")
    if task != "image-generation" and quantization.self_calibrated:
        data = "audio files" if task == "speech-recognition" else "text"
        raise InvalidInputError(f"--calibration {SAMPLING} is for diffusion models; a {task} model calibrates on {data}: "
                                "pass a file or directory")


__all__ = ["export", "ExportOptions", "DeviceTarget", "options_for_device", "supported_architectures"]
