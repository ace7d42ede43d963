"""Text-to-image packages (issue 33): a diffusers Stable Diffusion pipeline exported to four graphs and
sampled in numpy, image for image as diffusers samples it (same prompt, same seed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from edge_sdk.converters.export import export
from edge_sdk.runtimes.diffusion_schedulers import NAMES, make_sampler
from edge_sdk.runtimes.image_generation import SamplingOptions
from edge_sdk.runtimes.text_to_image import GenerationCancelled
from edge_sdk.runtimes.torch_noise import TorchGenerator

import edge_sdk
from edge_sdk.errors import (
    InvalidInputError,
    ModelLoadError,
    UnsupportedArchitectureError,
)
from edge_sdk.text_to_image_eval import ssim

PROMPT = "a red fox in the snow"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of float images in [0, 1]."""
    error = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if error == 0 else 10 * np.log10(1 / error)


def _pipeline(directory, cls_name: str = "StableDiffusionPipeline", scheduler: str | None = None):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(directory)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        cls, implied = NAMES[scheduler]
        pipe.scheduler = getattr(diffusers, cls).from_config({**pipe.scheduler.config, **implied})
    return pipe


def _diffusers(pipe, seed: int, **call) -> np.ndarray:
    import torch

    return pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **call).images


@pytest.mark.parametrize("name", [n for n in NAMES])
def test_schedulers_step_as_diffusers_does(name):
    """Every scheduler, on a stand-in model, over 3 and 12 steps: the same timesteps and the same trajectory
    as diffusers' class (its noise from the same torch generator as ours)."""
    import diffusers
    import torch
    from edge_sdk.converters.tiny import SD_SCHEDULER

    def model(x, t):
        return (0.3 * x + 0.2 * np.sin(float(t) / 100.0 + x)).astype(np.float32)

    cls, implied = NAMES[name]
    for steps in (3, 12):
        theirs = getattr(diffusers, cls).from_config({**SD_SCHEDULER, **implied})
        theirs.set_timesteps(steps)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((1, 4, 8, 8), generator=generator) * theirs.init_noise_sigma
        for t in theirs.timesteps:
            out = torch.from_numpy(model(theirs.scale_model_input(x, t).numpy(), t))
            kwargs = {"generator": generator} if "generator" in theirs.step.__code__.co_varnames else {}
            x = theirs.step(out, t, x, **kwargs).prev_sample
        ours = make_sampler(name, {"class": cls, **SD_SCHEDULER}, steps)
        noise = TorchGenerator(0)
        y = noise.randn((1, 4, 8, 8)) * np.float32(ours.init_noise_sigma)
        np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())
        for i, t in enumerate(ours.timesteps):
            y = ours.step(model(ours.scale(y, i), t), i, y, noise.randn)
        assert np.abs(y - x.numpy()).max() < 1e-4 * max(1.0, float(np.abs(x.numpy()).max()))


@pytest.mark.parametrize("scheduler", ["pndm", "ddim", "euler", "euler-ancestral", "dpm++2m", "dpm++2m-karras"])
def test_fp32_package_matches_stable_diffusion_pipeline(scheduler, tiny_sd, sd_package):
    """Same prompt, negative prompt and seed: the package's image is diffusers' (PSNR >= 40 dB), and the
    negative prompt moves both the same way."""
    pipe = _pipeline(tiny_sd, scheduler=scheduler)
    gen = edge_sdk.load(sd_package())
    plain_ref = _diffusers(pipe, 7, prompt=PROMPT, num_inference_steps=8)
    plain = gen.generate(prompt=PROMPT, steps=8, seed=7, scheduler=scheduler, output="float").images
    negative_ref = _diffusers(pipe, 7, prompt=PROMPT, negative_prompt="a blurry dark photo", num_inference_steps=8)
    negative = gen.generate(prompt=PROMPT, negative_prompt="a blurry dark photo", steps=8, seed=7, scheduler=scheduler,
                            output="float").images
    assert plain.shape == plain_ref.shape == (1, 32, 32, 3)
    assert psnr(plain, plain_ref) >= 40 and psnr(negative, negative_ref) >= 40
    moved, moved_ref = np.abs(negative - plain).mean(), np.abs(negative_ref - plain_ref).mean()
    assert moved > 1e-3 and moved == pytest.approx(moved_ref, rel=0.05)


