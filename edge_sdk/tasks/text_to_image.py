"""``text-to-image``: a Stable-Diffusion-family pipeline (CLIP text encoder, conditional UNet, VAE)
sampled in numpy with classifier-free guidance and diffusers' schedulers."""

from __future__ import annotations

from edge_sdk.tasks import Budget, Projection, Task, register
from edge_sdk.tasks.image_generation import SECONDS_PER_IMAGE, SECONDS_PER_STEP


def workload(model, options):
    """One guided image at the package's own size, with ``options.steps`` steps of its scheduler."""

    settings = model.options(prompt="a photograph of a lighthouse on a rocky coast", num_images=1, steps=options.steps,
                             seed=0)

    def run() -> dict:
        s = model.generate(settings).stats
        return {SECONDS_PER_STEP.key: s.seconds_per_step, SECONDS_PER_IMAGE.key: s.total_seconds / s.images}

    return run, {"steps": options.steps, "scheduler": model.default_scheduler, "batch": 1,
                 "guidance_scale": settings.guidance_scale, "size": list(model.default_size)}


def figures(metrics: dict) -> str:
    return f"{metrics[SECONDS_PER_STEP.key]:.2f} s/step, {metrics[SECONDS_PER_IMAGE.key]:.1f} s/image"


TASK = register(Task(
    name="text-to-image",
    summary="generate images from a text prompt with a latent diffusion pipeline",
    runtime="edge_sdk.runtimes.text_to_image:TextToImageGenerator",
    headline=SECONDS_PER_STEP,
    metrics=(SECONDS_PER_STEP, SECONDS_PER_IMAGE),
    workload=workload,
    figures=figures,
    projection=Projection(compute_bound=(SECONDS_PER_STEP.key, SECONDS_PER_IMAGE.key)),
    budgets=(Budget("text_to_image_seconds_per_step", SECONDS_PER_STEP),),
    exporter="edge_sdk.converters.text_to_image:export_pipeline",
    accuracy="edge_sdk.text_to_image_eval:text_to_image_accuracy",
    command="sample",
    try_it='edge-sdk sample {path} --prompt "a watercolor fox" -o fox.png',
    calibration="sampling",
))
