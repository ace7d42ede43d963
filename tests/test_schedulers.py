"""The numpy DDPM/DDIM samplers (diffusion runtime) step for step against diffusers' schedulers."""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk.errors import InvalidInputError
from edge_sdk.runtimes.schedulers import Scheduler

CONFIGS = [
    dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", clip_sample=True),
    dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
         prediction_type="v_prediction", clip_sample=False, timestep_spacing="trailing"),
    dict(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2", prediction_type="sample", clip_sample=True,
         timestep_spacing="linspace", set_alpha_to_one=False, variance_type="fixed_large"),
]


def _fake_unet(sample: np.ndarray, t: int) -> np.ndarray:
    """A deterministic stand-in for the model: any function of (sample, t) exercises the loop."""
    return np.tanh(sample * 0.7 + 0.001 * t).astype(np.float32)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kind, eta", [("ddpm", None), ("ddim", 0.0), ("ddim", 0.7)])
def test_sampling_loop_matches_diffusers(kind, eta, config):
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler

    settings = {k: v for k, v in config.items() if kind == "ddim" or k != "set_alpha_to_one"}
    if kind == "ddim":
        settings.pop("variance_type", None)
    reference = (DDPMScheduler if kind == "ddpm" else DDIMScheduler)(**settings)
    ours = Scheduler.from_config(settings, kind)
    steps = 25
    reference.set_timesteps(steps)
    timesteps = ours.timesteps(steps)
    assert list(timesteps) == [int(t) for t in reference.timesteps]
    rng = np.random.default_rng(0)
    start = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    noises = rng.standard_normal((steps, 2, 3, 8, 8)).astype(np.float32)
    x_ours, x_ref = start.copy(), torch.from_numpy(start.copy())
    # diffusers' DDPM draws its noise from a generator: a twin generator replays the same draws for us
    generator, twin = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for i, t in enumerate(timesteps):
        if kind == "ddpm":
            noise = torch.randn(start.shape, generator=twin).numpy() if int(t) > 0 else None
        else:
            noise = noises[i]
        x_ours = ours.step(_fake_unet(x_ours, int(t)), int(t), x_ours, previous=ours.previous_of(timesteps, i),
                           eta=eta or 0.0, noise=noise)
        output = torch.from_numpy(_fake_unet(x_ref.numpy(), int(t)))
        if kind == "ddpm":
            x_ref = reference.step(output, t, x_ref, generator=generator).prev_sample
        else:
            x_ref = reference.step(output, t, x_ref, eta=eta, variance_noise=torch.from_numpy(noise)).prev_sample
    assert np.max(np.abs(x_ours - x_ref.numpy())) < 1e-4


def test_bad_settings_are_clear_errors():
    scheduler = Scheduler.from_config({"num_train_timesteps": 100}, "ddim")
    with pytest.raises(InvalidInputError, match="between 1 and the model's 100 training timesteps"):
        scheduler.timesteps(101)
    with pytest.raises(InvalidInputError, match="unknown scheduler"):
        Scheduler.from_config({}, "euler")
    with pytest.raises(InvalidInputError, match="beta_schedule"):
        Scheduler.from_config({"beta_schedule": "cubic"}, "ddpm")