def test_lcm_with_a_tiny_vae_matches_diffusers(tiny_lcm, tmp_path):
    """A latent consistency model (guidance as an embedding, 1 and 4 steps) with an AutoencoderTiny VAE."""
    package = export(tiny_lcm, tmp_path / "lcm", progress=False)
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["model"]["vae"]["class"] == "AutoencoderTiny" and manifest["scheduler"]["class"] == "LCMScheduler"
    pipe = _pipeline(tiny_lcm, "LatentConsistencyModelPipeline")
    gen = edge_sdk.load(package)
    assert gen.is_lcm and gen.default_steps == 4 and gen.default_scheduler == "lcm"
    for steps, guidance in ((1, 8.5), (4, 3.0)):
        expected = _diffusers(pipe, 3, prompt=PROMPT, num_inference_steps=steps, guidance_scale=guidance)
        got = gen.generate(prompt=PROMPT, steps=steps, seed=3, guidance_scale=guidance, output="float").images
        assert psnr(got, expected) >= 40
    with pytest.raises(InvalidInputError, match="latent consistency model"):
        gen.generate(prompt=PROMPT, init_image=np.zeros((32, 32, 3), np.uint8))


@pytest.mark.parametrize("scheduler", ["pndm", "euler", "dpm++2m"])
def test_image_to_image_matches_diffusers(scheduler, tiny_sd, sd_package):
    from PIL import Image

    init = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    pipe = _pipeline(tiny_sd, "StableDiffusionImg2ImgPipeline", scheduler)
    expected = _diffusers(pipe, 5, prompt=PROMPT, image=Image.fromarray(init), strength=0.6, num_inference_steps=10)
    gen = edge_sdk.load(sd_package())
    got = gen.generate(prompt=PROMPT, init_image=init, strength=0.6, steps=10, seed=5, scheduler=scheduler, output="float")
    assert psnr(got.images, expected) >= 40
    assert got.stats.steps < 10  # strength 0.6 runs the last 6 of 10 steps (PNDM: its warm-up step too)


def test_initial_noise_is_torch_generators(tiny_sd, sd_package):
    """The first latents a seed gives are torch.Generator's draws (within float32 ulps, the draws
    themselves the same: see torch_noise), and later draws continue the same stream."""
    import torch

    generator = torch.Generator().manual_seed(11)
    ours = TorchGenerator(11)
    for shape in ((1, 4, 16, 16), (2, 4, 8, 12), (1, 4, 5, 5)):
        expected = torch.randn(shape, generator=generator).numpy()
        got = ours.randn(shape)
        ulps = np.abs(got.view(np.int32).astype(np.int64) - expected.view(np.int32))
        assert ulps.max() <= 3 and (ulps == 0).mean() > 0.75


def test_tokenizer_pads_and_cuts_as_transformers(tiny_sd, sd_package):
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer")
    gen = edge_sdk.load(sd_package())
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
    for text in ("", PROMPT, "Hello, WORLD!  3.14  déjà vu", long):
        expected = reference(text, padding="max_length", max_length=77, truncation=True).input_ids
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert gen.tokenize([text])[0].tolist() == expected
        assert bool(caught) == (text == long)  # a prompt over 77 tokens is cut with a warning
    with pytest.warns(UserWarning, match="longer than CLIP's 77 tokens"):
        gen.generate(prompt=long, steps=1)


