"""Quantization options and their vocabularies: what a user may ask for, validated in one place.

Torch-free (no converter imports): the CLI, device profiles and the converters all read it. The
converters (``edge_sdk.converters.onnxruntime_engine``, ``openvino_engine``) carry the options out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_sdk.errors import InvalidInputError

RUNTIMES = ("onnxruntime", "openvino")
WEIGHTS = ("fp32", "fp16", "int8", "int4")
MODES = ("weight-only", "dynamic", "static")
PER_CHANNEL = -1
MIN_GROUP_SIZE = 16  # MatMulNBits' smallest block
DEFAULT_GROUP_SIZE = 128  # optimum-cli's default for int4
HEADS = ("int4", "int8")  # --head-weights of int4 packages
DEFAULT_HEAD = "int8"  # as llama.cpp (Q6_K token_embd/output in Q4_0 and Q4_K_M) and NNCF (INT8 backup) keep them
SAMPLING = "sampling"  # --calibration value of diffusion models: record the model's own sampling trajectories
# int4 weight-only algorithms (--algorithm): name -> (engines that have it, needs calibration data, what it does)
ALGORITHMS = {
    "rtn": (RUNTIMES, False, "round to nearest in each group (both engines' plain quantizers)"),
    "k-quant": (("onnxruntime",), False, "llama.cpp-style search of each group's scale and minimum (onnxruntime.quantization)"),
    # its zero points are floats, which take MatMulNBits off its pre-packed kernels: SmolLM2-135M decoded
    # at 10.5 tok/s against 162 for rtn on 2 cores (BENCHMARKS, issue 32), hence not the default
    "hqq": (("onnxruntime",), False, "half-quadratic optimization of scales and zero points (onnxruntime.quantization); "
                                     "float zero points: decodes ~15x slower than rtn on CPUs"),
    # onnxruntime.quantization's GPTQ port returns round to nearest's weights (see converters/ort_weight_only)
    "gptq": (("openvino",), True, "GPTQ: rounding errors compensated on calibration activations (NNCF)"),
    "awq": (("openvino",), True, "activation-aware channel scaling (NNCF)"),
    "scale-estimation": (("openvino",), True, "scales fitted to calibration activations (NNCF)"),
}
DEFAULT_ALGORITHM = ("rtn",)


@dataclass(frozen=True)
class QuantizationOptions:
    """Precision and recipe of the package's weights (and activations for dynamic/static)."""

    weights: str = "fp32"  # fp32 | fp16 | int8 | int4
    mode: str | None = None  # weight-only | dynamic | static; None: weight-only
    group_size: int | None = None  # weights sharing a scale along input channels; -1 per-channel; None: 128 (int4, ORT int8)
    sym: bool = False  # symmetric quantization (no zero points); default asymmetric, as optimum-cli
    accuracy_level: int = 4  # ONNX Runtime MatMulNBits compute: 0 default, 1 fp32, 2 fp16, 3 bf16, 4 int8
    ratio: float = 1.0  # int4: share of the layers' weights in 4 bits, the rest INT8, the most sensitive kept INT8
    algorithm: tuple[str, ...] = ()  # int4 weight-only algorithms (ALGORITHMS); (): DEFAULT_ALGORITHM
    head: str | None = None  # int4: precision of the embedding table and LM head (HEADS); None: DEFAULT_HEAD
    calibration: Path | None = None  # static: text (file or directory), audio files, or "sampling" (diffusion), by task
    num_samples: int = 32  # calibration samples drawn from that data

    @property
    def activations(self) -> str:
        """How activations run, for the manifest: fp32, or int8 dynamic / static."""
        return {"dynamic": "int8 (dynamic)", "static": "int8 (static, calibrated)"}.get(self.effective_mode, "fp32")

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise InvalidInputError(f"unknown --weights '{self.weights}'; valid: {', '.join(WEIGHTS)}")
        if self.mode is not None and self.mode not in MODES:
            raise InvalidInputError(f"unknown --quant-mode '{self.mode}'; valid: {', '.join(MODES)}")
        if self.weights in ("fp32", "fp16") and self.mode not in (None, "weight-only"):
            raise InvalidInputError(f"--quant-mode {self.mode} needs --weights int8 (it quantizes activations too)")
        if self.weights == "int4" and self.effective_mode != "weight-only":
            raise InvalidInputError(
                f"int4 is weight-only; --quant-mode {self.mode} exists for int8 (use --weights int8 --quant-mode {self.mode})"
            )
        if self.group_size is not None:
            if self.weights not in ("int8", "int4") or self.effective_mode != "weight-only":
                raise InvalidInputError("--group-size applies to int8/int4 weight-only quantization")
            size = self.group_size
            if size != PER_CHANNEL and (size < MIN_GROUP_SIZE or size & (size - 1)):
                raise InvalidInputError(
                    f"group size {size} is not a power of two >= {MIN_GROUP_SIZE}: ONNX Runtime's MatMulNBits packs "
                    f"weights in blocks of 16, 32, 64, 128, ... (NNCF uses the same sizes); pass one of those, or -1 "
                    "for per-channel"
                )
        if self.effective_mode == "static" and self.calibration is None:
            raise InvalidInputError(
                "static quantization calibrates activations on real inputs and needs calibration data: "
                "pass --calibration PATH (text models: a text file or a directory of .txt files; "
                "speech models: an audio file or a directory of audio files; diffusion UNets: --calibration "
                f"{SAMPLING}, which records the model's own sampling trajectories)"
            )
        if self.calibration is not None and not self.self_calibrated and not Path(self.calibration).exists():
            raise InvalidInputError(f"calibration data {self.calibration} does not exist")
        if not 0 < self.ratio <= 1:
            raise InvalidInputError(f"--ratio must be in (0, 1], got {self.ratio}")
        if self.accuracy_level not in range(5):
            raise InvalidInputError(f"--accuracy-level must be 0..4, got {self.accuracy_level}")
        if self.head is not None and self.head not in HEADS:
            raise InvalidInputError(f"unknown --head-weights '{self.head}'; valid: {', '.join(HEADS)}")
        if self.head is not None and self.weights != "int4":
            raise InvalidInputError("--head-weights applies to --weights int4 (the other layers' precision is --weights)")
        if self.num_samples < 1:
            raise InvalidInputError(f"--num-samples must be >= 1, got {self.num_samples}")
        unknown = [a for a in self.algorithm if a not in ALGORITHMS]
        if unknown:
            raise InvalidInputError(f"unknown --algorithm '{unknown[0]}'; valid: {', '.join(ALGORITHMS)}")
        if self.algorithm and self.weights != "int4":
            raise InvalidInputError("--algorithm chooses how int4 weights are rounded: it needs --weights int4")
        if self.ratio < 1 and self.weights != "int4":
            raise InvalidInputError("--ratio is the share of int4 layers (the rest int8): it needs --weights int4")
        needs_data = [a for a in self.algorithm if ALGORITHMS[a][1]]
        if needs_data and self.calibration is None:
            raise InvalidInputError(
                f"--algorithm {needs_data[0]} fits the weights to real activations and needs calibration text: pass "
                "--calibration PATH (a text file or a directory of .txt files, not the text you will evaluate on)"
            )

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The int4 algorithms to apply (the default when none was asked for)."""
        return self.algorithm or DEFAULT_ALGORITHM

    @property
    def data_aware(self) -> bool:
        """int4 weight-only work that runs the model on calibration data: a data-aware algorithm, or a
        ratio below 1 (which layers stay INT8 is measured)."""
        return self.weights == "int4" and (any(ALGORITHMS[a][1] for a in self.algorithms) or self.ratio < 1)

    @property
    def self_calibrated(self) -> bool:
        """--calibration sampling: calibration inputs come from the model's own sampling (diffusion)."""
        return self.calibration is not None and str(self.calibration) == SAMPLING and not Path(SAMPLING).exists()

    @property
    def effective_mode(self) -> str | None:
        if self.weights in ("fp32", "fp16"):
            return None
        return self.mode or "weight-only"

    @property
    def head_weights(self) -> str:
        """int4 packages: the embedding table's and LM head's precision."""
        return self.head or DEFAULT_HEAD

    @property
    def quantized(self) -> bool:
        return self.weights in ("int8", "int4")

    def check_runtime(self, runtime: str) -> None:
        if runtime not in RUNTIMES:
            raise InvalidInputError(f"unknown --runtime '{runtime}'; valid: {', '.join(RUNTIMES)}")
        for name in self.algorithm:
            if runtime not in ALGORITHMS[name][0]:
                others = [a for a, (engines, _, _) in ALGORITHMS.items() if runtime in engines]
                raise InvalidInputError(f"--algorithm {name} is not available for --runtime {runtime}; "
                                        f"{runtime} has: {', '.join(others)}")
        if runtime == "onnxruntime" and len(self.algorithm) > 1:
            raise InvalidInputError(f"--runtime onnxruntime takes one --algorithm, got {','.join(self.algorithm)} "
                                    "(OpenVINO's NNCF combines awq, scale-estimation and gptq)")
        if runtime == "onnxruntime" and self.ratio < 1 and self.calibration is None:
            raise InvalidInputError("--ratio below 1 keeps the layers whose 4-bit rounding moves the output most in "
                                    "INT8, measured on calibration text: pass --calibration PATH")
        if runtime == "openvino" and self.effective_mode == "dynamic":
            raise InvalidInputError(
                "--quant-mode dynamic is an ONNX Runtime mode; OpenVINO's CPU plugin quantizes activations of "
                "compressed weights by itself: use --quant-mode weight-only (or static) with --runtime openvino"
            )

    def describe(self, runtime: str) -> dict[str, Any]:
        """The options that shaped a package for ``runtime``, as manifest values."""
        values: dict[str, Any] = {"weights": self.weights}
        if not self.quantized:
            return values
        values.update(mode=self.effective_mode, sym=self.sym)
        if self.effective_mode == "weight-only" and (self.weights == "int4" or runtime == "onnxruntime"):
            values["group_size"] = self.group_size or DEFAULT_GROUP_SIZE
        if self.effective_mode == "weight-only" and runtime == "onnxruntime":
            values["accuracy_level"] = self.accuracy_level
        if self.weights == "int4":
            values.update(ratio=self.ratio, algorithm=list(self.algorithms), head=self.head_weights)
        if self.effective_mode == "static" or (self.data_aware and self.calibration is not None):
            values.update(calibration=str(self.calibration), num_samples=self.num_samples)
        return values
