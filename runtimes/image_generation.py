"""Image generation runtime: a diffusion UNet package sampled with numpy DDPM / DDIM loops.

Example::

    import edge_sdk
    gen = edge_sdk.load("out/digits-int8", threads=2)
    images = gen.sample(num_images=8, steps=50, seed=0, scheduler="ddim")   # uint8 (8, H, W, C)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.package import Package
from edge_sdk.runtimes.backend import open_session
from edge_sdk.runtimes.schedulers import KINDS, Scheduler
from edge_sdk.runtimes.tasks import register_task


@dataclass
class SamplingStats:
    steps: int = 0
    images: int = 0
    unet_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def seconds_per_step(self) -> float:
        return self.unet_seconds / self.steps if self.steps else 0.0


@register_task("image-generation")
class ImageGenerator:
    """A loaded UNet package. ``sample(...)`` returns images as uint8 (N, H, W, C) arrays."""

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

    def unet(self, sample: np.ndarray, timestep: int) -> np.ndarray:
        """One model evaluation: the prediction for ``sample`` (N, C, H, W) at ``timestep``."""
        sample = np.ascontiguousarray(sample, np.float32)
        if self._one_at_a_time and len(sample) > 1:
            return np.concatenate([self.unet(one[None], timestep) for one in sample])
        t = np.full(len(sample), int(timestep), dtype=np.int64)
        return self._session.run({"sample": sample, "timestep": t})["noise"]

    def sample(
        self,
        num_images: int = 1,
        steps: int = 50,
        seed: int | None = 0,
        scheduler: str = "ddpm",
        noise: np.ndarray | None = None,
        eta: float = 0.0,
        output: str = "uint8",
        progress: Callable[[int, int], None] | None = None,
        step_noise: Callable[[tuple], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Generate ``num_images`` images with ``steps`` denoising steps.

        ``noise``: the initial noise (N, C, H, W) instead of drawing it from ``seed``; ``eta``:
        DDIM's stochasticity (0 deterministic); ``output``: "uint8" (N, H, W, C) or "float"
        (N, H, W, C in [0, 1]); ``step_noise(shape)``: the noise DDPM adds at each step (default:
        drawn from ``seed``'s generator).
        """
        if not isinstance(num_images, int) or num_images < 1:
            raise InvalidInputError(f"the number of images must be >= 1, got {num_images}")
        if scheduler not in KINDS:
            raise InvalidInputError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(KINDS)}")
        if not 0.0 <= eta <= 1.0:
            raise InvalidInputError(f"eta must be in [0, 1], got {eta}")
        if output not in ("uint8", "float"):
            raise InvalidInputError(f"output must be 'uint8' or 'float', got {output!r}")
        sampler = Scheduler.from_config(self._scheduler_config, scheduler)
        sampler.timesteps(steps)  # validates steps before any work
        shape = (num_images, int(self._model["channels"]), *self._model["sample_size"])
        rng = np.random.default_rng(seed)
        if noise is None:
            x = rng.standard_normal(shape).astype(np.float32)
        else:
            x = np.asarray(noise, dtype=np.float32)
            if x.shape != shape:
                raise InvalidInputError(f"noise must have shape {shape}, got {x.shape}")
        draw = step_noise or (lambda s: rng.standard_normal(s).astype(np.float32))
        stats = SamplingStats(images=num_images)

        def unet(sample, t):
            t0 = time.perf_counter()
            prediction = self.unet(sample, t)
            stats.unet_seconds += time.perf_counter() - t0
            stats.steps += 1
            return prediction

        start = time.perf_counter()
        x = sampler.denoise(unet, x, steps, eta=eta, draw=draw, progress=progress)
        stats.total_seconds = time.perf_counter() - start
        self.last_stats = stats
        images = np.clip(x / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
        if output == "float":
            return images
        return (images * 255).round().astype(np.uint8)