def test_bad_input_is_refused_clearly(tiny_sd, sd_package, tmp_path):
    gen = edge_sdk.load(sd_package())
    for fields, message in [({"width": 36}, "multiple of 8"), ({"height": 0}, "multiple of 8"),
                            ({"steps": 0}, "steps must be"), ({"guidance_scale": -1.0}, "guidance_scale must be"),
                            ({"strength": 0.0}, "strength must be"), ({"prompt": 3}, "prompt must be a string")]:
        with pytest.raises(InvalidInputError, match=message):
            SamplingOptions(**fields)
    deeper = edge_sdk.load(sd_package())
    deeper._unet = {**deeper._unet, "downsampling": 8}  # as SD's UNet: 3 downsamplings, 64-pixel multiples with its VAE
    with pytest.raises(InvalidInputError, match="width 40 is not a multiple of 16"):
        deeper.generate(prompt=PROMPT, width=40, height=32, steps=1)
    with pytest.raises(InvalidInputError, match="ddpm is for unconditional"):
        gen.generate(prompt=PROMPT, scheduler="ddpm", steps=1)
    with pytest.warns(UserWarning, match="negative prompt is ignored"):  # as diffusers (which says nothing)
        gen.generate(prompt=PROMPT, negative_prompt="fog", guidance_scale=1.0, steps=1)
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a PNG")
    with pytest.raises(InvalidInputError, match="is not an image"):
        gen.generate(prompt=PROMPT, init_image=str(not_image), steps=2)
    with pytest.raises(InvalidInputError, match="does not exist"):
        gen.generate(prompt=PROMPT, init_image=str(tmp_path / "missing.png"), steps=2)
    resized = gen.generate(prompt=PROMPT, init_image=np.full((50, 70, 3), 128, np.uint8), width=32, height=32, steps=4)
    assert resized.images.shape == (1, 32, 32, 3)  # an init image of another size is resized
    calls = []
    with pytest.raises(GenerationCancelled, match="after 2 of"):
        gen.generate(prompt=PROMPT, steps=6, progress=lambda done, total: calls.append(done) or done < 2)
    assert calls == [1, 2]
    images = gen.generate(prompt=PROMPT, steps=3, num_images=2, seed=1, width=48, height=32).images
    assert images.shape == (2, 32, 48, 3) and images.dtype == np.uint8 and not np.array_equal(images[0], images[1])


