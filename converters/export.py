"""``export()``: a model source in, a validated edge package out (written atomically).

What is common to every task is assembled here, once: the source is recognised by the registered
resolvers (``resolve.resolve_source``), the task's exporter (named in its ``edge_sdk.tasks``
registration) builds the graphs and returns an ``ExportResult``, the package's accuracy against
the FP32 graphs is measured by the task's own measure in a fresh process, and the manifest's
common sections (task, source, runtime, precision, graphs, accuracy, device) are written here.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edge_sdk.converters.registry import supported_architectures
from edge_sdk.converters.resolve import resolve_source
from edge_sdk.converters.sources import ExportResult, Source, weights_sha256
from edge_sdk.errors import InvalidInputError
from edge_sdk.package import staged_output, write_manifest
from edge_sdk.progress import Steps
from edge_sdk.quantization import SAMPLING, QuantizationOptions
from edge_sdk.tasks import Task, available_tasks, get_task, load_attribute

REFERENCE_DIR = "reference-work"  # inside the staging directory: the FP32 graphs as a package, for the accuracy pass


@dataclass(frozen=True)
class ExportOptions:
    """What to export, for which engine and precision, and how strictly to validate it."""

    task: str | None = None  # None: inferred from the model's architecture
    runtime: str = "onnxruntime"  # engine of the package: onnxruntime | openvino
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)  # weights precision and recipe
    atol: float = 1e-3  # largest |ONNX - PyTorch| accepted on logits and cache at validation (FP32 graph)
    eval_data: Path | None = None  # held-back text for the accuracy figures; None: the bundled text
    device: DeviceTarget | None = None  # the device profile the package is made for (see ``options_for_device``)
    # text: also measure against this Hugging Face model, the teacher of a distilled student (None: the
    # teacher named in the source's distill.json when it is found locally)
    teacher: Path | None = None
    # a quantized source (GGUF): quantize its dequantized weights with the package's recipe instead of
    # carrying its blocks over where the engine holds them as they are
    requantize: bool = False

    def __post_init__(self):
        if self.task is not None:
            if self.task not in available_tasks() and self.task not in {a for t in available_tasks() for a in get_task(t).aliases}:
                raise InvalidInputError(f"unknown task '{self.task}'; supported: {', '.join(available_tasks())}")
            object.__setattr__(self, "task", get_task(self.task).name)
        if not self.atol > 0:
            raise InvalidInputError(f"atol must be > 0, got {self.atol}")
        self.quantization.check_runtime(self.runtime)
        if self.eval_data is not None and not Path(self.eval_data).exists():
            raise InvalidInputError(f"evaluation data {self.eval_data} does not exist")
        if self.teacher is not None and not (Path(self.teacher) / "config.json").is_file():
            raise InvalidInputError(f"teacher {self.teacher} is not a Hugging Face model directory (no config.json)")
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
    source = resolve_source(str(model))
    task = get_task(source.spec.task)
    if options.task is not None and options.task != task.name:
        raise InvalidInputError(
            f"{model} is a {task.name} model ({source.spec.architecture}); it cannot be exported as '{options.task}'"
        )
    _check_calibration(task, options.quantization)
    _check_static_fits(source, options)
    exporter = load_attribute(task.exporter)
    with staged_output(output, overwrite) as staging, Steps(total=2, enabled=progress) as steps:
        result: ExportResult = exporter(source, staging, options, steps)
        manifest = {
            "task": task.name,
            "source": {"model": str(model), "architecture": source.spec.architecture,
                       "weights_sha256": weights_sha256(source.path), **source.extra.get("manifest", {})},
            "runtime": {"name": options.runtime, "min_version": result.min_version},
            "precision": {"weights": options.quantization.weights, "activations": options.quantization.activations,
                          "recipe": result.recipe},
            "graphs": result.graphs,
            **result.sections,
            "accuracy": dict(result.validation),
        }
        if task.accuracy:
            with steps.step("measuring accuracy against FP32"):
                manifest["accuracy"]["eval"] = _measure_accuracy(task, staging, manifest, result, options, steps)
        from edge_sdk.devices.numerics import this_machine

        manifest["accuracy"]["measured_on"] = this_machine(options.runtime)  # the int8 path the figures hold for
        if result.work_dir is not None:
            shutil.rmtree(result.work_dir, ignore_errors=True)
        if options.device is not None:
            manifest["device"] = options.device.as_manifest(options)
        if options.device is not None and options.device.static_shapes:
            _make_static(staging, manifest, options.device, steps)
        with steps.step("writing package"):
            write_manifest(staging, manifest)
    return Path(output)


def _measure_accuracy(task: Task, staging: Path, manifest: dict, result: ExportResult, options, steps) -> dict:
    """The task's accuracy measure, in a fresh process, of the staged package against the FP32 graphs
    (laid out as a package of their own beside it, then removed)."""
    from edge_sdk.converters.stage import run_stage

    reference = _reference_package(staging, manifest, result) if result.reference_graphs_kept() else None
    work = staging / "accuracy-work"
    leave_out = [p.name for p in staging.iterdir() if p.is_dir()]  # work directories are not the package
    write_manifest(staging, manifest, exclude=leave_out)  # the staged package, as it will load
    request = {"candidate": str(staging), "reference": str(reference) if reference else None,
               "data": str(options.eval_data) if options.eval_data else None}
    teacher = options.teacher or _distilled_from(Path(manifest["source"]["model"]))
    if teacher is not None and task.name == "text-generation":
        request["teacher"] = str(teacher)
    try:
        return run_stage(task.accuracy, request, work, steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if reference is not None:
            shutil.rmtree(reference, ignore_errors=True)


def _distilled_from(source: Path) -> Path | None:
    """The teacher recorded in a student's distill.json (``edge-sdk distill``), if it is here."""
    import json

    record = source / "distill.json"
    try:
        teacher = Path(json.loads(record.read_text(encoding="utf-8"))["teacher"]["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return teacher if (teacher / "config.json").is_file() else None


def _reference_package(staging: Path, manifest: dict, result: ExportResult) -> Path:
    """The exporter's FP32 graphs (``<role>.onnx``) with the package's other files (hard links), as
    an FP32 ONNX Runtime package the runtime loads like any other."""
    from edge_sdk.converters.onnxruntime_engine import describe

    reference = staging / REFERENCE_DIR
    reference.mkdir()
    graphs = []
    for graph in result.graphs:
        name = f"{graph['role']}.onnx"
        data = sorted(p.name for p in result.work_dir.glob(f"{name}.data*"))
        for file in (name, *data):
            os.replace(result.work_dir / file, reference / file)
        graphs.append({"role": graph["role"], "path": name, **describe(reference / name), "external_data": data})
    graph_files = {graph["path"] for graph in result.graphs} | {f for graph in result.graphs for f in graph.get("external_data", [])}
    for file in staging.iterdir():
        if file.is_file() and file.name not in graph_files and file.name != "manifest.json":
            try:
                os.link(file, reference / file.name)
            except OSError:  # a file system without hard links
                shutil.copy2(file, reference / file.name)
    write_manifest(reference, {**manifest, "runtime": {"name": "onnxruntime", "min_version": "1.17"},
                               "precision": {"weights": "fp32", "activations": "fp32", "recipe": None},
                               "graphs": graphs, "accuracy": {}})
    return reference


_POSITION_KEYS = ("max_target_positions", "max_position_embeddings", "n_positions")  # decoder first (Whisper)


def _check_static_fits(source: Source, options: ExportOptions) -> None:
    """Before any work: static prompt + cache positions must fit the model's positions, when its
    config.json says how many (``_make_static`` checks again against what the export found)."""
    if options.device is None or not options.device.static_shapes:
        return
    try:
        config = json.loads((source.path / "config.json").read_text())
    except (OSError, ValueError):
        return
    limit = next((config[k] for k in _POSITION_KEYS if isinstance(config.get(k), int)), None)
    _check_total(options.device, limit)


def _check_total(device: "DeviceTarget", limit: int | None) -> None:
    total = device.static_shapes["total_sequence"]
    if limit and total > limit:
        raise InvalidInputError(f"--static-prompt-length + --static-cache-length = {total} positions, but the model "
                                f"has {limit}; lower them")


def _make_static(staging: Path, manifest: dict, device: "DeviceTarget", steps) -> None:
    """Fix the graphs' symbolic dimensions to the device's static shapes (NPUs) and compile them as a check."""
    from edge_sdk.converters.openvino_engine import make_static

    model = manifest.get("model", {})
    _check_total(device, model.get("max_positions") or (manifest.get("decoding") or {}).get("max_target_positions"))
    window = model.get("sliding_window")
    if window and window < device.static_shapes["total_sequence"]:
        # the family's mask code measures a window by cache index, and the fixed cache's empty slots sit
        # between the filled ones and the chunk: it would drop keys that are inside the window
        raise InvalidInputError(f"{model.get('architecture', 'this model')} attends through a {window}-token sliding window, "
                                f"shorter than the {device.static_shapes['total_sequence']} positions of a static graph; "
                                f"export with --static-prompt-length + --static-cache-length <= {window}")
    with steps.step(f"fixing shapes for {device.name} and compiling them"):
        for graph in manifest["graphs"]:
            graph.update(make_static(staging / graph["path"], graph, device.static_shapes))


def _check_calibration(task: Task, quantization: QuantizationOptions) -> None:
    """A task calibrates on what its registration says: data files, or its own sampling trajectories;
    calibrated int4 (data-aware algorithms, a ratio measured on data) is built for text models."""
    if quantization.calibration is None:
        return
    if quantization.data_aware and quantization.effective_mode == "weight-only" and task.name != "text-generation":
        raise InvalidInputError(f"calibrated int4 (--algorithm gptq/awq/scale-estimation, --ratio with --calibration) is built "
                                f"for text-generation models; {task.name} packages take int4 without --calibration "
                                "(--algorithm rtn, or k-quant / hqq on ONNX Runtime)")
    if task.calibration == SAMPLING and not quantization.self_calibrated:
        raise InvalidInputError(f"{task.name} models calibrate on inputs recorded along their own sampling trajectories, "
                                f"not on files: pass --calibration {SAMPLING} (--num-samples sets how many inputs)")
    if task.calibration != SAMPLING and quantization.self_calibrated:
        raise InvalidInputError(f"--calibration {SAMPLING} is for diffusion models; a {task.name} model calibrates on "
                                f"{task.calibration}: pass a file or directory")


__all__ = ["export", "ExportOptions", "ExportResult", "Source", "DeviceTarget", "options_for_device", "supported_architectures"]
