"""``export()``: a model source in, a validated edge package out (written atomically)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edge_sdk.converters.causal_lm import export_causal_lm
from edge_sdk.converters.registry import lookup, supported_architectures
from edge_sdk.converters.sources import read_config, resolve_model_dir, weights_sha256
from edge_sdk.errors import InvalidInputError
from edge_sdk.package import staged_output, write_manifest
from edge_sdk.progress import Steps

# task -> exporter(model_dir, spec, staging, options, steps) -> manifest sections
EXPORTERS = {"text-generation": export_causal_lm}
# the oldest ONNX Runtime that implements each default-domain opset our graphs may use
_MIN_ORT_FOR_OPSET = {17: "1.13", 18: "1.14", 19: "1.16", 20: "1.17", 21: "1.20", 22: "1.20", 23: "1.22"}


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how strictly to validate it."""

    task: str | None = None  # None: inferred from the model's architecture
    atol: float = 1e-3  # largest |ONNX - PyTorch| accepted on logits and cache at validation

    def __post_init__(self):
        if self.task is not None and self.task not in EXPORTERS:
            raise InvalidInputError(f"unknown task '{self.task}'; supported: {', '.join(sorted(EXPORTERS))}")
        if not self.atol > 0:
            raise InvalidInputError(f"atol must be > 0, got {self.atol}")


def export(
    model: str | os.PathLike,
    output: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Export ``model`` (a Hugging Face directory or hub id) to a package directory ``output``.

    The package is built in a staging directory beside ``output`` and moved into place only after
    the graph reproduced the PyTorch model; on failure nothing is left behind.

    Example::

        from edge_sdk.converters.export import export
        export("HuggingFaceTB/SmolLM2-135M", "out/smollm")
    """
    options = options or ExportOptions()
    model_dir = resolve_model_dir(str(model))
    config = read_config(model_dir)
    spec = lookup(config.get("architectures"), source=str(model))
    if options.task is not None and options.task != spec.task:
        raise InvalidInputError(
            f"{model} is a {spec.task} model ({spec.architecture}); it cannot be exported as '{options.task}'"
        )
    with staged_output(output, overwrite) as staging, Steps(total=4, enabled=progress) as steps:
        sections = EXPORTERS[spec.task](model_dir, spec, staging, options, steps)
        with steps.step("writing package"):
            opset = max(graph.get("opset") or 0 for graph in sections["graphs"])
            write_manifest(
                staging,
                {
                    "task": spec.task,
                    "source": {
                        "model": str(model),
                        "architecture": spec.architecture,
                        "weights_sha256": weights_sha256(model_dir),
                    },
                    "runtime": {"name": "onnxruntime", "min_version": _MIN_ORT_FOR_OPSET.get(opset, "1.17")},
                    "precision": {"weights": "fp32", "activations": "fp32", "recipe": None},
                    **sections,
                },
            )
    return Path(output)


__all__ = ["export", "ExportOptions", "supported_architectures"]
