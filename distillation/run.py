"""What every distillation run shares: the training loop, its processes under torchrun, Ctrl-C, checkpoints and the staged write of the student.

A task's run (``train.TextRun``, ``whisper.WhisperRun``, ``diffusion.DiffusionRun``) subclasses
``Run``; ``train.distill`` picks the run for the teacher and executes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from edge_sdk.converters.training import learning_rate
from edge_sdk.devices.measure import peak_rss_mb
from edge_sdk.distillation import qat as qat_module
from edge_sdk.distillation.options import DistillationOptions
from edge_sdk.errors import EdgeSDKError, InvalidInputError
from edge_sdk.package import staging_dir, move_into_place, write_atomically

log = logging.getLogger("edge_sdk")

REPORT_FILE = "distill.json"
CURVE_FILE = "distill-loss.png"
CHECKPOINT_FILE = "checkpoint.pt"


class DistillationInterrupted(EdgeSDKError):
    """The run stopped (Ctrl-C) after writing a resumable checkpoint."""


def checkpoint_dir(output: Path) -> Path:
    return output.with_name(output.name + ".checkpoint")


class Distributed:
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


def recipe(options: DistillationOptions) -> dict:
    """The options that decide the result (a resumed run must share them)."""
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    for transient in ("save_every", "threads", "exports", "teacher_cache"):
        values.pop(transient)
    values["teacher_outputs"] = "top-k cache" if options.teacher_cache is not None else "on the fly"
    return json.loads(json.dumps(values, sort_keys=True))  # tuples become lists, as a checkpoint reads them back


class Run:
    """What every distillation run shares: the training loop, checkpoints, progress and the staged
    write of the student. A task's run (``TextRun`` here, ``whisper.WhisperRun``) sets ``student``,
    ``qat``, ``batches`` (``rows(step, batch_size, seed, rank, world)``) and ``sources`` (data files
    and hashes), and implements ``_loss``, ``_figures``, ``_save_files`` and ``_sections``."""

    qat = None
    alpha = 0.5
    needs_data = True  # False: the run can make its own training data (a UNet's own samples)
    tokens_per_step: int | None = None  # training tokens per step over all processes, where that is meaningful

    def __init__(self, teacher_dir: Path, output: Path, options: DistillationOptions, place: Distributed,
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
        return {**recipe(self.options), "teacher_sha256": self.teacher_sha256,
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
                "recipe": {**recipe(options), "loss": self._loss_name(), "teacher_outputs":
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
