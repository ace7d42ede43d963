"""The options of a distillation run, validated in one place. Torch-free: the CLI reads them for its help.

Words as TRL and distil-whisper use them: teacher, student, temperature, on-policy, beta, QAT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_sdk.errors import InvalidInputError
from edge_sdk.quantization import MIN_GROUP_SIZE, PER_CHANNEL, RUNTIMES, WEIGHTS

QAT_WEIGHTS = ("int8", "int4")
MAX_QAT_GROUP = 256  # the widest block ONNX Runtime's blockwise quantizer (MLAS) accepts


@dataclass(frozen=True)
class DistillationOptions:
    """How a student is made and trained. The defaults work on the small models tests and samples train."""

    # the student
    keep_layers: int | None = None  # keep N teacher layers, maximally spaced, first and last included
    layers: tuple[int, ...] | None = None  # or exactly these teacher layers (0-based)
    student: Path | None = None  # or this student (a Hugging Face directory, or a config.json to build from)
    keep_decoder_layers: int | None = None  # Whisper: keep the encoder (frozen) and N decoder layers, maximally spaced
    wer_threshold: float = 0.10  # Whisper: drop utterances whose pseudo-label's WER against a given transcript is above this
    layers_per_block: int | None = None  # diffusion UNet: resnet layers per block the student keeps (fewer than the teacher's)
    drop_mid_block: bool = False  # diffusion UNet: the student has no mid block
    denoise_weight: float = 1.0  # diffusion: weight of the denoising loss on the data (the task loss)
    output_weight: float = 1.0  # diffusion: weight of output KD (the student's noise prediction vs the teacher's)
    feature_weight: float = 1.0  # diffusion: weight of feature KD (each down/up block's output vs the teacher's)
    teacher_samples: int = 256  # diffusion without --data: images the teacher samples once to train on
    step_distill: int = 0  # diffusion: rounds of progressive distillation, each halving the DDIM steps (student = teacher)
    teacher_steps: int | None = None  # step distillation: the teacher's DDIM steps (None: what it was distilled for, else 64)
    # the loss
    temperature: float = 2.0  # softens both distributions in the KL term; the KL is scaled by T^2 (Hinton)
    alpha: float | None = None  # weight of the cross-entropy beside the KL (None: 0.5 text, 0.8 Whisper as distil-whisper)
    kd: bool = True  # False: cross-entropy only (the baseline a distilled student must beat)
    on_policy: float = 0.0  # share of steps trained on continuations the student samples itself (GKD's lambda)
    beta: float = 0.5  # on-policy loss: generalized JSD mixture; 0 ~ forward KL(teacher||student), 1 ~ reverse KL
    prompt_tokens: int = 16  # on-policy: tokens of each data window kept as the prompt the student continues
    # teacher outputs
    teacher_cache: Path | None = None  # cache the teacher's top-k log-probabilities here once; the teacher then leaves memory
    top_k: int = 64  # log-probabilities per position kept in the teacher cache (fewer: a coarser teacher; 16 of 512 measurably hurt)
    # training
    steps: int = 200  # optimizer steps
    batch_size: int = 8  # sequences per step, over all processes (the global batch)
    sequence_length: int = 128  # tokens per sequence
    learning_rate: float = 1e-3  # peak AdamW learning rate (linear warm-up, cosine decay to a tenth)
    warmup_steps: int = 10
    weight_decay: float = 0.0
    seed: int = 0  # data order, student sampling
    heldout_fraction: float = 0.05  # tail of the data held back for the held-out figures (when no eval_data)
    eval_data: Path | None = None  # held-back text for the figures in distill.json (instead of the tail)
    eval_windows: int = 8  # held-out windows of sequence_length tokens measured
    save_every: int = 100  # write a resumable checkpoint every N steps (0: only when interrupted)
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    # quantization-aware distillation
    qat: str | None = None  # int8 | int4: train with the exporter's own weight quantization simulated
    group_size: int | None = None  # QAT: weights per scale along input channels, as export's --group-size [128]
    sym: bool = False  # QAT: symmetric quantization, as export's --sym
    # chained exports: (runtime, weights) pairs, each written beside the student as OUTPUT-RUNTIME-WEIGHTS
    exports: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self):
        chosen = [name for name, value in (("--keep-layers", self.keep_layers), ("--layers", self.layers),
                                          ("--student", self.student), ("--keep-decoder-layers", self.keep_decoder_layers),
                                          ("--layers-per-block / --drop-mid-block",
                                           True if self.layers_per_block is not None or self.drop_mid_block else None),
                                          ("--step-distill", True if self.step_distill else None))
                  if value is not None]
        if len(chosen) > 1:
            raise InvalidInputError(f"{' and '.join(chosen)} both choose the student; pass one of them")
        if not chosen:
            raise InvalidInputError("choose the student: --keep-layers N (spaced teacher layers), --layers 0,3,7, "
                                    "or --student DIR_OR_CONFIG (Whisper teachers: --keep-decoder-layers N; diffusion UNets: "
                                    "--layers-per-block N and/or --drop-mid-block, or --step-distill ROUNDS)")
        if self.layers_per_block is not None and self.layers_per_block < 1:
            raise InvalidInputError(f"--layers-per-block must be >= 1, got {self.layers_per_block}")
        if min(self.denoise_weight, self.output_weight, self.feature_weight) < 0 or self.teacher_samples < 1:
            raise InvalidInputError("--denoise-weight, --output-weight and --feature-weight must be >= 0, --teacher-samples >= 1")
        if self.step_distill < 0 or self.step_distill > 8:
            raise InvalidInputError(f"--step-distill is a number of rounds from 1 to 8, got {self.step_distill}")
        if self.teacher_steps is not None:
            if not self.step_distill:
                raise InvalidInputError("--teacher-steps is the DDIM step count step distillation halves; add --step-distill ROUNDS")
            if self.teacher_steps < 2 or self.teacher_steps % (2**self.step_distill):
                raise InvalidInputError(f"--teacher-steps {self.teacher_steps} does not halve {self.step_distill} time(s); give a "
                                        f"multiple of {2**self.step_distill} (e.g. {2**self.step_distill * 16})")
        if self.keep_decoder_layers is not None and self.keep_decoder_layers < 1:
            raise InvalidInputError(f"--keep-decoder-layers must be >= 1, got {self.keep_decoder_layers}")
        if not 0 <= self.wer_threshold <= 1:
            raise InvalidInputError(f"--wer-threshold is a share in [0, 1] (0.1 = 10%), got {self.wer_threshold}")
        if self.keep_layers is not None and self.keep_layers < 1:
            raise InvalidInputError(f"--keep-layers must be >= 1, got {self.keep_layers}")
        if self.layers is not None:
            if not self.layers:
                raise InvalidInputError("--layers is empty; give teacher layer indices like 0,3,7")
            if len(set(self.layers)) != len(self.layers) or any(i < 0 for i in self.layers):
                raise InvalidInputError(f"--layers must be distinct indices >= 0, got {','.join(map(str, self.layers))}")
        for name, value, low in (("steps", self.steps, 1), ("batch-size", self.batch_size, 1),
                                 ("sequence-length", self.sequence_length, 2), ("top-k", self.top_k, 1),
                                 ("eval-windows", self.eval_windows, 1), ("save-every", self.save_every, 0),
                                 ("warmup-steps", self.warmup_steps, 0), ("prompt-tokens", self.prompt_tokens, 1)):
            if value < low:
                raise InvalidInputError(f"--{name} must be >= {low}, got {value}")
        if self.seed < 0:
            raise InvalidInputError(f"--seed must be >= 0, got {self.seed}")
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"--threads must be >= 1, got {self.threads}")
        if self.on_policy and self.prompt_tokens >= self.sequence_length:
            raise InvalidInputError(f"--prompt-tokens ({self.prompt_tokens}) must be below --sequence-length "
                                    f"({self.sequence_length}): the student continues the prompt to a full sequence")
        if not self.temperature > 0:
            raise InvalidInputError(f"--temperature must be > 0, got {self.temperature}")
        if self.alpha is not None and self.alpha < 0:
            raise InvalidInputError(f"--alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.on_policy <= 1:
            raise InvalidInputError(f"--on-policy is a share of steps in [0, 1], got {self.on_policy}")
        if not 0 <= self.beta <= 1:
            raise InvalidInputError(f"--beta must be in [0, 1], got {self.beta}")
        if not self.learning_rate > 0:
            raise InvalidInputError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if not 0 < self.heldout_fraction < 1:
            raise InvalidInputError(f"--heldout-fraction must be in (0, 1), got {self.heldout_fraction}")
        if not self.kd and self.on_policy:
            raise InvalidInputError("--on-policy scores the student's samples with the teacher; it cannot run with --no-kd")
        if self.teacher_cache is not None and self.on_policy:
            raise InvalidInputError("--on-policy needs the teacher in memory to score the student's own samples; "
                                    "drop --teacher-cache (or --on-policy)")
        if self.qat is not None and self.qat not in QAT_WEIGHTS:
            raise InvalidInputError(f"unknown --qat '{self.qat}'; valid: {', '.join(QAT_WEIGHTS)}")
        if self.qat is None and (self.group_size is not None or self.sym):
            raise InvalidInputError("--group-size and --sym shape quantization-aware training; add --qat int8|int4")
        if self.group_size is not None and self.group_size != PER_CHANNEL and (
                self.group_size < MIN_GROUP_SIZE or self.group_size > MAX_QAT_GROUP or self.group_size & (self.group_size - 1)):
            raise InvalidInputError(f"--group-size {self.group_size}: QAT takes a power of two from {MIN_GROUP_SIZE} to "
                                    f"{MAX_QAT_GROUP} (the blocks ONNX Runtime's MatMulNBits quantizer makes), or -1 for "
                                    "per-channel")
        if not self.kd and self.teacher_cache is not None:
            raise InvalidInputError("--ce-only trains without the teacher; drop --teacher-cache")
        for runtime, weights in self.exports:
            if runtime not in RUNTIMES or weights not in WEIGHTS:
                raise InvalidInputError(f"--export {runtime}:{weights}: want RUNTIME:WEIGHTS with RUNTIME one of "
                                        f"{', '.join(RUNTIMES)} and WEIGHTS one of {', '.join(WEIGHTS)}")


def parse_export(value: str) -> tuple[str, str]:
    """``"onnxruntime:int4"`` -> ("onnxruntime", "int4"); a bare precision means ONNX Runtime."""
    runtime, _, weights = value.rpartition(":")
    return (runtime or "onnxruntime", weights)


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """``"0,3,7"`` -> (0, 3, 7)."""
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise InvalidInputError(f"--layers wants comma-separated layer indices like 0,3,7, got {value!r}") from None
