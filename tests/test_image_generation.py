"""Diffusion UNet packages: export, torch-free DDPM/DDIM sampling, parity with diffusers pipelines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import edge_sdk
from edge_sdk.converters.export import ExportOptions, export
from edge_sdk.quantization import QuantizationOptions
from edge_sdk.errors import InvalidInputError
from edge_sdk.runtimes.image_generation import SamplingOptions


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_fp32_package_matches_diffusers_pipeline(kind, tiny_unet, unet_package):
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(tiny_unet / "unet")
    config = json.loads((tiny_unet / "scheduler" / "scheduler_config.json").read_text())
    if kind == "ddpm":
        pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(config))
        steps, call = 20, {}
    else:
        pipeline = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(config))
        steps, call = 20, {"eta": 0.0}
    pipeline.set_progress_bar_config(disable=True)
    generator, twin = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    expected = pipeline(batch_size=2, generator=generator, num_inference_steps=steps, output_type="np", **call).images
    # the same draws: the initial noise, then (DDPM) each step's noise, from a twin generator
    shape = (2, 3, 16, 16)
    noise = torch.randn(shape, generator=twin).numpy()
    generated = edge_sdk.load(unet_package).sample(
        num_images=2, steps=steps, scheduler=kind, noise=noise, output="float",
        step_noise=lambda s: torch.randn(s, generator=twin).numpy())
    assert generated.shape == expected.shape == (2, 16, 16, 3)
    assert np.abs(generated - expected).mean() < 1e-3


def test_sample_returns_uint8_images_and_refuses_bad_arguments(unet_package):
    gen = edge_sdk.load(unet_package)
    images = gen.sample(num_images=3, steps=5, seed=1, scheduler="ddim")
    assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 3)
    assert np.array_equal(images, gen.sample(num_images=3, steps=5, seed=1, scheduler="ddim"))  # seeded
    assert gen.last_stats.steps == 5 and gen.last_stats.seconds_per_step > 0
    result = gen.generate(SamplingOptions(num_images=3, steps=5, seed=1, scheduler="ddim"))
    assert np.array_equal(result.images, images) and result.stats is gen.last_stats
    stats = result.stats  # seconds_per_step is the whole call's wall time per step, the UNet's share is its own figure
    assert 0 < stats.unet_seconds_per_step <= stats.seconds_per_step == pytest.approx(stats.total_seconds / 5)
    with pytest.raises(InvalidInputError, match="between 1 and the model's 1000 training timesteps"):
        gen.sample(steps=1001)
    for bad in (0, -2):
        with pytest.raises(InvalidInputError, match="number of images must be >= 1"):
            gen.sample(num_images=bad)
    with pytest.raises(InvalidInputError, match="unknown scheduler"):
        gen.sample(scheduler="euler")
    with pytest.raises(InvalidInputError, match="noise must have shape"):
        gen.sample(num_images=2, noise=np.zeros((1, 3, 16, 16)))
    for fields, message in [({"eta": 2.0}, "eta must be in"), ({"output": "png"}, "output must be"),
                            ({"seed": -1}, "seed must be"), ({"steps": 2.5}, "steps must be an integer")]:
        with pytest.raises(InvalidInputError, match=message):
            SamplingOptions(**fields)


@pytest.mark.parametrize("runtime, weights, mode", [("onnxruntime", "int8", None), ("onnxruntime", "int8", "dynamic"),
                                                    ("onnxruntime", "int8", "static"), ("openvino", "fp32", None),
                                                    ("openvino", "int8", None), ("openvino", "int8", "static")])
def test_runtimes_and_precisions_sample(runtime, weights, mode, tiny_unet, unet_package, tmp_path):
    calibration = "sampling" if mode == "static" else None
    quantization = QuantizationOptions(weights=weights, mode=mode, calibration=calibration, num_samples=12)
    package = export(tiny_unet, tmp_path / "pkg", ExportOptions(runtime=runtime, quantization=quantization), progress=False)
    recipe = json.loads((package / "manifest.json").read_text())["precision"]["recipe"] or {"layers": {}}
    convolutions = [v for v in recipe["layers"].values() if v["op"] in ("Conv", "ConvInteger", "Convolution")]
    if weights == "int8":  # the convolutions (most of a UNet) are 8-bit, except ONNX Runtime weight-only (no such kernel)
        assert convolutions and {v["bits"] for v in convolutions} == ({None} if (runtime, mode) == ("onnxruntime", None) else {8})
    if mode == "static":  # calibrated along trajectories that span the timestep range, recorded in the manifest
        calibrated = recipe["calibration"]
        assert calibrated["inputs"] == 12 and calibrated["trajectories"] == 4
        assert calibrated["timesteps"][0] < 100 and calibrated["timesteps"][1] > 800
    gen = edge_sdk.load(package, threads=1)
    images = gen.sample(num_images=2, steps=4, seed=0, scheduler="ddim", output="float")
    reference = edge_sdk.load(unet_package).sample(num_images=2, steps=4, seed=0, scheduler="ddim", output="float")
    assert images.shape == reference.shape and np.isfinite(images).all()
    if weights == "fp32":
        assert np.abs(images - reference).mean() < 1e-3
    # accuracy at export: the package's images against the FP32 graph's, from the same noise
    measured = json.loads((package / "manifest.json").read_text())["accuracy"]["eval"]
    assert measured["reference"] == "FP32 ONNX graph" and measured["images"] == 4 and measured["summary"].startswith("vs FP32")
    if weights == "fp32":
        assert measured["identical"] or measured["psnr_db"] > 40
    else:
        assert measured["identical"] or 0 < measured["psnr_db"] < 200


def test_static_int8_needs_sampling_calibration(tiny_unet, tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="needs calibration data.*--calibration sampling"):
        QuantizationOptions(weights="int8", mode="static")
    (tmp_path / "texts.txt").write_text("some text")
    static = QuantizationOptions(weights="int8", mode="static", calibration=tmp_path / "texts.txt")
    with pytest.raises(InvalidInputError, match="own sampling trajectories.*--calibration sampling"):
        export(tiny_unet, tmp_path / "pkg", ExportOptions(quantization=static), progress=False)
    sampling = QuantizationOptions(weights="int8", mode="static", calibration="sampling")
    with pytest.raises(InvalidInputError, match="is for diffusion models; a text-generation model calibrates on text"):
        export(tiny_model_dir("LlamaForCausalLM"), tmp_path / "pkg", ExportOptions(quantization=sampling), progress=False)
    assert not (tmp_path / "pkg").exists()


def test_sampling_imports_no_torch(unet_package):
    code = (f"import sys, edge_sdk; x = edge_sdk.load({str(unet_package)!r}).sample(num_images=1, steps=3); "
            "assert x.shape == (1, 16, 16, 3); bad = [m for m in ('torch', 'diffusers') if m in sys.modules]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cli_sample_writes_a_png_grid_and_refuses_bad_arguments(unet_package, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from edge_sdk.cli import main

    runner = CliRunner()
    done = runner.invoke(main, ["sample", str(unet_package), "-o", str(tmp_path / "grid.png"), "-n", "4", "--steps", "3",
                                "--individual", "-q"])
    assert done.exit_code == 0, done.output
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (2 * 16 + 2, 2 * 16 + 2) and grid.mode == "RGB"
    assert Image.open(tmp_path / "grid-3.png").size == (16, 16)
    (tmp_path / "a-file").write_text("x")
    for args, message in [(["-o", str(tmp_path / "a-file" / "g.png")], "does not exist"),
                          (["-o", str(tmp_path / "g.png"), "-n", "0"], "number of images must be >= 1"),
                          (["-o", str(tmp_path / "g.png"), "-n", "-3"], "number of images must be >= 1"),
                          (["-o", str(tmp_path / "g.png"), "--steps", "1001"], "training timesteps")]:
        done = runner.invoke(main, ["sample", str(unet_package), "-q", *args])
        assert done.exit_code == 1 and message in done.output, done.output
        assert len(done.output.strip().splitlines()) == 1
    assert not (tmp_path / "g.png").exists()


def test_cli_eval_compares_images_from_the_same_noise(unet_package, tmp_path):
    from click.testing import CliRunner

    from edge_sdk.cli import main
    from edge_sdk.evaluation import psnr

    runner = CliRunner()
    done = runner.invoke(main, ["eval", str(unet_package), "--reference", str(unet_package), "-n", "2", "--steps", "3", "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["images"] == 2 and result["identical"] is True and result["psnr_db"] is None and result["mean_abs_diff"] == 0.0
    done = runner.invoke(main, ["eval", str(unet_package), "-n", "2", "--steps", "3", "--digits"])  # RGB, not digits
    assert done.exit_code == 1 and "single-channel" in done.output and len(done.output.strip().splitlines()) == 1
    a = np.zeros((2, 4, 4, 1), np.uint8)
    assert psnr(a, a + 1) == pytest.approx(48.13, abs=0.01)  # 10 log10(255^2 / 1)


def test_train_ddpm_writes_a_pipeline_that_exports_and_the_digits_judge_separates_digits_from_noise(tmp_path):
    from edge_sdk.converters.training import DDPMTrainingOptions, train_ddpm
    from edge_sdk.evaluation import DigitsJudge, digits

    images, labels = digits()
    assert images.shape == (1797, 16, 16) and 0.0 <= images.min() and images.max() <= 1.0 and set(labels) == set(range(10))
    config = dict(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                  norm_num_groups=8)
    report = train_ddpm(tmp_path / "ddpm", images[:64], config, DDPMTrainingOptions(steps=3, batch_size=8, max_seconds=None))
    assert report["steps"] == 3 and np.isfinite(report["loss_last_50"])
    package = export(tmp_path / "ddpm", tmp_path / "pkg", progress=False)
    samples = edge_sdk.load(package).sample(num_images=2, steps=3, scheduler="ddim")
    assert samples.shape == (2, 16, 16, 1)
    judge = DigitsJudge()
    real = judge.judge((images[-200:, ..., None] * 255).round().astype(np.uint8))
    noise = judge.judge(np.random.default_rng(0).integers(0, 256, (200, 16, 16, 1), dtype=np.uint8))
    assert judge.held_out_accuracy > 95 and real.coverage == 10 and real.confidence > noise.confidence + 20
