"""``distill``: a student from a teacher, on one process or under torch.distributed, and the causal-LM run.

``distill`` picks the run for the teacher's kind (``TextRun`` here; ``whisper.WhisperRun``,
``diffusion.DiffusionRun`` / ``StepDistillRun``) and executes it; the loop they share is
``run.Run``. A causal-LM step: draw the step's windows (a function of seed and step only), get the
teacher's next-token distributions (on the fly, or from the top-k cache), compute the loss
(soft-label KD + alpha x CE; CE only; or, on an on-policy step, the generalized JSD on the
student's own continuations), step AdamW. Under ``torchrun`` (any WORLD_SIZE) the student is
wrapped in DistributedDataParallel (gloo on CPU, nccl on GPUs), each rank trains its share of the
global batch, the teacher is never wrapped nor optimized, and only rank 0 writes.

Checkpoints (``OUTPUT.checkpoint/``, tensors only, read back with ``weights_only=True``) every
``save_every`` steps and on Ctrl-C; ``resume=True`` continues from one to the same result as an
uninterrupted run. The student is written to a staging directory and renamed into place only
when complete.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edge_sdk.distillation import qat as qat_module
from edge_sdk.distillation.data import TeacherCache, TextWindows, load_windows
from edge_sdk.distillation.losses import cross_entropy, generalized_jsd, heldout_figures, soft_label_kl
from edge_sdk.distillation.options import DistillationOptions
from edge_sdk.distillation.run import (CHECKPOINT_FILE, REPORT_FILE, DistillationInterrupted, Distributed, Run,
                                       checkpoint_dir)
from edge_sdk.distillation.student import check_tokenizers, given_student, load_causal_lm, spaced_layers, student_from_teacher
from edge_sdk.errors import InvalidInputError, OutputExistsError
from edge_sdk.package import check_output_dir

log = logging.getLogger("edge_sdk")

HELDOUT_FILE = "heldout.txt"  # the held-back text, beside the student: what its packages are measured on
_CACHE_BATCH = 8  # windows per teacher forward pass while filling the cache


def _check_output(output: Path, overwrite: bool, resume: bool) -> None:
    if not output.parent.is_dir():
        raise OutputExistsError(f"the parent directory of {output} does not exist; create it first")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not output.is_dir() or not (output / REPORT_FILE).is_file():
            raise OutputExistsError(f"{output} exists and is not a student edge-sdk wrote; refusing to replace it, "
                                    "choose another output directory")
        if not overwrite:
            raise OutputExistsError(f"{output} already holds a student; pass --overwrite to replace it")
    if resume and not (checkpoint_dir(output) / CHECKPOINT_FILE).is_file():
        raise InvalidInputError(f"--resume: no checkpoint at {checkpoint_dir(output)}; start without --resume")


def distill(teacher: str | os.PathLike, output: str | os.PathLike, data: str | os.PathLike,
            options: DistillationOptions, *, overwrite: bool = False, resume: bool = False, progress: bool = True,
            on_step=None) -> Path:
    """Distill a student from ``teacher`` (a Hugging Face causal LM directory or hub id) on ``data``
    (a text file or a directory of .txt files) into the Hugging Face directory ``output``.
    ``on_step(step, loss)`` is called after every optimizer step (on rank 0).

    Example::

        from edge_sdk.distillation import DistillationOptions, distill
        distill("out/tiny-lm", "out/student", "corpus.txt", DistillationOptions(keep_layers=2, steps=300))
    """
    output = Path(output).expanduser().absolute()
    place = Distributed()
    try:
        # every rank checks (read-only): a refusal on rank 0 alone would strand the others in a collective
        _check_output(output, overwrite, resume)
        for runtime, weights in options.exports:
            check_output_dir(output.with_name(f"{output.name}-{runtime}-{weights}"), overwrite)
        if options.batch_size % place.world:
            raise InvalidInputError(f"--batch-size {options.batch_size} does not split over {place.world} processes; "
                                    f"give a multiple of {place.world}")
        if options.threads:
            torch.set_num_threads(options.threads)
        teacher_dir = _teacher_path(str(teacher))
        check_tokenizers(teacher_dir, options.student)
        run_class = _run_class(teacher_dir, options)
        if data is None and run_class.needs_data:
            raise InvalidInputError("--data is required: training text (a causal LM) or a directory of audio (Whisper)")
        run = run_class(teacher_dir, output, Path(data) if data is not None else None, options, place, resume,
                        progress and place.main)
        run.on_step = on_step
        run.execute()
    finally:
        place.close()
    if place.main and options.exports:
        export_student(output, teacher_dir, options, overwrite=overwrite, progress=progress)
    return output


def export_student(output: Path, teacher_dir: Path, options: DistillationOptions, overwrite: bool, progress: bool) -> list[Path]:
    """``--export RUNTIME:WEIGHTS``: packages of the student beside it (``OUTPUT-RUNTIME-WEIGHTS``),
    measured against the student's FP32 graph and against the teacher on the held-back text. A
    QAT student is quantized with the grouping and symmetry it was trained with."""
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.quantization import QuantizationOptions

    packages = []
    for runtime, weights in options.exports:
        quantization = {}
        if options.qat and weights == options.qat:
            quantization = {"group_size": options.group_size, "sym": options.sym}
        elif options.qat and weights in ("int8", "int4"):
            log.warning("the student was trained for %s; its %s package is quantized after training", options.qat, weights)
        export_options = ExportOptions(runtime=runtime, quantization=QuantizationOptions(weights=weights, **quantization),
                                       eval_data=output / HELDOUT_FILE, teacher=teacher_dir)
        packages.append(export(output, output.with_name(f"{output.name}-{runtime}-{weights}"), export_options,
                               overwrite=overwrite, progress=progress))
    return packages


class TextRun(Run):
    """A causal-LM student of a causal-LM teacher."""

    def __init__(self, teacher_dir: Path, output: Path, data: Path, options: DistillationOptions, place: Distributed,
                 resume: bool, progress: bool):
        from transformers import AutoTokenizer

        super().__init__(teacher_dir, output, options, place, resume, progress)
        if options.keep_decoder_layers is not None or options.layers_per_block is not None or options.drop_mid_block:
            raise InvalidInputError("--keep-decoder-layers is for Whisper teachers and --layers-per-block / --drop-mid-block "
                                    "for diffusion UNets; a causal LM's student takes --keep-layers N")
        self.tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        self.windows: TextWindows = load_windows(data, self.tokenizer, options.sequence_length, options.heldout_fraction,
                                                 options.eval_data, options.eval_windows)
        self.batches, self.sources = self.windows, self.windows.sources
        self.tokens_per_step = options.batch_size * options.sequence_length
        self.alpha = 0.5 if options.alpha is None else options.alpha
        torch.manual_seed(options.seed)
        self.teacher = load_causal_lm(teacher_dir, "teacher").eval().requires_grad_(False).to(place.device)
        config = self.teacher.config
        if options.teacher_cache is not None and options.top_k > config.vocab_size:
            raise InvalidInputError(f"--top-k {options.top_k} is more than the vocabulary's {config.vocab_size} tokens")
        limit = getattr(config, "max_position_embeddings", None)
        if limit and options.sequence_length > limit:
            raise InvalidInputError(f"--sequence-length {options.sequence_length} is longer than the teacher's "
                                    f"{limit} positions; lower it")
        self.student, self.layers = self._make_student()
        self.student.to(place.device)
        self.qat = qat_module.QATSpec.from_options(options) if options.qat else None
        if self.qat:
            qat_module.attach(self.student, self.qat)
        self.heldout = torch.from_numpy(self.windows.heldout).to(place.device)
        self.teacher_heldout = self._teacher_heldout()
        self.cache = None
        if options.teacher_cache is not None and options.kd:
            self.cache = self._teacher_cache()
            self.cache_arrays = self.cache.open()  # memory maps, opened once
            del self.teacher  # the cache replaces it: only the student stays in memory
            self.teacher = None

    def _make_student(self):
        options, teacher = self.options, self.teacher
        count = teacher.config.num_hidden_layers
        if options.student is not None:
            return given_student(options.student, teacher), None
        layers = list(options.layers) if options.layers is not None else spaced_layers(count, options.keep_layers)
        if options.keep_layers is not None and options.keep_layers > count:
            raise InvalidInputError(f"--keep-layers {options.keep_layers}: the teacher has {count} layers")
        return student_from_teacher(teacher, layers), layers

    @torch.no_grad()
    def _teacher_heldout(self) -> list[torch.Tensor]:
        return [torch.log_softmax(self.teacher(input_ids=window[None]).logits[0, :-1].float(), -1) for window in self.heldout]

    @torch.no_grad()
    def _figures(self) -> dict:
        self.student.eval()
        logits = [self.student(input_ids=window[None]).logits[0, :-1] for window in self.heldout]
        self.student.train()
        return heldout_figures(logits, self.teacher_heldout, [window[1:] for window in self.heldout])

    def _teacher_cache(self) -> TeacherCache:
        options = self.options
        key = {"teacher_sha256": self.teacher_sha256, "data": [s["sha256"] for s in self.windows.sources],
               "sequence_length": options.sequence_length, "top_k": options.top_k, "temperature": options.temperature,
               "windows": len(self.windows.train), "steps": options.steps, "batch_size": options.batch_size,
               "seed": options.seed,
               "heldout_fraction": options.heldout_fraction}
        cache = TeacherCache(options.teacher_cache, key, (len(self.windows.train), options.sequence_length, options.top_k))
        if self.place.main and not cache.ready:
            needed = self.windows.windows_used(options.steps, options.batch_size, options.seed)

            @torch.no_grad()
            def top_k(ids: np.ndarray):
                logits = self.teacher(input_ids=torch.from_numpy(ids).to(self.place.device)).logits.float()
                values, indices = torch.log_softmax(logits / options.temperature, -1).topk(options.top_k, dim=-1)
                return values.cpu().numpy().astype(np.float16), indices.cpu().numpy().astype(np.int32)

            with self._bar("Caching teacher top-k", len(needed)) as advance:
                cache.build(top_k, self.windows.train, needed, _CACHE_BATCH, lambda done, total: advance(done))
        self.place.barrier()
        return cache

    def _loss(self, model, step: int, rows: list[int]) -> torch.Tensor:
        options, device = self.options, self.place.device
        ids = torch.from_numpy(self.windows.train[rows]).to(device)
        rng = np.random.default_rng([options.seed, step, 1])
        if options.on_policy and rng.random() < options.on_policy:
            return self._on_policy_loss(model, ids, step)
        logits = model(input_ids=ids).logits[:, :-1]
        ce = cross_entropy(logits, ids[:, 1:])
        if not options.kd:
            return ce
        if self.cache is not None:
            values, indices = self.cache_arrays
            teacher = (torch.from_numpy(np.asarray(values[rows], np.float32)[:, :-1]).to(device),
                       torch.from_numpy(np.asarray(indices[rows], np.int64)[:, :-1]).to(device))
        else:
            with torch.no_grad():
                teacher = self.teacher(input_ids=ids).logits[:, :-1]
        return soft_label_kl(logits, teacher, options.temperature) + self.alpha * ce

    def _on_policy_loss(self, model, ids: torch.Tensor, step: int) -> torch.Tensor:
        """The student continues each window's first ``prompt_tokens`` tokens by sampling (T = 1);
        the generalized JSD to the teacher on those continuations is the loss (GKD, on-policy)."""
        options = self.options
        student = model.module if hasattr(model, "module") else model
        prompt = ids[:, :options.prompt_tokens]
        new = options.sequence_length - options.prompt_tokens
        torch.manual_seed(hash((options.seed, step, self.place.rank)) % (2**31))
        student.eval()
        with torch.no_grad():
            sampled = student.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                                       top_p=1.0, temperature=1.0, max_new_tokens=new, min_new_tokens=new,
                                       pad_token_id=self.tokenizer.pad_token_id or 0)
            teacher = self.teacher(input_ids=sampled).logits[:, options.prompt_tokens - 1:-1]
        student.train()
        logits = model(input_ids=sampled).logits[:, options.prompt_tokens - 1:-1]
        return generalized_jsd(logits, teacher, options.beta)

    def _save_files(self, staging: Path) -> None:
        from edge_sdk.converters.causal_lm_torch import quiet_transformers

        with quiet_transformers():
            self.student.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
        (staging / HELDOUT_FILE).write_text(
            "\n".join(self.tokenizer.decode(w, skip_special_tokens=True) for w in self.windows.heldout), encoding="utf-8")

    def _sections(self) -> dict:
        from transformers import AutoConfig

        options = self.options
        return {
            "teacher": {"layers": AutoConfig.from_pretrained(self.teacher_dir).num_hidden_layers},
            "student": {"layers_kept": self.layers, "num_layers": self.student.config.num_hidden_layers,
                        "parameters": sum(p.numel() for p in self.student.parameters()),
                        "qat": self.qat.as_dict() if self.qat else None},
            "data": {"files": self.sources, "training_windows": len(self.windows.train),
                     "heldout_windows": len(self.windows.heldout), "sequence_length": options.sequence_length},
        }


def _teacher_path(teacher: str) -> Path:
    """The teacher's local path, absolute (distill.json names it for later exports): a Hugging Face
    directory or hub snapshot, or a Whisper checkpoint (OpenAI .pt, CTranslate2 directory)."""
    from edge_sdk.converters.sources import resolve_model_dir
    from edge_sdk.converters.whisper_sources import whisper_source_kind

    path = Path(teacher).expanduser()
    if whisper_source_kind(path) is not None or (path / "model_index.json").is_file():
        return path.absolute()
    return resolve_model_dir(teacher).absolute()


def teacher_kind(teacher_dir: Path) -> str:
    """"speech" (a Whisper model: Hugging Face, OpenAI .pt, CTranslate2), "images" (a diffusion
    UNet: a diffusers pipeline or UNet directory) or "text" (a causal LM)."""
    from edge_sdk.converters.whisper_sources import whisper_source_kind

    teacher_dir = Path(teacher_dir)
    try:
        config = json.loads((teacher_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if config.get("model_type") == "whisper" or whisper_source_kind(teacher_dir) is not None:
        return "speech"
    if (teacher_dir / "model_index.json").is_file() or str(config.get("_class_name") or "").startswith("UNet"):
        return "images"
    return "text"


def _run_class(teacher_dir: Path, options: DistillationOptions) -> type[Run]:
    """The run for the teacher's kind (block removal or step distillation for a diffusion UNet)."""
    kind = teacher_kind(teacher_dir)
    if kind == "speech":
        from edge_sdk.distillation.whisper import WhisperRun

        return WhisperRun
    if kind == "images":
        from edge_sdk.distillation.diffusion import DiffusionRun, StepDistillRun

        return StepDistillRun if options.step_distill else DiffusionRun
    if options.step_distill:
        raise InvalidInputError(f"--step-distill halves a diffusion model's sampling steps; {teacher_dir} is not a diffusion UNet")
    return TextRun


__all__ = ["distill", "DistillationOptions", "DistillationInterrupted", "replace"]
