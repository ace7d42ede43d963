"""edge-sdk distill on a diffusion UNet: a tiny random UNet2DModel with 2 layers per block -> a
block-removed student with 1, trained data-free on the teacher's own samples. Seconds per run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_sdk.cli import main
from edge_sdk.distillation import DistillationOptions, distill

# one xdist worker runs this module (pytest -n ... --dist loadgroup): the teachers and students trained here are built once
pytestmark = pytest.mark.xdist_group("diffusion_distillation")

# a random teacher predicts nothing like the data's noise: distil its outputs alone (no denoising term)
BASE = DistillationOptions(layers_per_block=1, steps=15, batch_size=8, learning_rate=2e-3, warmup_steps=2, save_every=0,
                           teacher_samples=16, denoise_weight=0.0)


@pytest.fixture(scope="session")
def unet_teacher(tmp_path_factory) -> Path:
    from edge_sdk.converters.tiny import build_unet

    return build_unet(tmp_path_factory.mktemp("unet-teacher") / "ddpm", seed=0, config_overrides={"layers_per_block": 2})


@pytest.fixture(scope="session")
def unet_student(unet_teacher, tmp_path_factory) -> Path:
    return distill(unet_teacher, tmp_path_factory.mktemp("unet-student") / "student", None, BASE, progress=False)


def test_block_removed_student_learns_the_teachers_outputs_and_samples_without_torch(unet_student, tmp_path):
    import edge_sdk
    from edge_sdk.runtimes.image_generation import SamplingOptions

    record = json.loads((unet_student / "distill.json").read_text())
    heldout = record["heldout"]
    assert heldout["final"]["output_kd_mse"] < heldout["initial"]["output_kd_mse"], heldout
    assert record["student"]["layers_per_block"] == 1 and record["student"]["teacher_layers_per_block"] == 2
    assert record["student"]["parameters"] < record["teacher"]["parameters"]
    assert record["data"]["files"][0]["path"] == "the teacher's own samples"
    unet_config = json.loads((unet_student / "unet" / "config.json").read_text())
    assert unet_config["layers_per_block"] == 1
    package = edge_sdk.export(unet_student, tmp_path / "pkg", progress=False)
    result = edge_sdk.load(package).generate(SamplingOptions(num_images=2, steps=3, scheduler="ddim"))
    assert result.images.shape == (2, 16, 16, 3)


def test_bad_unet_input_gets_one_line_and_writes_nothing(unet_teacher, tmp_path):
    conditioned = tmp_path / "conditioned"
    (conditioned / "unet").mkdir(parents=True)
    (conditioned / "scheduler").mkdir()
    (conditioned / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (conditioned / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (conditioned / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    images = tmp_path / "images"
    images.mkdir()
    cases = [((conditioned, "--layers-per-block", "1"), "UNet2DConditionModel"),
             ((unet_teacher, "--layers-per-block", "3"), "the teacher has 2 per block"),
             ((unet_teacher, "--layers-per-block", "1", "--data", str(images)), "holds no images"),
             ((unet_teacher, "--keep-layers", "1"), "--layers-per-block N")]
    for (teacher, *flags), message in cases:
        output = tmp_path / "student"
        result = CliRunner().invoke(main, ["distill", str(teacher), "-o", str(output), "--steps", "1", "-q", *flags])
        assert result.exit_code == 1, (flags, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, (message, result.output)
        assert not output.exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> Path:
    """A tiny 1-channel DDPM trained on the digits for seconds: it makes blobs, not digits, but
    its samples depend on its steps as a real model's do (a random UNet's saturate)."""
    from edge_sdk.converters.tiny import TINY_UNET
    from edge_sdk.converters.training import DDPMTrainingOptions, train_ddpm
    from edge_sdk.evaluation import digits

    images, _ = digits()
    output = tmp_path_factory.mktemp("digits-teacher") / "ddpm"
    train_ddpm(output, images[:512], {**TINY_UNET, "in_channels": 1, "out_channels": 1},
               DDPMTrainingOptions(steps=80, batch_size=32, max_seconds=None, warmup_steps=10, ema_decay=0.9))
    return output


@pytest.fixture(scope="module")
def step_student(digits_teacher, tmp_path_factory) -> Path:
    options = DistillationOptions(step_distill=1, teacher_steps=8, steps=60, batch_size=16, learning_rate=3e-4,
                                  warmup_steps=2, save_every=0, teacher_samples=16)
    return distill(digits_teacher, tmp_path_factory.mktemp("step-student") / "student", None, options, progress=False)


@pytest.fixture(scope="module")
def step_student_package(step_student, tmp_path_factory) -> Path:
    import edge_sdk

    return edge_sdk.export(step_student, tmp_path_factory.mktemp("step-package") / "pkg", progress=False)


def test_one_round_of_step_distillation_beats_the_teacher_at_half_the_steps(digits_teacher, step_student,
                                                                           step_student_package):
    """Progressive distillation: a student trained to take two teacher DDIM steps in one samples,
    at half the steps, closer to the teacher's full-step samples (same noise) than the teacher
    itself does at half the steps; its package samples at the trained step count by default."""
    import edge_sdk
    from edge_sdk.evaluation import psnr

    student = step_student
    record = json.loads((student / "distill.json").read_text())
    initial, final = record["heldout"]["initial"], record["heldout"]["final"]
    assert final["steps"] == 4 and final["teacher_steps"] == 8
    assert initial["psnr_db"] == pytest.approx(final["teacher_psnr_db"])  # the student starts as the teacher
    assert final["psnr_db"] > final["teacher_psnr_db"] + 1.0, record["summary"]
    scheduler = json.loads((student / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["distilled_steps"] == 4

    # the torch-free runtime, by default, samples the student in its 4 DDIM steps; the teacher (in
    # torch, through the runtime's own sampler) at 8 and 4 steps from the same noise
    import torch
    from diffusers import UNet2DModel

    from edge_sdk.runtimes.schedulers import Scheduler

    package = edge_sdk.load(step_student_package)
    noise = np.random.default_rng(7).standard_normal(package.noise_shape(8)).astype(np.float32)
    fast = package.sample(num_images=8, noise=noise)
    assert package.last_stats.steps == 4
    unet = UNet2DModel.from_pretrained(digits_teacher / "unet").eval()
    sampler = Scheduler.from_config(json.loads((digits_teacher / "scheduler" / "scheduler_config.json").read_text()), "ddim")

    def teacher(steps: int) -> np.ndarray:
        with torch.no_grad():
            x = sampler.denoise(lambda x, t: unet(torch.from_numpy(x), t).sample.numpy(), noise.copy(), steps)
        return (np.clip(x / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)

    reference = teacher(8)
    assert psnr(fast, reference) > psnr(teacher(4), reference) + 1.0


def test_tradeoffs_of_image_models_compare_samples_at_each_models_own_steps(digits_teacher, step_student_package,
                                                                           tmp_path):
    out = tmp_path / "tradeoffs"
    result = CliRunner().invoke(main, ["tradeoffs", str(digits_teacher), "--package", str(step_student_package),
                                       "--device", "raspberry-pi-5", "-o", str(out), "--weights", "fp32", "--images", "8",
                                       "--steps", "8", "--min-runs", "1", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "tradeoffs.json").read_text())
    assert report["kind"] == "images"
    rows = {row["name"]: row for row in report["rows"]}
    teacher, student = rows["teacher-fp32"], rows[step_student_package.name]
    assert teacher["quality"]["identical"] and teacher["quality"]["steps"] == 8
    assert student["quality"]["steps"] == 4 and 10 < student["quality"]["psnr_db"] < 100
    assert student["bench"]["steps"] == 4 and teacher["bench"]["steps"] == 8  # seconds per image at each model's own steps
    assert "PSNR vs teacher dB" in (out / "tradeoffs.md").read_text() and (out / "tradeoffs.png").stat().st_size > 1000
    refused = CliRunner().invoke(main, ["tradeoffs", str(digits_teacher), "--device", "raspberry-pi-5", "-o", str(out),
                                        "--data", str(tmp_path)])
    assert refused.exit_code == 1 and "drop --data" in refused.output


def test_step_distillation_refuses_what_it_cannot_do(unet_teacher, tmp_path):
    cases = [(("--step-distill", "2", "--teacher-steps", "6"), "multiple of 4"),
             (("--step-distill", "1", "--feature-weight", "0.5"), "--feature-weight (block removal's loss)"),
             (("--step-distill", "1", "--layers-per-block", "1"), "both choose the student"),
             (("--teacher-steps", "8", "--drop-mid-block"), "add --step-distill")]
    for flags, message in cases:
        output = tmp_path / "student"
        result = CliRunner().invoke(main, ["distill", str(unet_teacher), "-o", str(output), "--steps", "1", "-q", *flags])
        assert result.exit_code == 1, (flags, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, (message, result.output)
        assert not output.exists()


ROUNDS = DistillationOptions(step_distill=3, teacher_steps=8, steps=2, batch_size=4, warmup_steps=1, save_every=0,
                             teacher_samples=8)


@pytest.fixture(scope="module")
def three_rounds(digits_teacher, tmp_path_factory) -> Path:
    return distill(digits_teacher, tmp_path_factory.mktemp("rounds") / "whole", None, ROUNDS, progress=False)


@pytest.mark.parametrize("stop_after", [5, 4], ids=["inside-a-round", "at-a-round-boundary"])
def test_step_distillation_resumes_to_the_uninterrupted_result(digits_teacher, three_rounds, stop_after, tmp_path):
    """3 rounds of 2 steps (8 -> 4 -> 2 -> 1 DDIM steps). Inside a round the round's teacher (the
    previous round's student) travels in the checkpoint; at a boundary the resumed run starts the
    next round from the checkpointed student. Either way: the uninterrupted result."""
    import os
    import signal

    from edge_sdk.errors import EdgeSDKError

    def interrupt(step, loss):
        if step == stop_after - 2:  # the request is seen at the end of the next step
            os.kill(os.getpid(), signal.SIGINT)

    output = tmp_path / "resumed"
    with pytest.raises(EdgeSDKError, match=f"after step {stop_after} of 6"):
        distill(digits_teacher, output, None, ROUNDS, progress=False, on_step=interrupt)
    distill(digits_teacher, output, None, ROUNDS, progress=False, resume=True)
    first, second = (json.loads((p / "distill.json").read_text()) for p in (three_rounds, output))
    assert len(first["loss_curve"]) == 6 and first["student"]["steps"] == 1
    assert second["loss_curve"] == pytest.approx(first["loss_curve"], abs=1e-6)
    assert json.loads((output / "scheduler" / "scheduler_config.json").read_text())["distilled_steps"] == 1
