"""edge-sdk distill on a diffusion UNet: a tiny random UNet2DModel with 2 layers per block -> a
block-removed student with 1, trained data-free on the teacher's own samples. Seconds per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.cli import main
from edge_sdk.distillation import DistillationOptions, distill

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
