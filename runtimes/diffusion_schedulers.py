"""The schedulers of text-to-image pipelines in numpy, step for step as diffusers computes them.

PNDM (PLMS, Stable Diffusion's default), DDIM, Euler, Euler ancestral, DPM++ 2M (optionally with
Karras sigmas) and LCM. A package's scheduler config is read as diffusers' ``from_config`` reads it:
the chosen scheduler's defaults, overridden by every key the config sets, so that switching
scheduler gives what ``pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)``
gives. One ``Sampler`` is made per generation (the multistep ones keep a history):

    sampler = make_sampler("euler", config, steps=25)
    x = draw(shape) * sampler.init_noise_sigma
    for i, t in enumerate(sampler.timesteps):
        eps = unet(sampler.scale(x, i), t)
        x = sampler.step(eps, i, x, draw)        # draw(shape): the generator's next normals

The unconditional DDPM / DDIM samplers of ``unconditional-image-generation`` are ``schedulers.py``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from edge_sdk.runtimes.schedulers import Scheduler

from edge_sdk.errors import InvalidInputError

Draw = Callable[[tuple], np.ndarray]
f32 = np.float32

# CLI name -> diffusers class (and the settings the name implies)
NAMES = {
    "pndm": ("PNDMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "lcm": ("LCMScheduler", {}),
}
SCHEDULERS = tuple(NAMES)
_COMMON = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
           "trained_betas": None, "prediction_type": "epsilon", "steps_offset": 0}
# each class's own defaults (its __init__'s), the keys it reads
DEFAULTS = {
    "PNDMScheduler": {**_COMMON, "skip_prk_steps": False, "set_alpha_to_one": False, "timestep_spacing": "leading"},
    "DDIMScheduler": {**_COMMON, "clip_sample": True, "clip_sample_range": 1.0, "set_alpha_to_one": True,
                      "timestep_spacing": "leading", "thresholding": False, "rescale_betas_zero_snr": False},
    "EulerDiscreteScheduler": {**_COMMON, "timestep_spacing": "linspace", "interpolation_type": "linear",
                               "use_karras_sigmas": False, "final_sigmas_type": "zero", "timestep_type": "discrete",
                               "rescale_betas_zero_snr": False},
    "EulerAncestralDiscreteScheduler": {**_COMMON, "timestep_spacing": "linspace", "rescale_betas_zero_snr": False},
    "DPMSolverMultistepScheduler": {**_COMMON, "solver_order": 2, "algorithm_type": "dpmsolver++",
                                    "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False,
                                    "use_karras_sigmas": False, "final_sigmas_type": "zero", "thresholding": False,
                                    "lambda_min_clipped": -float("inf"), "timestep_spacing": "linspace",
                                    "rescale_betas_zero_snr": False},
    "LCMScheduler": {**_COMMON, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                     "original_inference_steps": 50, "clip_sample": False, "clip_sample_range": 1.0,
                     "set_alpha_to_one": True, "timestep_spacing": "leading", "timestep_scaling": 10.0,
                     "thresholding": False, "rescale_betas_zero_snr": False},
}
# settings whose other values change the maths in ways not implemented here: (key, the value supported)
_UNSUPPORTED = (("thresholding", False), ("rescale_betas_zero_snr", False), ("skip_prk_steps", True),
                ("timestep_type", "discrete"), ("interpolation_type", "linear"), ("algorithm_type", "dpmsolver++"),
                ("solver_type", "midpoint"), ("solver_order", 2), ("euler_at_final", False))


def name_of(config: dict) -> str:
    """The CLI name of a package's own scheduler (its diffusers class and settings)."""
    cls = config.get("class")
    if cls == "DPMSolverMultistepScheduler":
        return "dpm++2m-karras" if config.get("use_karras_sigmas") else "dpm++2m"
    for name, (class_name, _) in NAMES.items():
        if class_name == cls:
            return name
    raise InvalidInputError(f"the package's scheduler {cls} is not one edge-sdk runs; pick one of {', '.join(SCHEDULERS)}")


