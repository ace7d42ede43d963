"""``unconditional-image-generation``: a diffusion UNet sampled by numpy DDPM / DDIM loops."""

from __future__ import annotations

from edge_sdk.tasks import Budget, Metric, Projection, Task, register

# wall time of the whole sampling loop divided by its steps (UNet, scheduler and copies)
SECONDS_PER_STEP = Metric("seconds_per_step", "s/step", "s", higher_is_better=False)
SECONDS_PER_IMAGE = Metric("seconds_per_image", "s/image", "s", higher_is_better=False)


def workload(model, options):
    """One image with ``options.steps`` deterministic DDIM steps."""

    settings = model.options(num_images=1, steps=options.steps, seed=0, scheduler="ddim")

    def run() -> dict:
        s = model.generate(settings).stats
        return {SECONDS_PER_STEP.key: s.seconds_per_step, SECONDS_PER_IMAGE.key: s.total_seconds / s.images}

    return run, {"steps": options.steps, "scheduler": "ddim", "batch": 1}


def figures(metrics: dict) -> str:
    return f"{metrics[SECONDS_PER_STEP.key] * 1e3:.1f} ms/step, {metrics[SECONDS_PER_IMAGE.key]:.2f} s/image"


TASK = register(Task(
    name="unconditional-image-generation",
    summary="generate images from noise with a diffusion UNet",
    runtime="edge_sdk.runtimes.image_generation:ImageGenerator",
    headline=SECONDS_PER_STEP,
    metrics=(SECONDS_PER_STEP, SECONDS_PER_IMAGE),
    workload=workload,
    figures=figures,
    projection=Projection(compute_bound=(SECONDS_PER_STEP.key, SECONDS_PER_IMAGE.key)),
    budgets=(Budget("image_seconds_per_step", SECONDS_PER_STEP),),
    aliases=("image-generation",),
    exporter="edge_sdk.converters.diffusion:export_unet",
    accuracy="edge_sdk.evaluation:image_package_accuracy",
    command="sample",
    try_it="edge-sdk sample {path} -o grid.png",
    calibration="sampling",
))
