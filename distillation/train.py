"""``distill``: a student from a causal-LM teacher, on one process or under torch.distributed.

The loop, step by step: draw the step's windows (a function of seed and step only), get the
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

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from edge_sdk.converters.training import learning_rate
from edge_sdk.devices.measure import peak_rss_mb
from edge_sdk.distillation import qat as qat_module
from edge_sdk.distillation.data import TeacherCache, TextWindows, load_windows
from edge_sdk.distillation.losses import cross_entropy, generalized_jsd, heldout_figures, soft_label_kl
from edge_sdk.distillation.options import DistillationOptions
from edge_sdk.distillation.student import check_tokenizers, given_student, load_causal_lm, spaced_layers, student_from_teacher
from edge_sdk.errors import EdgeSDKError, InvalidInputError, OutputExistsError
from edge_sdk.package import check_output_dir, move_into_place, staging_dir, write_atomically

log = logging.getLogger("edge_sdk")

REPORT_FILE = "distill.json"
HELDOUT_FILE = "heldout.txt"  # the held-back text, beside the student: what its packages are measured on
CURVE_FILE = "distill-loss.png"
CHECKPOINT_FILE = "checkpoint.pt"
_CACHE_BATCH = 8  # windows per teacher forward pass while filling the cache


class DistillationInterrupted(EdgeSDKError):
    """The run stopped (Ctrl-C) after writing a resumable checkpoint."""


def checkpoint_dir(output: Path) -> Path:
    return output.with_name(output.name + ".checkpoint")


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


class _Distributed:
    """This process's place in a torchrun launch (rank 0 of 1 when launched plainly).

    Under torchrun the process group is set up and the student wrapped in DDP even for one process
    (``--nproc-per-node 1``), so the distributed path is the one that runs wherever torchrun is used;
    one process per GPU (nccl), any number on CPU (gloo)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1 or "TORCHELASTIC_RUN_ID" in os.environ
        cuda = torch.cuda.is_available()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda and local >= torch.cuda.device_count():
            per_node = os.environ.get("LOCAL_WORLD_SIZE", str(local + 1))
            raise InvalidInputError(f"torchrun started {per_node} processes on this machine but it has "
                                    f"{torch.cuda.device_count()} GPU(s): pass --nproc-per-node "
                                    f"{torch.cuda.device_count()} (one process per GPU), or CUDA_VISIBLE_DEVICES= to train on CPU")
        self.device = torch.device("cuda", local) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.backend = ("nccl" if cuda else "gloo") if self.distributed else None
        if self.distributed:
            import datetime

            import torch.distributed as dist

            if not dist.is_initialized():
                # long enough for rank 0 to fill the teacher cache while the others wait at a barrier
                dist.init_process_group(self.backend, timeout=datetime.timedelta(hours=2))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def reduce(self, loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
        """The loss averaged over processes, and whether any process was asked to stop."""
        if not self.distributed:
            return float(loss.detach()), stop
        import torch.distributed as dist

        values = torch.tensor([float(loss), float(stop)], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return float(values[0]) / self.world, bool(values[1] > 0)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class _StopOnInterrupt:
    """Ctrl-C during training asks the loop to stop at the end of the current step (a checkpoint is
    written there); a second Ctrl-C stops at once. Outside the main thread, Ctrl-C is left alone."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (a checkpoint will be written); Ctrl-C again to stop at once")

    def __enter__(self) -> "_StopOnInterrupt":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _recipe(options: DistillationOptions) -> dict:
    """The options that decide the result (a resumed run must share them)."""
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    for transient in ("save_every", "threads", "exports", "teacher_cache"):
        values.pop(transient)
    values["teacher_outputs"] = "top-k cache" if options.teacher_cache is not None else "on the fly"
    return json.loads(json.dumps(values, sort_keys=True))  # tuples become lists, as a checkpoint reads them back


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
    place = _Distributed()
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


class Run:
    """What every distillation run shares: the training loop, checkpoints, progress and the staged
    write of the student. A task's run (``TextRun`` here, ``whisper.WhisperRun``) sets ``student``,
    ``qat``, ``batches`` (``rows(step, batch_size, seed, rank, world)``) and ``sources`` (data files
    and hashes), and implements ``_loss``, ``_figures``, ``_save_files`` and ``_sections``."""

    qat = None
    alpha = 0.5
    needs_data = True  # False: the run can make its own training data (a UNet's own samples)
    tokens_per_step: int | None = None  # training tokens per step over all processes, where that is meaningful

    def __init__(self, teacher_dir: Path, output: Path, options: DistillationOptions, place: _Distributed,
                 resume: bool, progress: bool):
        from edge_sdk.converters.sources import weights_sha256

        self.teacher_dir, self.output, self.options, self.place = teacher_dir, output, options, place
        self.resume, self.progress = resume, progress
        self.on_step = None
        self.started = time.perf_counter()
        self.teacher_sha256 = weights_sha256(teacher_dir)

    def _refuse(self, kind: str, flags: dict) -> None:
        """One error for the first option given that this kind of student does not take yet."""
        for flag, used in flags.items():
            if used:
                raise InvalidInputError(f"{flag} is not available for {kind} students yet; drop it")

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (step distillation: ``steps`` per round)."""
        return self.options.steps

    def _schedule_step(self, step: int) -> int:
        """Where ``step`` is on the learning-rate schedule (a new round starts it again)."""
        return step

    def _begin_step(self, step: int, optimizer) -> None:
        """Called before each optimizer step (and once with the first step of a resumed run)."""

    def _extra_state(self) -> dict:
        """Tensors a checkpoint must keep beside the student's (step distillation: the round's teacher)."""
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def _loss(self, model, step: int, rows: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def _figures(self) -> dict:
        raise NotImplementedError

    def _save_files(self, staging: Path) -> None:
        raise NotImplementedError

    def _sections(self) -> dict:
        raise NotImplementedError

    def _change(self, initial: dict, final: dict) -> str:
        """One line: how the held-out figures moved (distill.json's ``summary``, the CLI, the plot's title)."""
        return (f"held-out KL to teacher {initial['kl_divergence']:.4f} -> {final['kl_divergence']:.4f}, top-1 "
                f"{initial['top1_agreement']:.1%} -> {final['top1_agreement']:.1%}, perplexity {initial['perplexity']:.2f} -> "
                f"{final['perplexity']:.2f} (teacher {final['teacher_perplexity']:.2f})")

    @contextlib.contextmanager
    def _bar(self, title: str, total: int, fields: dict | None = None):
        if not self.progress:
            yield lambda done, **f: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in (fields or {})]
        columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task(title, total=total, **(fields or {}))
            yield lambda done, **f: bar.update(task, completed=done, **f)

    def execute(self) -> Path:
        options, place = self.options, self.place
        model = self.student
        if place.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(self.student)
        optimizer = torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad], lr=options.learning_rate,
                                      weight_decay=options.weight_decay, betas=(0.9, 0.95))
        initial = self._figures()
        losses, first, seconds_before = [], 0, 0.0
        if self.resume:
            first, losses, seconds_before, initial = self._load_checkpoint(optimizer)
        self.student.train()
        tokens_per_step = options.batch_size * options.sequence_length
        clock = time.perf_counter()
        total = self.total_steps
        with _StopOnInterrupt() as interrupt, self._bar("Distilling", total, {"loss": "-", "tok/s": "-"}) as advance:
            for step in range(first, total):
                self._begin_step(step, optimizer)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(self._schedule_step(step), options)
                rows = self.batches.rows(step, options.batch_size, options.seed, place.rank, place.world)
                torch.manual_seed(options.seed * 1_000_003 + step * 1009 + place.rank)  # dropout: a resumed step draws the same
                loss = self._loss(model, step, rows)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in self.student.parameters() if p.requires_grad], 1.0)
                optimizer.step()
                value, stop = place.reduce(loss, interrupt.requested)
                losses.append(value)
                if not math.isfinite(value):
                    raise InvalidInputError(f"the loss became {value} at step {step}; lower --learning-rate")
                rate = (step + 1 - first) * tokens_per_step / (time.perf_counter() - clock)
                advance(step + 1, loss=f"{value:.3f}", **{"tok/s": f"{rate:,.0f}"})
                if self.on_step is not None and place.main:
                    self.on_step(step, value)
                elapsed = seconds_before + time.perf_counter() - clock
                if stop:
                    self._save_checkpoint(optimizer, step + 1, losses, elapsed, initial)
                    place.barrier()
                    raise DistillationInterrupted(
                        f"interrupted after step {step + 1} of {total}; a checkpoint is in "
                        f"{checkpoint_dir(self.output)}: run the same command with --resume to continue")
                if options.save_every and (step + 1) % options.save_every == 0 and step + 1 < total:
                    self._save_checkpoint(optimizer, step + 1, losses, elapsed, initial)
        training_seconds = seconds_before + time.perf_counter() - clock
        final = self._figures()
        if self.qat:
            qat_module.snap(self.student)
        if place.main:
            self._write_student(initial, final, losses, training_seconds)
            shutil.rmtree(checkpoint_dir(self.output), ignore_errors=True)
        place.barrier()
        return self.output

    def _save_checkpoint(self, optimizer, step: int, losses: list[float], seconds: float, initial: dict) -> None:
        if not self.place.main:
            return
        directory = checkpoint_dir(self.output)
        directory.mkdir(exist_ok=True)
        state = {"step": step, "losses": torch.tensor(losses, dtype=torch.float64), "seconds": seconds,
                 "recipe": json.dumps(self._provenance(), sort_keys=True), "initial": json.dumps(initial),
                 "student": self.student.state_dict(), "optimizer": optimizer.state_dict(), **self._extra_state()}
        write_atomically(directory / CHECKPOINT_FILE, lambda temporary: torch.save(state, temporary))
        log.info("checkpoint at step %d written to %s", step, directory)

    def _provenance(self) -> dict:
        """What a checkpoint must share with the run resuming it: recipe, teacher, data."""
        return {**_recipe(self.options), "teacher_sha256": self.teacher_sha256,
                "data_sha256": [s["sha256"] for s in self.sources]}

    def _load_checkpoint(self, optimizer):
        state = torch.load(checkpoint_dir(self.output) / CHECKPOINT_FILE, map_location=self.place.device, weights_only=True)
        if json.loads(state["recipe"]) != self._provenance():
            saved, now = json.loads(state["recipe"]), self._provenance()
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise InvalidInputError(f"--resume: the checkpoint was made with other options ({', '.join(changed)} differ); "
                                    "run with the same options, or start again without --resume")
        self.student.load_state_dict(state["student"])
        self._load_extra_state(state)
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"]), [float(x) for x in state["losses"]], float(state["seconds"]), json.loads(state["initial"])

    def _write_student(self, initial: dict, final: dict, losses: list[float], seconds: float) -> None:
        staging = staging_dir(self.output)
        options = self.options
        try:
            self._save_files(staging)
            sections = self._sections()  # the task's own: "student", "data", and more about the teacher
            report = {
                **sections,
                "teacher": {"model": str(self.teacher_dir), "weights_sha256": self.teacher_sha256, **sections.get("teacher", {})},
                "recipe": {**_recipe(options), "loss": self._loss_name(), "teacher_outputs":
                           f"top-{options.top_k} cache" if options.teacher_cache else "on the fly"},
                "processes": self.place.world,
                "device": self.place.device.type,
                "backend": self.place.backend,  # the torch.distributed backend under torchrun, else null
                "steps": len(losses),
                "training_seconds": seconds,
                "seconds": time.perf_counter() - self.started,
                "peak_rss_mb": peak_rss_mb(),
                "loss_curve": losses,
                **({"tokens_seen": len(losses) * self.tokens_per_step} if self.tokens_per_step else {}),
                "heldout": {"initial": initial, "final": final},
                "summary": self._change(initial, final),
            }
            (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            _plot_losses(losses, report, staging / CURVE_FILE)
            move_into_place(staging, self.output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _loss_name(self) -> str:
        o = self.options
        if not o.kd:
            return "cross-entropy on the data"
        name = f"T^2 KL(teacher || student) at T={o.temperature:g} + {self.alpha:g} x cross-entropy"
        if o.on_policy:
            name += f"; on {o.on_policy:.0%} of steps generalized JSD (beta {o.beta:g}) on the student's own samples"
        return name


class TextRun(Run):
    """A causal-LM student of a causal-LM teacher."""

    def __init__(self, teacher_dir: Path, output: Path, data: Path, options: DistillationOptions, place: _Distributed,
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


def _plot_losses(losses: list[float], report: dict, path: Path) -> None:
    from edge_sdk.devices.report import pyplot
    from edge_sdk.errors import MissingDependencyError

    try:
        plt = pyplot("plotting the loss curve")
    except MissingDependencyError as e:
        log.warning("%s: no %s", e, path.name)
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(range(1, len(losses) + 1), losses, lw=1, label="loss per step")
    if len(losses) >= 10:
        width = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(width) / width, mode="valid")
        axis.plot(range(width, len(losses) + 1), smooth, lw=2, label=f"mean of {width}")
    axis.set_title(report["summary"], fontsize=8, wrap=True)
    axis.set_xlabel("step")
    axis.set_ylabel(report["recipe"]["loss"][:60], fontsize=8)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)


__all__ = ["distill", "DistillationOptions", "DistillationInterrupted", "replace"]