def settings(name: str, config: dict) -> dict:
    """``config`` read as the scheduler ``name`` reads it (diffusers' from_config), checked."""
    if name not in NAMES:
        raise InvalidInputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    class_name, implied = NAMES[name]
    defaults = DEFAULTS[class_name]
    merged = {key: value if config.get(key) is None else config[key] for key, value in defaults.items()}
    merged.update(implied)
    for key, supported in _UNSUPPORTED:
        if key in merged and merged[key] != supported:
            raise InvalidInputError(f"the {class_name} setting {key}={merged[key]!r} is not supported by edge-sdk's "
                                    f"numpy schedulers (only {supported!r}); pick another --scheduler")
    if merged["prediction_type"] not in ("epsilon", "v_prediction", "sample"):
        raise InvalidInputError(f"prediction_type {merged['prediction_type']!r} is not supported")
    return merged


def make_sampler(name: str, config: dict, steps: int, eta: float = 0.0) -> "Sampler":
    """A fresh ``Sampler`` of scheduler ``name`` over the package's scheduler ``config`` for ``steps`` steps
    (``eta``: DDIM's stochasticity, 0 deterministic)."""
    s = settings(name, config)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps must be an integer >= 1, got {steps!r}")
    if steps > s["num_train_timesteps"]:
        raise InvalidInputError(f"steps must be at most the model's {s['num_train_timesteps']} training timesteps, got {steps}")
    cls = {"pndm": PNDM, "ddim": DDIM, "euler": Euler, "euler-ancestral": EulerAncestral, "dpm++2m": DPMSolver2M,
           "dpm++2m-karras": DPMSolver2M, "lcm": LCM}[name]
    sampler = cls(s, steps)
    sampler.eta = float(eta)
    return sampler


def _spaced(base: Scheduler, steps: int, dtype=np.int64) -> np.ndarray:
    """The descending timesteps of ``timestep_spacing`` (diffusers' set_timesteps), as the unconditional
    samplers space them; float32 ones (Euler) keep linspace's fractions."""
    if dtype == np.float32 and base.config["timestep_spacing"] == "linspace":
        return np.linspace(0, base.train_steps - 1, steps, dtype=np.float32)[::-1].copy()
    return base.timesteps(steps).astype(dtype)


