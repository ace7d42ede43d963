"""Image generation runtime: a diffusion UNet package sampled with numpy DDPM / DDIM loops.

Example::

    import edge_sdk
    gen = edge_sdk.load("out/digits-int8", threads=2)
    images = gen.sample(num_images=8, steps=50, seed=0, scheduler="ddim")   # uint8 (8, H, W, C)
    result = gen.generate(SamplingOptions(num_images=8, steps=50, scheduler="ddim"))  # images and stats
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.package import Package
from edge_sdk.runtimes.backend import open_session
from edge_sdk.runtimes.options import with_overrides
from edge_sdk.runtimes.diffusion_schedulers import SCHEDULERS
from edge_sdk.runtimes.schedulers import KINDS, Scheduler


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample; validated on construction (``steps`` against the model's scheduler when sampling)."""

    num_images: int = 1  # images generated together, as one batch
    steps: int | None = None  # denoising steps, 1 .. the training timesteps (None: the model's — see ImageGenerator.default_steps)
    seed: int | None = 0  # seed of the initial noise (and DDPM's per-step noise); None draws fresh entropy
    scheduler: str | None = None  # "ddpm" or "ddim" (None: ddim for a step-distilled model, else ddpm)
    eta: float = 0.0  # DDIM's stochasticity: 0 deterministic, 1 as noisy as DDPM
    output: str = "uint8"  # "uint8": (N, H, W, C) in 0..255; "float": (N, H, W, C) in [0, 1]
    # text-to-image packages only (an unconditional package refuses them)
    prompt: str | None = None  # what to draw (CLIP's 77 tokens; longer prompts are cut with a warning, as diffusers)
    negative_prompt: str | None = None  # what to steer away from (classifier-free guidance; ignored at guidance <= 1)
    guidance_scale: float | None = None  # classifier-free guidance (None: the package's, 7.5; an LCM's 8.5)
    width: int | None = None  # pixels, a multiple of 8 (None: the package's own size)
    height: int | None = None
    init_image: object = None  # image-to-image: an (H, W, 3) uint8 array, a PIL image or an image file's path
    strength: float = 0.8  # image-to-image: how much of the init image is noised away (1: all of it)

    def __post_init__(self):
        def bad(message: str):
            raise InvalidInputError(message)

        if isinstance(self.num_images, bool) or not isinstance(self.num_images, int) or self.num_images < 1:
            bad(f"the number of images must be >= 1, got {self.num_images}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            bad(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            bad(f"seed must be a non-negative integer or None, got {self.seed!r}")
        if self.scheduler is not None and self.scheduler not in KINDS + SCHEDULERS:
            bad(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(dict.fromkeys(KINDS + SCHEDULERS))}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta <= 1.0:
            bad(f"eta must be in [0, 1], got {self.eta}")
        if self.output not in ("uint8", "float"):
            bad(f"output must be 'uint8' or 'float', got {self.output!r}")
        for name in ("prompt", "negative_prompt"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                bad(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        if self.guidance_scale is not None and (isinstance(self.guidance_scale, bool) or not isinstance(
                self.guidance_scale, (int, float)) or not 0 <= self.guidance_scale < 1000):
            bad(f"guidance_scale must be a number >= 0 (1 or less turns guidance off), got {self.guidance_scale!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 8 or value % 8):
                bad(f"{name} must be a positive multiple of 8 pixels, got {value!r}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not 0 < self.strength <= 1:
            bad(f"strength must be in (0, 1], got {self.strength!r}")


@dataclass
class SamplingStats:
    """Where the time went, for one sampling call."""

    steps: int = 0  # denoising steps run (one UNet call each, for the whole batch)
    images: int = 0
    unet_seconds: float = 0.0  # inside the UNet
    total_seconds: float = 0.0  # the whole call: noise, scheduler, UNet and conversion to images

    @property
    def seconds_per_step(self) -> float:
        """Wall time per step: the whole call over its steps (what device budgets are judged on)."""
        return self.total_seconds / self.steps if self.steps else 0.0

    @property
    def unet_seconds_per_step(self) -> float:
        """UNet time per step (the whole batch)."""
        return self.unet_seconds / self.steps if self.steps else 0.0


@dataclass(frozen=True)
class ImageResult:
    """Generated images and what they cost."""

    images: np.ndarray  # uint8 (N, H, W, C), or float in [0, 1] with output="float"
    stats: SamplingStats


class ImageGenerator:
    """A loaded UNet package. ``sample(...)`` returns images as uint8 (N, H, W, C) arrays;
    ``generate(SamplingOptions(...))`` returns them with their timings as an ``ImageResult``.
    ``last_stats`` holds the timings of the last call."""

    def __init__(self, package: Package, threads: int | None = None):
        manifest = package.manifest
        self.package = package
        self._model = manifest["model"]
        self._scheduler_config = manifest["scheduler"]
        self._session = open_session(package.runtime, package.graph_path("unet"), threads, manifest["runtime"].get("min_version"))
        self.last_stats: SamplingStats | None = None
        batch = package.graph("unet")["inputs"][0]["shape"][0]
        self._one_at_a_time = batch == 1  # a static-shape (NPU) graph takes one image per call

    @property
    def train_steps(self) -> int:
        return int(self._scheduler_config.get("num_train_timesteps", 1000))

    @property
    def distilled_steps(self) -> int | None:
        """The DDIM steps a step-distilled model was trained to sample in (None: not step-distilled)."""
        steps = self._scheduler_config.get("distilled_steps")
        return int(steps) if steps else None

    @property
    def default_steps(self) -> int:
        """Steps when none are asked for: a step-distilled model's own, else 50."""
        return self.distilled_steps or 50

    def noise_shape(self, num_images: int = 1) -> tuple[int, ...]:
        """Shape (N, C, H, W) of the initial noise (and of ``unet``'s samples) for ``num_images``."""
        return (num_images, int(self._model["channels"]), *self._model["sample_size"])

    def unet(self, sample: np.ndarray, timestep: int) -> np.ndarray:
        """One model evaluation: the prediction for ``sample`` (N, C, H, W) at ``timestep``."""
        sample = np.ascontiguousarray(sample, np.float32)
        if self._one_at_a_time and len(sample) > 1:
            return np.concatenate([self.unet(one[None], timestep) for one in sample])
        t = np.full(len(sample), int(timestep), dtype=np.int64)
        return self._session.run({"sample": sample, "timestep": t})["noise"]

    def options(self, options: SamplingOptions | None = None, **overrides) -> SamplingOptions:
        """``options`` (default: ``SamplingOptions()``) with ``overrides`` applied and validated."""
        return with_overrides(options or SamplingOptions(), overrides, "sampling")

    def sample(
        self,
        num_images: int = 1,
        steps: int | None = None,
        seed: int | None = 0,
        scheduler: str | None = None,
        noise: np.ndarray | None = None,
        eta: float = 0.0,
        output: str = "uint8",
        progress: Callable[[int, int], None] | None = None,
        step_noise: Callable[[tuple], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Generate ``num_images`` images with ``steps`` denoising steps; return the images only
        (see ``SamplingOptions`` for the options, ``generate`` for the arguments)."""
        options = SamplingOptions(num_images=num_images, steps=steps, seed=seed, scheduler=scheduler, eta=eta, output=output)
        return self.generate(options, noise=noise, progress=progress, step_noise=step_noise).images

    def generate(
        self,
        options: SamplingOptions | None = None,
        *,
        noise: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
        step_noise: Callable[[tuple], np.ndarray] | None = None,
    ) -> ImageResult:
        """Generate images as ``options`` say; return them with their timings.

        ``noise``: the initial noise (N, C, H, W) instead of drawing it from the seed;
        ``progress(done, total)`` is called after each step; ``step_noise(shape)``: the noise DDPM
        adds at each step (default: drawn from the seed's generator).

        Example::

            result = gen.generate(SamplingOptions(num_images=4, steps=25, scheduler="ddim"))
            print(result.images.shape, f"{result.stats.seconds_per_step * 1e3:.1f} ms/step")
        """
        opts = options or SamplingOptions()
        given = [name for name in ("prompt", "negative_prompt", "guidance_scale", "width", "height", "init_image")
                 if getattr(opts, name) is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)}: this package is an unconditional image model, it takes no "
                                    "prompt or image; text prompts need a text-to-image package")
        if opts.scheduler is not None and opts.scheduler not in KINDS:
            raise InvalidInputError(f"unknown scheduler {opts.scheduler!r} for an unconditional image model; choose one of "
                                    f"{', '.join(KINDS)}")
        start = time.perf_counter()
        steps = self.default_steps if opts.steps is None else opts.steps
        sampler = Scheduler.from_config(self._scheduler_config, opts.scheduler or ("ddim" if self.distilled_steps else "ddpm"))
        sampler.timesteps(steps)  # validates steps against the model before any work
        shape = self.noise_shape(opts.num_images)
        rng = np.random.default_rng(opts.seed)
        if noise is None:
            x = rng.standard_normal(shape).astype(np.float32)
        else:
            x = np.asarray(noise, dtype=np.float32)
            if x.shape != shape:
                raise InvalidInputError(f"noise must have shape {shape}, got {x.shape}")
        draw = step_noise or (lambda s: rng.standard_normal(s).astype(np.float32))
        stats = SamplingStats(images=opts.num_images)

        def unet(sample, t):
            t0 = time.perf_counter()
            prediction = self.unet(sample, t)
            stats.unet_seconds += time.perf_counter() - t0
            stats.steps += 1
            return prediction

        x = sampler.denoise(unet, x, steps, eta=opts.eta, draw=draw, progress=progress)
        images = np.clip(x / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
        if opts.output == "uint8":
            images = (images * 255).round().astype(np.uint8)
        stats.total_seconds = time.perf_counter() - start
        self.last_stats = stats
        return ImageResult(images, stats)
