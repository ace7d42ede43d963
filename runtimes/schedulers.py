"""DDPM and DDIM samplers in numpy, with diffusers' semantics (its scheduler configs read as is).

Part of the diffusion runtime (issue 5): the UNet runs in the engine, the loop runs here. Supported
config keys: num_train_timesteps, beta_start, beta_end, beta_schedule (linear, scaled_linear,
squaredcos_cap_v2), trained_betas, prediction_type (epsilon, sample, v_prediction), clip_sample,
clip_sample_range, timestep_spacing (leading, trailing, linspace), steps_offset, and for DDPM
variance_type (fixed_small, fixed_large), for DDIM set_alpha_to_one.

Example::

    scheduler = Scheduler.from_config(config, "ddim")
    images = scheduler.denoise(unet, noise, steps=50)   # unet(x, t) -> the model's prediction
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_sdk.errors import InvalidInputError

KINDS = ("ddpm", "ddim")


def _betas(config: dict) -> np.ndarray:
    steps = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=np.float32)
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if schedule == "linear":
        return np.linspace(start, end, steps, dtype=np.float32)
    if schedule == "scaled_linear":
        return (np.linspace(start**0.5, end**0.5, steps, dtype=np.float32) ** 2).astype(np.float32)
    if schedule == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)], np.float32)
    raise InvalidInputError(f"beta_schedule {schedule!r} is not supported; supported: linear, scaled_linear, squaredcos_cap_v2")


@dataclass
class Scheduler:
    kind: str
    config: dict
    alphas_cumprod: np.ndarray

    @classmethod
    def from_config(cls, config: dict, kind: str) -> "Scheduler":
        if kind not in KINDS:
            raise InvalidInputError(f"unknown scheduler {kind!r}; choose one of {', '.join(KINDS)}")
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "sample", "v_prediction"):
            raise InvalidInputError(f"prediction_type {prediction!r} is not supported")
        alphas_cumprod = np.cumprod(1.0 - _betas(config), dtype=np.float32)
        return cls(kind, dict(config), alphas_cumprod)

    @property
    def train_steps(self) -> int:
        return len(self.alphas_cumprod)

    def timesteps(self, steps: int) -> np.ndarray:
        """The descending timesteps of a ``steps``-step sampling run."""
        total = self.train_steps
        if not 1 <= steps <= total:
            raise InvalidInputError(f"steps must be between 1 and the model's {total} training timesteps, got {steps}")
        spacing = self.config.get("timestep_spacing", "leading")
        if spacing == "linspace":
            return np.linspace(0, total - 1, steps).round()[::-1].astype(np.int64)
        if spacing == "leading":
            ratio = total // steps
            return (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + int(self.config.get("steps_offset", 0))
        if spacing == "trailing":
            return np.round(np.arange(total, 0, -total / steps)).astype(np.int64) - 1
        raise InvalidInputError(f"timestep_spacing {spacing!r} is not supported")

    def _original(self, model_output, t, sample):
        a = float(self.alphas_cumprod[t])
        prediction = self.config.get("prediction_type", "epsilon")
        if prediction == "epsilon":
            x0, eps = (sample - (1 - a) ** 0.5 * model_output) / a**0.5, model_output
        elif prediction == "sample":
            x0 = model_output
            eps = (sample - a**0.5 * x0) / (1 - a) ** 0.5
        else:  # v_prediction
            x0 = a**0.5 * sample - (1 - a) ** 0.5 * model_output
            eps = a**0.5 * model_output + (1 - a) ** 0.5 * sample
        if self.config.get("clip_sample", True):
            limit = float(self.config.get("clip_sample_range", 1.0))
            x0 = np.clip(x0, -limit, limit)
        return x0, eps

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray, *, previous: int, eta: float = 0.0,
             noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at timestep ``previous`` (-1: the end) from the one at ``t``; ``noise`` is
        standard normal noise of the sample's shape (DDPM, and DDIM with eta > 0)."""
        t = int(t)
        a_t = float(self.alphas_cumprod[t])
        x0, eps = self._original(model_output, t, sample)
        if self.kind == "ddpm":
            a_prev = float(self.alphas_cumprod[previous]) if previous >= 0 else 1.0
            beta_t = 1 - a_t / a_prev
            mean = (a_prev**0.5 * beta_t / (1 - a_t)) * x0 + ((a_t / a_prev) ** 0.5 * (1 - a_prev) / (1 - a_t)) * sample
            if t > 0 and noise is not None:
                variance = max((1 - a_prev) / (1 - a_t) * beta_t, 1e-20)
                if self.config.get("variance_type", "fixed_small") == "fixed_large":
                    variance = beta_t
                mean = mean + variance**0.5 * noise
            return mean.astype(np.float32)
        final = 1.0 if self.config.get("set_alpha_to_one", True) else float(self.alphas_cumprod[0])
        a_prev = float(self.alphas_cumprod[previous]) if previous >= 0 else final
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        sigma = eta * variance**0.5
        out = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0 and noise is not None:
            out = out + sigma * noise
        return out.astype(np.float32)

    def denoise(self, unet, sample: np.ndarray, steps: int, *, eta: float = 0.0, draw=None, progress=None) -> np.ndarray:
        """The reverse process from ``sample`` (noise, (N, C, H, W)) in ``steps`` steps.

        ``unet(x, t)`` returns the model's prediction for ``x`` at timestep ``t``; ``draw(shape)``
        the standard normal noise DDPM (or DDIM with eta > 0) adds at each step; ``progress(done,
        total)`` is called after each step.
        """
        timesteps = self.timesteps(steps)
        stochastic = (self.kind == "ddpm") or eta > 0
        if stochastic and draw is None:
            raise InvalidInputError(f"{self.kind} with eta={eta} adds noise at each step: pass draw(shape)")
        for index, t in enumerate(timesteps):
            prediction = unet(sample, int(t))
            noise = draw(sample.shape) if stochastic and (self.kind == "ddim" or t > 0) else None
            sample = self.step(prediction, int(t), sample, previous=self.previous_of(timesteps, index), eta=eta, noise=noise)
            if progress is not None:
                progress(index + 1, len(timesteps))
        return sample

    def previous_of(self, timesteps: np.ndarray, index: int) -> int:
        """The timestep after ``timesteps[index]``: DDPM walks the list, DDIM steps by train/steps."""
        if self.kind == "ddim":
            return int(timesteps[index]) - self.train_steps // len(timesteps)
        return int(timesteps[index + 1]) if index + 1 < len(timesteps) else -1