def test_pipelines_edge_sdk_cannot_export_are_refused_with_the_reason(tiny_sd, tmp_path):
    broken = tmp_path / "no-vae"
    shutil.copytree(tiny_sd, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="lacks its vae/ directory"):
        export(broken, tmp_path / "out", progress=False)
    xl = tmp_path / "sdxl"
    shutil.copytree(tiny_sd, xl)
    index = json.loads((xl / "model_index.json").read_text())
    (xl / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(UnsupportedArchitectureError, match="SDXL has two text encoders"):
        export(xl, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-vae", "sdxl"]  # nothing half-written beside them


@pytest.mark.parametrize("runtime, weights, mode", [("onnxruntime", "int8", None), ("openvino", "fp32", None),
                                                    ("openvino", "int8", None), ("onnxruntime", "int8", "static"),
                                                    ("openvino", "int8", "static")])
def test_engines_and_precisions_keep_the_image(runtime, weights, mode, sd_package):
    """Every engine and precision, hybrid included (the UNet's activations calibrated on the inputs the
    pipeline itself gives it, the other graphs' weights only), keeps the FP32 package's images."""
    package = sd_package(runtime, weights, mode)
    manifest = json.loads((package / "manifest.json").read_text())
    accuracy = manifest["accuracy"]["eval"]
    if mode == "static":
        recipe = manifest["precision"]["recipe"]
        assert recipe["unet"]["calibration"]["inputs"] == 16 and recipe["unet"]["calibration"]["prompts"] == 8
        ops = {role: {v["op"] for v in (recipe[role] or {}).get("layers", {}).values() if v.get("bits") == 8}
               for role in ("unet", "vae_decoder")}
        assert ops["unet"] and ops["unet"] != ops["vae_decoder"] or runtime == "openvino"
    assert accuracy["prompts"] == 4 and accuracy["ssim"] > 0.9
    assert accuracy["identical"] or accuracy["psnr_db"] > (60 if weights == "fp32" else 30)
    reference = edge_sdk.load(sd_package()).generate(prompt=PROMPT, steps=4, seed=2, output="float").images
    got = edge_sdk.load(package).generate(prompt=PROMPT, steps=4, seed=2, output="float").images
    assert psnr(got, reference) > (60 if weights == "fp32" else 30)


def test_ssim_is_structural_similarity():
    rng = np.random.default_rng(0)
    image = (rng.random((2, 20, 24, 3)) * 255).astype(np.uint8)
    assert ssim(image, image) == pytest.approx(1.0)
    slightly = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    very = np.clip(image + rng.normal(0, 40, image.shape), 0, 255).astype(np.uint8)
    assert 1 > ssim(slightly, image) > ssim(very, image) > 0
    x, y = image[0, :7, :7, 0].astype(np.float64), very[0, :7, :7, 0].astype(np.float64)  # one window, by the formula
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cov = ((x - x.mean()) * (y - y.mean())).sum() / 48
    expected = ((2 * x.mean() * y.mean() + c1) * (2 * cov + c2)) / (
        (x.mean() ** 2 + y.mean() ** 2 + c1) * (x.var(ddof=1) + y.var(ddof=1) + c2))
    assert ssim(very[:1, :7, :7, :1], image[:1, :7, :7, :1]) == pytest.approx(expected)


def test_sampling_imports_no_torch_and_the_cli_writes_the_image(sd_package, tmp_path):
    package = sd_package()
    script = ("import sys, edge_sdk; gen = edge_sdk.load(sys.argv[1]); "
              "images = gen.generate(prompt='a fox', negative_prompt='fog', steps=3, seed=0, scheduler='euler-ancestral').images; "
              "assert images.shape == (1, 32, 32, 3); "
              "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", script, str(package)], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
    out = tmp_path / "fox.png"
    cli = [sys.executable, "-m", "edge_sdk.cli", "sample", str(package), "-p", "a fox", "--steps", "3", "-q"]
    done = subprocess.run(cli + ["-o", str(out), "--size", "48x32", "-n", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from PIL import Image

    with Image.open(out) as grid:
        assert grid.size == (48 * 2 + 2, 32)  # two images side by side, 2 pixels apart
    again = subprocess.run(cli + ["-o", str(tmp_path / "again.png"), "--init-image", str(out), "--strength", "0.5"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    evaluated = subprocess.run([sys.executable, "-m", "edge_sdk.cli", "eval", str(package), "--reference", str(package),
                                "--steps", "2", "--json"], capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads(evaluated.stdout)
    assert figures["identical"] and figures["prompts"] == 4 and figures["steps"] == 2
    refused = subprocess.run(cli[:5] + ["-o", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert refused.returncode != 0 and "give a --prompt" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_the_digits_text_to_image_model_draws_the_prompted_digit(digits_t2i, tmp_path):
    """A text-to-image model trained here: with guidance, at least 80 % of its images are read by the
    digits judge as the digit the prompt names (chance: 10 %), more than without guidance."""
    from edge_sdk.text_to_image_eval import adherence

    gen = edge_sdk.load(export(digits_t2i, tmp_path / "digits", progress=False))
    assert gen.default_size == (16, 16) and gen.tokenize(["a handwritten seven"]).shape == (1, 16)
    guided = adherence(gen, guidance_scale=3.0, per_digit=5, steps=10)
    unguided = adherence(gen, guidance_scale=1.0, per_digit=5, steps=10)
    assert guided["images"] == 50 and guided["adherence"] >= 80, guided
    assert guided["adherence"] > unguided["adherence"]


def test_static_shapes_for_the_npu_profile(tiny_sd, sd_package, tmp_path):
    """The NPU profile's package: every graph fixed to one image at the package's own size (the UNet to the
    guided batch of 2), drawing what the dynamic package draws; other sizes are refused."""
    from edge_sdk.converters.export import options_for_device

    options = options_for_device("intel-core-ultra-npu", weights="int8")
    package = export(tiny_sd, tmp_path / "npu", options, progress=False)
    manifest = json.loads((package / "manifest.json").read_text())
    shapes = {g["role"]: [i["shape"] for i in g["inputs"]] for g in manifest["graphs"]}
    assert shapes["unet"][0] == [2, 4, 16, 16] and shapes["text_encoder"] == [[1, 77]]
    assert shapes["vae_encoder"] == [[1, 3, 32, 32]] and shapes["vae_decoder"] == [[1, 4, 16, 16]]
    gen = edge_sdk.load(package)
    assert gen.static_shapes
    dynamic = edge_sdk.load(sd_package("openvino", "int8"))
    for call in ({"num_images": 3}, {"guidance_scale": 1.0}, {"init_image": np.zeros((40, 24, 3), np.uint8)}):
        got = gen.generate(prompt=PROMPT, steps=3, seed=1, output="float", **call).images
        expected = dynamic.generate(prompt=PROMPT, steps=3, seed=1, output="float", width=32, height=32, **call).images
        assert got.shape == expected.shape and psnr(got, expected) > 40
    with pytest.raises(InvalidInputError, match="static shapes"):
        gen.generate(prompt=PROMPT, width=48, steps=1)
