"""How close a text-to-image package's images are to its FP32 reference's (PSNR and SSIM), from the
same prompts and seeds; runs on the device side too (numpy only).

The export measures every package this way (``accuracy.eval`` in its manifest): ``PROMPTS`` at the
package's own size (at most 256 pixels a side), scheduler and guidance, ``ACCURACY_STEPS`` steps (an
LCM its own 4), seed i for prompt i.
"""

from __future__ import annotations

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.evaluation import psnr

PROMPTS = ("a photograph of a lighthouse on a rocky coast at dusk", "a watercolor painting of a red fox in the snow",
           "a bowl of ramen on a wooden table, studio lighting", "an astronaut riding a horse, oil painting")
ACCURACY_STEPS = 10
MAX_SIDE = 256  # pixels a side at most for the export's measure


def ssim(images: np.ndarray, reference: np.ndarray, window: int = 7) -> float:
    """Mean structural similarity of uint8 (N, H, W, C) ``images`` against ``reference``: Wang et al.'s
    SSIM over ``window`` x ``window`` uniform windows (scikit-image's default), per channel, averaged."""
    if images.shape != reference.shape:
        raise InvalidInputError(f"cannot compare images of shape {images.shape} with {reference.shape}")
    x, y = images.astype(np.float64), reference.astype(np.float64)
    window = min(window, x.shape[1], x.shape[2])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def mean(a: np.ndarray) -> np.ndarray:  # the mean over every window (valid positions), by summed-area tables
        s = np.pad(a, ((0, 0), (1, 0), (1, 0), (0, 0))).cumsum(1).cumsum(2)
        w = window
        return (s[:, w:, w:] - s[:, :-w, w:] - s[:, w:, :-w] + s[:, :-w, :-w]) / (w * w)

    n = window * window
    mx, my = mean(x), mean(y)
    vx = (mean(x * x) - mx * mx) * n / (n - 1)
    vy = (mean(y * y) - my * my) * n / (n - 1)
    cov = (mean(x * y) - mx * my) * n / (n - 1)
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(value.mean())


def measured_size(generator) -> tuple[int, int]:
    """(height, width) the accuracy is measured at: the package's own size, at most ``MAX_SIDE`` pixels a
    side (rounded down to the size multiple), so that a 512x512 model is measured in minutes, not hours;
    a static-shape package at its only size."""
    if generator.static_shapes:
        return generator.default_size
    m = generator.size_multiple
    return tuple(max(min(side, MAX_SIDE) // m * m, m) for side in generator.default_size)


def compare(candidate, reference, prompts=PROMPTS, steps: int | None = None) -> dict:
    """``candidate`` and ``reference`` (loaded text-to-image packages) on ``prompts``, seed i for prompt i,
    at ``measured_size``."""
    steps = (candidate.default_steps if candidate.is_lcm else ACCURACY_STEPS) if steps is None else steps
    height, width = measured_size(candidate)
    ours, theirs, seconds = [], [], 0.0
    for seed, prompt in enumerate(prompts):
        ours.append(candidate.generate(prompt=prompt, steps=steps, seed=seed, height=height, width=width).images)
        seconds += candidate.last_stats.seconds_per_step
        if reference is not None:
            theirs.append(reference.generate(prompt=prompt, steps=steps, seed=seed, height=height, width=width).images)
    images = np.concatenate(ours)
    figures = {"prompts": len(prompts), "steps": steps, "scheduler": candidate.default_scheduler,
               "guidance_scale": candidate.default_guidance_scale, "size": [height, width],
               "seconds_per_step": seconds / len(prompts)}
    if reference is None:
        return figures
    others = np.concatenate(theirs)
    identical = bool(np.array_equal(images, others))
    figures.update(identical=identical, psnr_db=None if identical else psnr(images, others),
                   ssim=1.0 if identical else ssim(images, others),
                   mean_abs_diff=float(np.abs(images.astype(np.float64) - others).mean()))
    return figures


def adherence(generator, judge=None, per_digit: int = 10, steps: int | None = 15, guidance_scale: float | None = None,
              seed: int = 0, template: int = 0) -> dict:
    """Prompt adherence of a digits text-to-image package (``converters/text_to_image_training.py``): for
    each digit, ``per_digit`` images of its caption (seed ``seed + digit``), and the share the digits
    judge reads as that digit (percent), overall and per digit."""
    from edge_sdk.converters.text_to_image_training import caption
    from edge_sdk.evaluation import DigitsJudge

    judge = judge or DigitsJudge()
    hits, seconds = [], 0.0
    for digit in range(10):
        result = generator.generate(prompt=caption(digit, template), num_images=per_digit, steps=steps,
                                    guidance_scale=guidance_scale, seed=seed + digit)
        seconds += result.stats.total_seconds
        hits.append(int((judge.classify(result.images) == digit).sum()))
    return {"adherence": 100.0 * sum(hits) / (10 * per_digit), "per_digit": [100.0 * h / per_digit for h in hits],
            "images": 10 * per_digit, "steps": generator.last_stats.steps,
            "guidance_scale": generator.default_guidance_scale if guidance_scale is None else guidance_scale,
            "seconds_per_image": seconds / (10 * per_digit)}


def text_to_image_accuracy(request: dict, step=None) -> dict:
    """The export's accuracy measure (see ``edge_sdk.evaluation``'s per-task measures)."""
    from edge_sdk.runtimes import load

    candidate = load(request["candidate"], verify=False)
    reference = load(request["reference"], verify=False) if request.get("reference") else None
    figures = compare(candidate, reference)
    figures["reference"] = "FP32 ONNX graphs" if reference else None
    how = (f"{figures['prompts']} prompts at {figures['size'][1]}x{figures['size'][0]}, {figures['steps']} "
           f"{figures['scheduler']} steps, same seeds")
    if reference is None:
        figures["summary"] = "the package is the FP32 graphs"
    elif figures["identical"]:
        figures["summary"] = f"vs FP32: identical images ({how})"
    else:
        figures["summary"] = f"vs FP32: PSNR {figures['psnr_db']:.1f} dB, SSIM {figures['ssim']:.3f} ({how})"
    return figures