class Sampler:
    """One generation's scheduler: ``timesteps`` (what the UNet is given), ``init_noise_sigma``,
    ``scale(x, i)`` (the UNet's input at step i), ``step(output, i, x, draw)`` and, for
    image-to-image, ``start_at(index)`` and ``add_noise(x0, noise)``."""

    order = 1
    init_noise_sigma = 1.0
    eta = 0.0  # DDIM only

    def __init__(self, s: dict, steps: int):
        self.s = s
        self.steps = steps
        self.base = Scheduler.from_config(s, "ddim")  # the unconditional DDIM: betas, spacing, DDIM's step
        self.alphas_cumprod = self.base.alphas_cumprod
        self.begin = 0

    @property
    def train_steps(self) -> int:
        return len(self.alphas_cumprod)

    def scale(self, x: np.ndarray, i: int) -> np.ndarray:
        return x

    def start_at(self, index: int) -> None:
        """Image-to-image: sampling starts at ``timesteps[index]`` (diffusers' set_begin_index)."""
        self.begin = index

    def add_noise(self, x0: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """``x0`` noised to the first timestep sampled (image-to-image)."""
        a = self.alphas_cumprod[int(self.timesteps[self.begin])]
        return (np.sqrt(a) * x0 + np.sqrt(f32(1) - a) * noise).astype(np.float32)

    def _x0_eps(self, output, t, x):
        a = self.alphas_cumprod[t]
        b = f32(1) - a
        prediction = self.s["prediction_type"]
        if prediction == "epsilon":
            return (x - np.sqrt(b) * output) / np.sqrt(a), output
        if prediction == "sample":
            return output, (x - np.sqrt(a) * output) / np.sqrt(b)
        return np.sqrt(a) * x - np.sqrt(b) * output, np.sqrt(a) * output + np.sqrt(b) * x


class DDIM(Sampler):
    def __init__(self, s, steps):
        super().__init__(s, steps)
        self.timesteps = _spaced(self.base, steps)

    def step(self, output, i, x, draw):
        t = int(self.timesteps[i])
        noise = draw(output.shape) if self.eta > 0 else None
        return self.base.step(output, t, x, previous=t - self.train_steps // self.steps, eta=self.eta, noise=noise)


class PNDM(Sampler):
    """PLMS (skip_prk_steps): N + 1 UNet calls, the second timestep repeated for the warm-up."""

    def __init__(self, s, steps):
        super().__init__(s, steps)
        base = _spaced(self.base, steps)[::-1]  # ascending, as diffusers' _timesteps
        self.timesteps = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].astype(np.int64)
        self.final = f32(1.0) if s["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.ets: list[np.ndarray] = []
        self.counter = 0
        self.cur_sample = None

    def _prev_sample(self, x, t, prev, output):
        a = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final
        b, b_prev = f32(1) - a, f32(1) - a_prev
        if self.s["prediction_type"] == "v_prediction":
            output = np.sqrt(a) * output + np.sqrt(b) * x
        elif self.s["prediction_type"] != "epsilon":
            raise InvalidInputError("PNDM takes epsilon or v_prediction models")
        sample_coeff = np.sqrt(a_prev / a)
        denominator = a * np.sqrt(b_prev) + np.sqrt(a * b * a_prev)
        return sample_coeff * x - (a_prev - a) * output / denominator

    def step(self, output, i, x, draw):
        t = int(self.timesteps[i])
        stride = self.train_steps // self.steps
        prev = t - stride
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(output)
        else:
            prev, t = t, t + stride
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = x
        elif len(ets) == 1 and self.counter == 1:
            output = (output + ets[-1]) / 2
            x, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        self.counter += 1
        return self._prev_sample(x, t, prev, output).astype(np.float32)


class _Sigmas(Sampler):
    """Samplers over sigmas (Euler, Euler ancestral, DPM-Solver): sigmas[i] per step, 0 at the end."""

    def _train_sigmas(self) -> np.ndarray:
        return np.sqrt((f32(1) - self.alphas_cumprod) / self.alphas_cumprod).astype(np.float32)

    def add_noise(self, x0, noise):
        return (x0 + noise * self.sigmas[self.begin]).astype(np.float32)

    @staticmethod
    def _sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        dists = log_sigma - log_sigmas[:, None]
        low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
        return float(((1 - w) * low + w * (low + 1)).reshape(-1)[0])

    @staticmethod
    def _karras(sigmas: np.ndarray, steps: int) -> np.ndarray:
        lo, hi, rho = float(sigmas[-1]), float(sigmas[0]), 7.0
        ramp = np.linspace(0, 1, steps)
        return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


class Euler(_Sigmas):
    def __init__(self, s, steps):
        super().__init__(s, steps)
        timesteps = _spaced(self.base, steps, np.float32)
        train = self._train_sigmas()
        sigmas = np.interp(timesteps, np.arange(len(train)), train)
        if s.get("use_karras_sigmas"):
            sigmas = self._karras(sigmas, steps)
            log_sigmas = np.log(train)
            timesteps = np.array([self._sigma_to_t(sigma, log_sigmas) for sigma in sigmas])
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.float32)
        top = self.sigmas.max()
        self.init_noise_sigma = float(top if s["timestep_spacing"] in ("linspace", "trailing") else np.sqrt(top**2 + 1))

    def scale(self, x, i):
        sigma = self.sigmas[i]
        return (x / np.sqrt(sigma**2 + f32(1))).astype(np.float32)

    def _x0(self, output, x, sigma):
        prediction = self.s["prediction_type"]
        if prediction == "epsilon":
            return x - sigma * output
        if prediction == "v_prediction":
            return output * (-sigma / np.sqrt(sigma**2 + 1)) + x / (sigma**2 + 1)
        return output

    def step(self, output, i, x, draw):
        sigma = self.sigmas[i]
        x0 = self._x0(output, x, sigma)
        derivative = (x - x0) / sigma
        return (x + derivative * (self.sigmas[i + 1] - sigma)).astype(np.float32)


class EulerAncestral(Euler):
    def step(self, output, i, x, draw):
        sigma_from, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        x0 = self._x0(output, x, sigma_from)
        sigma_up = np.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
        sigma_down = np.sqrt(sigma_to**2 - sigma_up**2)
        out = x + (x - x0) / sigma_from * (sigma_down - sigma_from)
        return (out + draw(output.shape) * sigma_up).astype(np.float32)


class DPMSolver2M(_Sigmas):
    """DPM-Solver++(2M), midpoint, final step first order to sigma 0 (diffusers' defaults)."""

    def __init__(self, s, steps):
        super().__init__(s, steps)
        total = s["num_train_timesteps"]
        spacing = s["timestep_spacing"]
        if spacing == "linspace":
            timesteps = np.linspace(0, total - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        elif spacing == "leading":
            ratio = total // (steps + 1)
            timesteps = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + s["steps_offset"]
        elif spacing == "trailing":
            timesteps = np.arange(total, 0, -total / steps).round().astype(np.int64) - 1
        else:
            raise InvalidInputError(f"timestep_spacing {spacing!r} is not supported")
        train = self._train_sigmas()
        log_sigmas = np.log(train)
        if s["use_karras_sigmas"]:
            sigmas = self._karras(np.flip(train).copy(), steps)
            timesteps = np.array([self._sigma_to_t(sigma, log_sigmas) for sigma in sigmas])
            if s["beta_schedule"] != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(len(train)), train)
        last = 0.0 if s["final_sigmas_type"] == "zero" else float(train[0])
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.int64)
        self.previous: np.ndarray | None = None
        self.lower_order_nums = 0

    def add_noise(self, x0, noise):  # in the variance-preserving space the solver samples in
        alpha, sigma = self._alpha_sigma(self.sigmas[self.begin])
        return (alpha * x0 + sigma * noise).astype(np.float32)

    @staticmethod
    def _alpha_sigma(sigma):
        alpha = f32(1) / np.sqrt(sigma**2 + f32(1))
        return alpha, sigma * alpha

    def step(self, output, i, x, draw):
        index, n = i, len(self.timesteps)
        final = index == n - 1 and (self.s["lower_order_final"] and n < 15 or self.s["final_sigmas_type"] == "zero")
        sigma = self.sigmas[index]
        alpha_s0, sigma_s0 = self._alpha_sigma(sigma)
        prediction = self.s["prediction_type"]
        if prediction == "epsilon":
            x0 = (x - sigma_s0 * output) / alpha_s0
        elif prediction == "v_prediction":
            x0 = alpha_s0 * x - sigma_s0 * output
        else:
            x0 = output
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[index + 1])
        with np.errstate(divide="ignore"):
            lambda_t = np.log(alpha_t) - np.log(sigma_t)
        lambda_s0 = np.log(alpha_s0) - np.log(sigma_s0)
        h = lambda_t - lambda_s0
        if self.lower_order_nums < 1 or final or self.previous is None:
            out = (sigma_t / sigma_s0) * x - (alpha_t * (np.exp(-h) - f32(1))) * x0
        else:
            alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[index - 1])
            lambda_s1 = np.log(alpha_s1) - np.log(sigma_s1)
            r0 = (lambda_s0 - lambda_s1) / h
            d1 = (f32(1) / r0) * (x0 - self.previous)
            out = (sigma_t / sigma_s0) * x - (alpha_t * (np.exp(-h) - f32(1))) * x0 \
                - f32(0.5) * (alpha_t * (np.exp(-h) - f32(1))) * d1
        self.previous = x0
        self.lower_order_nums = min(self.lower_order_nums + 1, 2)
        return out.astype(np.float32)


