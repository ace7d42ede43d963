"""Diffusion students by block removal (BK-SDM's recipe) on the distillation loop of ``train.py``.

A diffusion model's cost is the UNet times the steps. The student is the teacher's ``UNet2DModel``
with fewer resnet (and attention) layers per block (``layers_per_block``) and, optionally, no mid
block; the layers it keeps start as the teacher's (down block j from the teacher's j; an up block's
last layer, which takes the block's skip from below, from the teacher's last). Loss, as BK-SDM:
denoising MSE + output KD (the student's noise prediction against the teacher's on the same noisy
input and timestep) + feature KD (each down and up block's output against the teacher's), weighted
by ``denoise_weight``, ``output_weight`` and ``feature_weight`` (1.0 each).

Training images come from ``--data IMAGE_DIR`` (at the model's size) or, without one, from the
teacher itself: ``teacher_samples`` images sampled once with DDIM (data-free distillation).

Not yet here (issue 13 continues): step distillation.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_sdk.distillation.data import Items
from edge_sdk.distillation.train import Run
from edge_sdk.errors import InvalidInputError

log = logging.getLogger("edge_sdk")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_SAMPLING_STEPS = 25  # DDIM steps of the teacher's own samples (data-free)
_HELDOUT = 32  # fixed (image, timestep, noise) triples the held-out figures use
_BLOCK_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")


def unet_teacher(path: Path):
    """(UNet2DModel, scheduler config) of a diffusers source, or a one-line refusal."""
    from edge_sdk.converters.diffusion import diffusion_source
    from edge_sdk.errors import ModelLoadError

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
        if options.layers_per_block is None and not options.drop_mid_block:
            raise InvalidInputError(f"{teacher_dir} is a diffusion UNet: choose its student with --layers-per-block N "
                                    "and/or --drop-mid-block")
        self._refuse("diffusion", {"--qat": options.qat, "--teacher-cache": options.teacher_cache, "--on-policy": options.on_policy})
        self.teacher, self.scheduler_config = unet_teacher(teacher_dir)
        self.teacher.to(place.device)
        torch.manual_seed(options.seed)
        self.student, self.plan = block_removed_student(self.teacher, options.layers_per_block, options.drop_mid_block)
        self.student.to(place.device)
        config = self.teacher.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        if data is not None and str(data) != "":
            self.images = _read_images(Path(data), size, config.in_channels)
            self.sources = [{"path": str(Path(data).absolute()), "images": len(self.images)}]
        else:
            self.images = self._teacher_samples(options.teacher_samples)
            self.sources = [{"path": "the teacher's own samples", "images": len(self.images), "ddim_steps": _SAMPLING_STEPS}]
        self.batches = Items(len(self.images))
        alphas = np.cumprod(1 - self._betas())
        self.alphas = torch.tensor(alphas, dtype=torch.float32, device=place.device)
        self.heldout = self._draw(np.random.default_rng([options.seed, 999_999]), list(range(len(self.images)))[:_HELDOUT])

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
                for t in scheduler.timesteps:
                    x = scheduler.step(self.teacher(x, t).sample, t, x).prev_sample
                images.append(x.clamp(-1, 1).numpy())
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

    def _save_files(self, staging: Path) -> None:
        from diffusers import DDPMPipeline, DDPMScheduler

        DDPMPipeline(unet=self.student, scheduler=DDPMScheduler.from_config(self.scheduler_config)).save_pretrained(staging)

    def _sections(self) -> dict:
        count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
        return {"teacher": {"parameters": count(self.teacher)},
                "student": {**self.plan, "parameters": count(self.student)},
                "data": {"files": self.sources}}


__all__ = ["DiffusionRun", "block_removed_student", "unet_teacher"]
