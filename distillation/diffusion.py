"""Diffusion students by block removal (BK-SDM's recipe) on the distillation loop of ``run.py``.

A diffusion model's cost is the UNet times the steps. The student is the teacher's ``UNet2DModel``
with fewer resnet (and attention) layers per block (``layers_per_block``) and, optionally, no mid
block; the layers it keeps start as the teacher's (down block j from the teacher's j; an up block's
last layer, which takes the block's skip from below, from the teacher's last). Loss, as BK-SDM:
denoising MSE + output KD (the student's noise prediction against the teacher's on the same noisy
input and timestep) + feature KD (each down and up block's output against the teacher's), weighted
by ``denoise_weight``, ``output_weight`` and ``feature_weight`` (1.0 each).

Training images come from ``--data IMAGE_DIR`` (at the model's size) or, without one, from the
teacher itself: ``teacher_samples`` images sampled once with DDIM (data-free distillation).

Step distillation (``StepDistillRun``, ``--step-distill ROUNDS``) is progressive distillation
(Salimans & Ho, 2022): each round's student starts as its teacher (the previous round's student;
first the given model) and learns to take in one DDIM step what its teacher takes in two, so
after R rounds it samples in ``teacher_steps / 2**R`` steps. The step count it was trained for is
recorded in its scheduler config (``distilled_steps``), which ``sample`` then uses by default.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_sdk.distillation.data import Items
from edge_sdk.distillation.options import DistillationOptions
from edge_sdk.distillation.run import Run
from edge_sdk.errors import InvalidInputError

log = logging.getLogger("edge_sdk")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_SAMPLING_STEPS = 25  # DDIM steps of the teacher's own samples (data-free)
_HELDOUT = 32  # fixed (image, timestep, noise) triples the held-out figures use
_REFERENCE_IMAGES = 16  # step distillation: samples from fixed noise compared with the teacher's (PSNR)
DEFAULT_TEACHER_STEPS = 64  # step distillation: the teacher's DDIM steps when it records none
DISTILLED_STEPS = "distilled_steps"  # scheduler config key: the DDIM steps a step-distilled model was trained for
_BLOCK_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")


def unet_teacher(path: Path):
    """(UNet2DModel, scheduler config) of a diffusers source, or a one-line refusal."""
    from edge_sdk.converters.diffusion import diffusion_source
    from edge_sdk.errors import ModelLoadError

    for config in (Path(path) / "unet" / "config.json", Path(path) / "config.json"):
        try:
            conditional = json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "UNet2DConditionModel"
        except (OSError, ValueError, AttributeError):
            continue
        if conditional:
            raise InvalidInputError(f"{path} holds a UNet2DConditionModel (text-to-image); edge-sdk distill takes "
                                    "unconditional UNet2DModel teachers so far")
        break
    try:
        found = diffusion_source(Path(path))
    except ModelLoadError as e:
        raise InvalidInputError(f"{e}; edge-sdk distill takes unconditional UNet2DModel teachers") from None
    if found is None:
        raise InvalidInputError(f"{path} is not a diffusers UNet2DModel source (a pipeline directory or a unet/ directory)")
    from diffusers import UNet2DModel

    unet_dir, scheduler_file = found
    teacher = UNet2DModel.from_pretrained(unet_dir).eval().requires_grad_(False)
    return teacher, json.loads(scheduler_file.read_text(encoding="utf-8"))


def _teacher_name(name: str, layers: int, teacher_layers: int) -> str:
    """The teacher tensor a student tensor starts from."""
    match = _BLOCK_LAYER.match(name)
    if not match:
        return name
    side, block, kind, index, rest = match.groups()
    index = int(index)
    if side == "up_blocks" and index == layers:  # an up block's last layer takes the skip from below
        index = teacher_layers
    return f"{side}.{block}.{kind}.{index}.{rest}"


def block_removed_student(teacher, layers_per_block: int | None, drop_mid_block: bool):
    from diffusers import UNet2DModel

    config = dict(teacher.config)
    teacher_layers = int(config["layers_per_block"])
    layers = teacher_layers if layers_per_block is None else layers_per_block
    if not 1 <= layers <= teacher_layers:
        raise InvalidInputError(f"--layers-per-block {layers}: the teacher has {teacher_layers} per block; give 1 to "
                                f"{teacher_layers} (fewer than the teacher's to remove blocks)")
    if layers == teacher_layers and not drop_mid_block:
        raise InvalidInputError(f"--layers-per-block {layers} is the teacher's own: give fewer, or --drop-mid-block")
    config["layers_per_block"] = layers
    if drop_mid_block:
        config["mid_block_type"] = None
    student = UNet2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    source = teacher.state_dict()
    copied = 0
    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            origin = _teacher_name(name, layers, teacher_layers)
            if origin in source and source[origin].shape == tensor.shape:
                tensor.copy_(source[origin])
                copied += 1
    return student, {"layers_per_block": layers, "teacher_layers_per_block": teacher_layers,
                     "mid_block": not drop_mid_block, "tensors_from_teacher": copied, "tensors": len(student.state_dict())}


def _read_images(directory: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise InvalidInputError(f"--data {directory}: a UNet teacher takes a directory of images (or no --data: its own samples)")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidInputError(f"{directory} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path in files:
        with Image.open(path) as image:
            if image.size != (size, size):
                raise InvalidInputError(f"{path} is {image.size[0]}x{image.size[1]}; the model makes {size}x{size} images")
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"), np.float32) / 127.5 - 1
        images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return np.stack(images)


class DiffusionRun(Run):
    """A block-removed UNet student of a UNet teacher."""

    needs_data = False  # without --data it trains on the teacher's own samples

    def __init__(self, teacher_dir: Path, output: Path, data, options, place, resume: bool, progress: bool):
        super().__init__(teacher_dir, output, options, place, resume, progress)
        if options.layers_per_block is None and not options.drop_mid_block and not options.step_distill:
            raise InvalidInputError(f"{teacher_dir} is a diffusion UNet: choose its student with --layers-per-block N "
                                    "and/or --drop-mid-block, or --step-distill ROUNDS")
        self._refuse("diffusion", {"--qat": options.qat, "--teacher-cache": options.teacher_cache, "--on-policy": options.on_policy})
        self.teacher, self.scheduler_config = unet_teacher(teacher_dir)
        self.teacher.to(place.device)
        torch.manual_seed(options.seed)
        self.student, self.plan = self._make_student()
        self.student.to(place.device)
        config = self.teacher.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        if data is not None and str(data) != "":
            self.images = _read_images(Path(data), size, config.in_channels)
            self.sources = [{"path": str(Path(data).absolute()), "images": len(self.images)}]
        else:
            self.images = self._teacher_samples(options.teacher_samples)
            self.sources = [{"path": "the teacher's own samples", "images": len(self.images), "ddim_steps": _SAMPLING_STEPS}]
        # what a checkpoint is resumed on must be the same pixels (the teacher's samples: the same seed and teacher)
        self.sources[0]["sha256"] = hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()
        self.batches = Items(len(self.images))
        alphas = np.cumprod(1 - self._betas())
        self.alphas = torch.tensor(alphas, dtype=torch.float32, device=place.device)
        self.heldout = self._draw(np.random.default_rng([options.seed, 999_999]), list(range(len(self.images)))[:_HELDOUT])

    def _make_student(self):
        return block_removed_student(self.teacher, self.options.layers_per_block, self.options.drop_mid_block)

    def _betas(self) -> np.ndarray:
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(self.scheduler_config)
        return scheduler.betas.numpy().astype(np.float64)

    @torch.no_grad()
    def _teacher_samples(self, count: int) -> np.ndarray:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(_SAMPLING_STEPS)
        config = self.teacher.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        generator = torch.Generator().manual_seed(self.options.seed)
        images = []
        with self._bar("Sampling the teacher (data-free)", count) as advance:
            for start in range(0, count, 16):
                x = torch.randn((min(16, count - start), config.in_channels, size, size), generator=generator)
                x = x.to(self.place.device)
                for t in scheduler.timesteps:
                    x = scheduler.step(self.teacher(x, t).sample, t, x).prev_sample
                images.append(x.clamp(-1, 1).cpu().numpy())
                advance(start + len(x))
        return np.concatenate(images)

    def _draw(self, rng: np.random.Generator, rows: list[int]):
        x0 = torch.from_numpy(self.images[rows]).to(self.place.device)
        t = torch.from_numpy(rng.integers(0, len(self.alphas), size=len(rows))).to(self.place.device)
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(self.place.device)
        a = self.alphas[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise

    @staticmethod
    def _with_features(model, unet, sample, t):
        """``model``'s noise prediction and the output of each down and up block of ``unet`` (the model
        itself, or the one a DistributedDataParallel wraps) for feature KD."""
        features = []
        hooks = [block.register_forward_hook(lambda module, args, out: features.append(out[0] if isinstance(out, tuple) else out))
                 for block in [*unet.down_blocks, *unet.up_blocks]]
        try:
            prediction = model(sample, t).sample
        finally:
            for hook in hooks:
                hook.remove()
        return prediction, features

    def _loss(self, model, step: int, rows: list[int]) -> torch.Tensor:
        options = self.options
        noisy, t, noise = self._draw(np.random.default_rng([options.seed, step, self.place.rank]), rows)
        prediction, features = self._with_features(model, getattr(model, "module", model), noisy, t)
        loss = F.mse_loss(prediction, noise)
        if not options.kd:
            return loss
        loss = options.denoise_weight * loss
        with torch.no_grad():
            teacher, teacher_features = self._with_features(self.teacher, self.teacher, noisy, t)
        features_kd = sum(F.mse_loss(s, k) for s, k in zip(features, teacher_features))
        return loss + options.output_weight * F.mse_loss(prediction, teacher) + options.feature_weight * features_kd

    @torch.no_grad()
    def _figures(self) -> dict:
        self.student.eval()
        noisy, t, noise = self.heldout
        prediction, teacher = self.student(noisy, t).sample, self.teacher(noisy, t).sample
        self.student.train()
        return {"output_kd_mse": float(F.mse_loss(prediction, teacher)), "denoising_mse": float(F.mse_loss(prediction, noise)),
                "teacher_denoising_mse": float(F.mse_loss(teacher, noise)), "samples": len(t)}

    def _change(self, initial: dict, final: dict) -> str:
        return (f"held-out output KD (MSE to the teacher's noise prediction) {initial['output_kd_mse']:.4f} -> "
                f"{final['output_kd_mse']:.4f}, denoising MSE {initial['denoising_mse']:.4f} -> {final['denoising_mse']:.4f} "
                f"(teacher {final['teacher_denoising_mse']:.4f})")

    def _loss_name(self) -> str:
        o = self.options
        if not o.kd:
            return "denoising MSE on the data"
        return (f"{o.denoise_weight:g} x denoising MSE + {o.output_weight:g} x output KD (MSE to the teacher's prediction) "
                f"+ {o.feature_weight:g} x feature KD (MSE per down/up block)")

    def _save_files(self, staging: Path) -> None:
        from diffusers import DDPMPipeline, DDPMScheduler

        DDPMPipeline(unet=self.student, scheduler=DDPMScheduler.from_config(self.scheduler_config)).save_pretrained(staging)

    def _sections(self) -> dict:
        count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
        return {"teacher": {"parameters": count(self.teacher)},
                "student": {**self.plan, "parameters": count(self.student)},
                "data": {"files": self.sources}}


class StepDistillRun(DiffusionRun):
    """Progressive distillation: ``step_distill`` rounds of ``steps`` optimizer steps, each halving
    the DDIM steps. In round r the student (N = teacher_steps / 2**(r+1) steps) sees a clean image
    noised to a timestep t of its N-step grid; its teacher takes two DDIM steps from there (t ->
    t - T/2N -> t - T/N); the student learns to land on the same point in one step,
    and the loss is the squared distance between where the student's one step lands (taken as the
    runtime's sampler takes it) and where the teacher's two land. At the grid's first timestep the input is pure noise, as the
    sampler feeds it, and the target is the teacher's whole way from its own first timestep: with
    diffusers' "leading" spacing twice the steps start higher, and training that step on noised
    images instead left the student hardly closer to the teacher (a small digits model, 100 steps:
    +0.5 dB PSNR to the teacher's samples against +8 dB)."""

    def _make_student(self):
        from edge_sdk.runtimes.schedulers import Scheduler

        options = self.options  # block removal and step distillation are two runs: the first's student is the second's teacher
        defaults = DistillationOptions.__dataclass_fields__
        self._refuse("step-distilled", {"--ce-only": not options.kd, **{
            f"--{name.replace('_', '-')} (block removal's loss)": getattr(options, name) != defaults[name].default
            for name in ("denoise_weight", "output_weight", "feature_weight")}})
        recorded = self.scheduler_config.get(DISTILLED_STEPS)
        self.teacher_steps = int(options.teacher_steps or recorded or DEFAULT_TEACHER_STEPS)
        rounds = options.step_distill
        if self.teacher_steps % 2**rounds or self.teacher_steps < 2**rounds:
            raise InvalidInputError(f"the teacher samples in {self.teacher_steps} steps, which do not halve {rounds} time(s); "
                                    f"give --teacher-steps, a multiple of {2**rounds}")
        self.sampler = Scheduler.from_config(self.scheduler_config, "ddim")
        cumprod = self.sampler.alphas_cumprod
        final = 1.0 if self.scheduler_config.get("set_alpha_to_one", True) else float(cumprod[0])
        # alphas_cumprod by timestep, and after them the end of sampling's (index -1 of a negative timestep)
        self._alphas = torch.from_numpy(np.append(cumprod, np.float32(final))).to(self.place.device)
        self.sampler.timesteps(self.teacher_steps)  # validates against the model's training timesteps
        self.round, self.round_teacher = 0, self.teacher
        student = copy.deepcopy(self.teacher).requires_grad_(True).train()
        self.final_steps = self.teacher_steps // 2**rounds
        return student, {"rounds": rounds, "teacher_steps": self.teacher_steps, "steps": self.final_steps,
                         "layers_per_block": int(student.config.layers_per_block)}

    @property
    def total_steps(self) -> int:
        return self.options.steps * self.options.step_distill

    def _schedule_step(self, step: int) -> int:
        return step % self.options.steps

    def _begin_step(self, step: int, optimizer) -> None:
        current = step // self.options.steps
        if current > 0 and step % self.options.steps == 0 and current != getattr(self, "_switched", 0):
            # a new round: the student so far becomes the teacher, and a fresh optimizer starts
            self.round_teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
            optimizer.state.clear()
            self._switched = current
            log.info("step distillation round %d of %d: %d -> %d steps", current + 1, self.options.step_distill,
                     self.teacher_steps // 2**current, self.teacher_steps // 2 ** (current + 1))
        self.round = current

    def _extra_state(self) -> dict:
        return {"round_teacher": self.round_teacher.state_dict()} if self.round > 0 else {}

    def _load_extra_state(self, state: dict) -> None:
        if "round_teacher" in state:
            self.round_teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
            self.round_teacher.load_state_dict(state["round_teacher"])
            # the round of the last step taken: at a round's end _begin_step then starts the next one
            self.round = self._switched = (int(state["step"]) - 1) // self.options.steps

    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod at timesteps ``t``, where a negative one is the end of sampling."""
        return self._alphas[torch.where(t >= 0, t, -1)].view(-1, 1, 1, 1)

    def _ddim(self, output: torch.Tensor, t: torch.Tensor, after: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step from ``z`` at ``t`` to ``after``, as the runtime's sampler takes it."""
        a = self._alpha(t)
        prediction = self.scheduler_config.get("prediction_type", "epsilon")
        if prediction == "epsilon":
            x0, eps = (z - (1 - a).sqrt() * output) / a.sqrt(), output
        elif prediction == "sample":
            x0, eps = output, (z - a.sqrt() * output) / (1 - a).sqrt()
        else:  # v_prediction
            x0, eps = a.sqrt() * z - (1 - a).sqrt() * output, a.sqrt() * output + (1 - a).sqrt() * z
        if self.scheduler_config.get("clip_sample", True):
            limit = float(self.scheduler_config.get("clip_sample_range", 1.0))
            x0 = x0.clamp(-limit, limit)
        a_after = self._alpha(after)
        return a_after.sqrt() * x0 + (1 - a_after).sqrt() * eps

    def _walk(self, z: torch.Tensor, timesteps: np.ndarray, end: int) -> torch.Tensor:
        """The round's teacher stepping ``z`` (all at ``timesteps[0]``) through ``timesteps`` to ``end``."""
        for index, t in enumerate(timesteps):
            after = int(timesteps[index + 1]) if index + 1 < len(timesteps) else end
            now = torch.full((len(z),), int(t), device=z.device)
            z = self._ddim(self.round_teacher(z, now).sample, now, torch.full_like(now, after), z)
        return z

    def _loss(self, model, step: int, rows: list[int]) -> torch.Tensor:
        options, device = self.options, self.place.device
        steps = self.teacher_steps // 2 ** (step // options.steps + 1)  # the student's, this round
        grid, teacher_grid = self.sampler.timesteps(steps), self.sampler.timesteps(2 * steps)
        total = self.sampler.train_steps
        rng = np.random.default_rng([options.seed, step, self.place.rank])
        t = torch.from_numpy(grid[rng.integers(0, len(grid), size=len(rows))]).to(device)
        middle, after = t - total // (2 * steps), t - total // steps
        x0 = torch.from_numpy(self.images[rows]).to(device)
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(device)
        a = self._alpha(t)
        z = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.no_grad():
            halfway = self._ddim(self.round_teacher(z, t).sample, t, middle, z)
            second = self._ddim(self.round_teacher(halfway, middle.clamp(min=0)).sample, middle, after, halfway)
            reached = torch.where((middle >= 0).view(-1, 1, 1, 1), second, halfway)  # the last step: one teacher step ends it
            # Sampling starts from pure noise at the grid's first timestep. The teacher, at twice the
            # steps, starts from the same noise higher up ("leading" spacing puts the first timestep
            # T/N below the top, not T/2N): the student's first step learns the teacher's whole way
            # from its start to the student's second timestep.
            first = t == int(grid[0])
            if first.any():
                z[first] = noise[first]
                top = int(after[first][0])
                reached[first] = self._walk(noise[first], teacher_grid[teacher_grid > top], top)
        # The loss is on where the student's one step lands, taken as the sampler takes it (clipping
        # included), against where the teacher's two land, in clean-image units (divided by alphas_cumprod there).
        # Solving for the prediction that lands there and regressing on it fails when the sampler
        # clips the predicted clean image: the solved clean images of the first steps lie far outside
        # [-1, 1] (up to 3 on the digits model), no clipped step reaches them, and training made the
        # student worse than the teacher at the same steps (32 -> 23 dB PSNR to its samples).
        landed = self._ddim(model(z, t).sample, t, after, z)
        error = (landed - reached).pow(2).mean(dim=(1, 2, 3))
        return (error / self._alpha(after).view(-1)).mean()

    @torch.no_grad()
    def _sample(self, model, steps: int, noise: np.ndarray) -> np.ndarray:
        """uint8 images ``model`` samples from ``noise`` in ``steps`` DDIM steps with the runtime's sampler."""
        device = self.place.device

        def unet(x: np.ndarray, t: int) -> np.ndarray:
            return model(torch.from_numpy(x).to(device), t).sample.float().cpu().numpy()

        x = self.sampler.denoise(unet, noise.copy(), steps)
        return (np.clip(x / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)

    def _figures(self) -> dict:
        from edge_sdk.evaluation import psnr

        if not hasattr(self, "reference"):
            config = self.teacher.config
            size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
            self.noise = np.random.default_rng([self.options.seed, 424_242]).standard_normal(
                (_REFERENCE_IMAGES, config.in_channels, size, size)).astype(np.float32)
            self.reference = self._sample(self.teacher, self.teacher_steps, self.noise)
            self.teacher_short = self._sample(self.teacher, self.final_steps, self.noise)
        self.student.eval()
        images = self._sample(self.student, self.final_steps, self.noise)
        self.student.train()
        return {"psnr_db": psnr(images, self.reference), "teacher_psnr_db": psnr(self.teacher_short, self.reference),
                "steps": self.final_steps, "teacher_steps": self.teacher_steps, "images": _REFERENCE_IMAGES}

    def _change(self, initial: dict, final: dict) -> str:
        return (f"PSNR to the teacher's {final['teacher_steps']}-step samples (same noise) at {final['steps']} steps: "
                f"{initial['psnr_db']:.2f} -> {final['psnr_db']:.2f} dB (the teacher itself at {final['steps']} steps: "
                f"{final['teacher_psnr_db']:.2f} dB)")

    def _loss_name(self) -> str:
        return "MSE to the prediction that takes two of the teacher's DDIM steps in one (progressive distillation)"

    def _save_files(self, staging: Path) -> None:
        super()._save_files(staging)
        config_file = staging / "scheduler" / "scheduler_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config[DISTILLED_STEPS] = self.final_steps
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


__all__ = ["DiffusionRun", "StepDistillRun", "block_removed_student", "unet_teacher", "DISTILLED_STEPS"]