class LCM(Sampler):
    """Latent consistency sampling: the boundary-condition scalings, fresh noise between steps."""

    def __init__(self, s, steps):
        super().__init__(s, steps)
        original = int(s["original_inference_steps"])
        k = s["num_train_timesteps"] // original
        origin = np.arange(1, original + 1) * k - 1
        if steps > original:
            raise InvalidInputError(f"an LCM samples in at most its {original} original steps, got {steps}")
        origin = origin[::-1].copy()
        indices = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[indices].astype(np.int64)
        self.final = f32(1.0) if s["set_alpha_to_one"] else self.alphas_cumprod[0]

    def step(self, output, i, x, draw):
        t = int(self.timesteps[i])
        prev = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final
        scaled = t * self.s["timestep_scaling"]
        c_skip = 0.25 / (scaled**2 + 0.25)
        c_out = scaled / (scaled**2 + 0.25) ** 0.5
        x0, _ = self._x0_eps(output, t, x)
        if self.s["clip_sample"]:
            x0 = np.clip(x0, -self.s["clip_sample_range"], self.s["clip_sample_range"])
        denoised = c_out * x0 + c_skip * x
        if i != len(self.timesteps) - 1:
            return (np.sqrt(a_prev) * denoised + np.sqrt(f32(1) - a_prev) * draw(output.shape)).astype(np.float32)
        return denoised.astype(np.float32)


def guidance_embedding(w: np.ndarray, dim: int) -> np.ndarray:
    """LCM's guidance-scale embedding of ``w`` (guidance_scale - 1), as diffusers' get_guidance_scale_embedding."""
    w = np.asarray(w, np.float32) * f32(1000.0)
    half = dim // 2
    scale = np.log(f32(10000.0)) / f32(half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -scale).astype(np.float32)
    emb = w[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)
