"""Stable-Diffusion-family pipelines (diffusers) -> a ``text-to-image`` edge package.

Source: a diffusers pipeline directory whose ``model_index.json`` names a StableDiffusionPipeline
(or its image-to-image twin, or a LatentConsistencyModelPipeline) with a CLIP text encoder, a
``UNet2DConditionModel``, an ``AutoencoderKL`` or ``AutoencoderTiny`` VAE, a CLIP tokenizer and a
scheduler. Other pipeline classes (SDXL, SD3, Flux, ControlNet, ...) are refused with the reason.

    graph  text_encoder  input_ids (batch, 77) int64 -> last_hidden_state (batch, 77, hidden)
    graph  unet          sample (batch, 4, h, w), timestep (batch,) float32, encoder_hidden_states
                         (batch, 77, hidden)[, timestep_cond (batch, d): LCM's guidance embedding] -> noise
    graph  vae_decoder   latent (batch, 4, h, w), already divided by the VAE's scaling factor -> image in [-1, 1]
    graph  vae_encoder   image (batch, 3, H, W) in [-1, 1] -> mean, std (AutoencoderKL) or latent (AutoencoderTiny)

The sampling loop, classifier-free guidance and the schedulers run in numpy (``runtimes/text_to_image.py``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
from edge_sdk.converters.sources import ExportResult, Source, resolver

from edge_sdk.errors import ModelLoadError, UnsupportedArchitectureError

TOKENIZER_FILE = "tokenizer.json"
ROLES = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
GRAPH_FILES = {role: f"{role}.onnx" for role in ROLES}
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "LatentConsistencyModelPipeline",
             "LatentConsistencyModelImg2ImgPipeline")
# what each part of a supported pipeline may be: (library, classes)
PARTS = {"text_encoder": ("transformers", ("CLIPTextModel", "CLIPTextModelWithProjection")),
         "tokenizer": ("transformers", ("CLIPTokenizer", "CLIPTokenizerFast")),
         "unet": ("diffusers", ("UNet2DConditionModel",)),
         "vae": ("diffusers", ("AutoencoderKL", "AutoencoderTiny")),
         "scheduler": ("diffusers", ())}
_REFUSED = {  # pipeline class prefix -> why it is not exported (yet)
    "StableDiffusionXL": "SDXL has two text encoders and size / crop conditioning that edge-sdk does not run yet",
    "StableDiffusion3": "SD3 is a transformer (MMDiT) with three text encoders, not a UNet pipeline",
    "Flux": "Flux is a transformer (DiT) with a T5 text encoder, not a UNet pipeline",
    "StableDiffusionControlNet": "ControlNet adds a conditioning network edge-sdk does not export yet",
    "ControlNet": "ControlNet adds a conditioning network edge-sdk does not export yet",
    "StableDiffusionUpscale": "the upscaler takes a low-resolution image and noise level, not the text-to-image inputs",
    "StableDiffusionInpaint": "inpainting UNets take a mask and a masked image (9 input channels), not supported yet",
    "Kandinsky": "Kandinsky uses an image prior and a MoVQ decoder, not the Stable Diffusion layout",
    "PixArt": "PixArt is a transformer (DiT) with a T5 text encoder, not a UNet pipeline",
}
SCHEDULER_CLASSES = ("PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                     "DPMSolverMultistepScheduler", "LCMScheduler")


def read_pipeline(path: Path) -> dict | None:
    """The parts of a supported text-to-image pipeline directory (name -> [library, class]), None
    when ``path`` is not a diffusers pipeline with a conditional UNet; an error for one that edge-sdk
    cannot export, saying why."""
    index = path / "model_index.json"
    if not index.is_file():
        return None
    try:
        model_index = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {index}: {e}") from e
    name = str(model_index.get("_class_name", ""))
    unet = model_index.get("unet") or [None, None]
    if name in ("DDPMPipeline", "DDIMPipeline") or (isinstance(unet, list) and unet[1] == "UNet2DModel"):
        return None  # an unconditional pipeline: converters/diffusion.py
    for prefix, reason in _REFUSED.items():
        if name.startswith(prefix):
            raise UnsupportedArchitectureError(f"{path} is a {name}: {reason}; edge-sdk exports text-to-image pipelines "
                                               f"shaped like Stable Diffusion 1.x / 2.x ({', '.join(PIPELINES[:3])})")
    if name not in PIPELINES:
        raise UnsupportedArchitectureError(f"{path} is a {name or 'pipeline without a _class_name'}; edge-sdk exports "
                                           f"{', '.join(PIPELINES)} directories")
    parts = {}
    for part, (library, classes) in PARTS.items():
        entry = model_index.get(part)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise ModelLoadError(f"{path}'s model_index.json names no {part}; a text-to-image pipeline needs "
                                 f"{', '.join(PARTS)}")
        if classes and entry[1] not in classes:
            raise UnsupportedArchitectureError(f"{path}'s {part} is a {entry[1]}; edge-sdk exports {' or '.join(classes)}")
        if not (path / part).is_dir():
            raise ModelLoadError(f"{path} lacks its {part}/ directory (model_index.json names a {entry[1]}); "
                                 "save the whole pipeline with save_pretrained()")
        parts[part] = [library, entry[1]]
    if parts["scheduler"][1] not in SCHEDULER_CLASSES:
        raise UnsupportedArchitectureError(f"{path}'s scheduler is a {parts['scheduler'][1]}; edge-sdk runs "
                                           f"{', '.join(SCHEDULER_CLASSES)}")
    for part in ("text_encoder", "unet", "vae"):
        if not (path / part / "config.json").is_file():
            raise ModelLoadError(f"{path / part} has no config.json; save the whole pipeline with save_pretrained()")
    if not (path / "scheduler" / "scheduler_config.json").is_file():
        raise ModelLoadError(f"{path / 'scheduler'} has no scheduler_config.json")
    return {"pipeline": name, "parts": parts}


@resolver("text-to-image")
def _text_to_image_source(model: str, path: Path) -> Source | None:
    if not path.is_dir():
        return None
    found = read_pipeline(path)
    if found is None:
        return None
    from edge_sdk.converters.registry import ARCHITECTURES

    spec = ARCHITECTURES["StableDiffusionPipeline"]
    return Source(path, spec, {"pipeline": found["pipeline"], "parts": found["parts"]})


def scheduler_section(path: Path, class_name: str) -> dict:
    """The pipeline's scheduler config as the package keeps it: its class and every setting."""
    config = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return {"class": class_name, **config}


def _probes(shapes: dict):
    """One fixed input per graph, for the engines' checks that kept fusions reproduce the graph."""
    rng = np.random.default_rng(3)
    unet, vae, text = shapes["unet"], shapes["vae"], shapes["tokenizer"]
    size = unet["sample_size"]
    hidden = shapes["text_encoder"]["hidden_size"]
    ids = rng.integers(0, shapes["text_encoder"]["vocab_size"], (1, text["max_length"])).astype(np.int64)
    unet_feeds = {"sample": rng.standard_normal((1, unet["in_channels"], *size)).astype(np.float32),
                  "timestep": np.array([500.0], np.float32),
                  "encoder_hidden_states": rng.standard_normal((1, text["max_length"], hidden)).astype(np.float32)}
    if unet["time_cond_proj_dim"]:
        unet_feeds["timestep_cond"] = rng.standard_normal((1, unet["time_cond_proj_dim"])).astype(np.float32)
    latent = rng.standard_normal((1, vae["latent_channels"], *size)).astype(np.float32)
    image = np.clip(rng.standard_normal((1, 3, *(s * vae["scale_factor"] for s in size))), -1, 1).astype(np.float32)
    feeds = {"text_encoder": {"input_ids": ids}, "unet": unet_feeds, "vae_decoder": {"latent": latent},
             "vae_encoder": {"image": image}}

    def probe(role: str):
        def run(session) -> np.ndarray:
            return next(iter(session.run(feeds[role]).values()))

        return run

    return probe


CALIBRATION_PROMPTS = ("a photograph of a mountain lake at sunrise", "a portrait of an old sailor, oil painting",
                       "a cup of coffee on a desk, soft light", "a city street at night in the rain",
                       "a handwritten seven", "the digit 3", "a drawing of the number five", "a red fox in the snow")


def _calibration_feeds(work: Path, tokenizer: Path, sections: dict, count: int) -> tuple[list[dict], dict]:
    """UNet inputs for static calibration, recorded where the pipeline itself produces them: the FP32
    graphs sampling ``CALIBRATION_PROMPTS`` with guidance at the package's own size (at most 256 pixels
    a side) and scheduler (10 steps each), ``count`` of the calls kept, evenly spread over prompts and
    timesteps."""
    from edge_sdk.converters.onnxruntime_engine import describe
    from edge_sdk.runtimes.text_to_image import TextToImageGenerator
    from edge_sdk.text_to_image_eval import measured_size

    from edge_sdk.package import Package, write_manifest

    package = work / "calibration-package"
    package.mkdir(exist_ok=True)
    graphs = []
    for role in ROLES:
        name = GRAPH_FILES[role]
        data = sorted(p.name for p in work.glob(f"{name}.data*"))
        for file in (name, *data):
            os.link(work / file, package / file)
        graphs.append({"role": role, "path": name, **describe(package / name), "external_data": data})
    os.link(tokenizer, package / TOKENIZER_FILE)
    write_manifest(package, {"task": "text-to-image", "runtime": {"name": "onnxruntime", "min_version": "1.17"},
                             "precision": {"weights": "fp32", "activations": "fp32", "recipe": None}, "graphs": graphs,
                             **sections, "accuracy": {}})
    generator = TextToImageGenerator(Package.open(package))
    calls: list[dict] = []
    run_unet = generator.unet

    def recording(sample, timestep, context, timestep_cond=None):
        feeds = {"sample": sample.copy(), "timestep": np.full(len(sample), timestep, np.float32),
                 "encoder_hidden_states": context.copy()}
        if timestep_cond is not None:
            feeds["timestep_cond"] = timestep_cond.copy()
        calls.append(feeds)
        return run_unet(sample, timestep, context, timestep_cond)

    generator.unet = recording
    height, width = measured_size(generator)  # at most 256 pixels a side: a 512x512 model calibrates in minutes
    for seed, prompt in enumerate(CALIBRATION_PROMPTS):
        generator.generate(prompt=prompt, seed=seed, steps=None if generator.is_lcm else 10, height=height, width=width)
    keep = np.unique(np.linspace(0, len(calls) - 1, min(count, len(calls))).round().astype(int))
    timesteps = [float(calls[i]["timestep"][0]) for i in keep]
    shutil.rmtree(package, ignore_errors=True)
    return [calls[i] for i in keep], {"source": "the FP32 pipeline's own guided sampling runs",
                                      "prompts": len(CALIBRATION_PROMPTS), "inputs": len(keep), "size": [height, width],
                                      "timesteps": [min(timesteps), max(timesteps)]}


def _make_static(staging: Path, graph: dict, shapes: dict) -> dict:
    """Fix ``graph``'s dynamic axes for an NPU: one image at the UNet's own sample size (latents) and the
    VAE's factor times it (pixels); the UNet takes the guided batch of 2 (an LCM's: 1), the others 1."""
    from edge_sdk.converters.openvino_engine import make_static

    unet = shapes["unet"]
    height, width = unet["sample_size"]
    factor = shapes["vae"]["scale_factor"]
    role = graph["role"]
    batch = 2 if role == "unet" and not unet["time_cond_proj_dim"] else 1
    sizes = {"batch": batch}
    for entry in graph["inputs"]:
        for axis in entry["shape"]:
            if isinstance(axis, str) and axis != "batch":
                pixels = role == "vae_encoder"
                if "height" in axis:
                    sizes[axis] = height * (factor if pixels else 1)
                elif "width" in axis:
                    sizes[axis] = width * (factor if pixels else 1)
    return make_static(staging / graph["path"], graph, sizes)


def export_pipeline(source: Source, staging: Path, options, steps) -> ExportResult:
    """Write the four graphs, the tokenizer and the scheduler config into ``staging``."""
    from edge_sdk.converters.stage import run_stage
    from edge_sdk.converters.target import build_graph
    from edge_sdk.runtimes.backend import version_tuple

    quantization = options.quantization
    steps.expect(6)
    work = staging / "fp32-work"
    request = {"pipeline": str(source.path), "parts": source.extra["parts"], "work": str(work), "atol": options.atol}
    exported = run_stage("edge_sdk.converters.text_to_image_torch:export_fp32", request, work, steps, inputs=[source.path])
    shapes = exported["shapes"]
    os.replace(work / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    probe = _probes(shapes)
    parts = source.extra["parts"]
    sections = {
        "model": {"architecture": source.extra["pipeline"], "text_encoder": parts["text_encoder"][1],
                  "unet": shapes["unet"], "vae": shapes["vae"], "text_hidden_size": shapes["text_encoder"]["hidden_size"]},
        "tokenizer": {"path": TOKENIZER_FILE, **shapes["tokenizer"]},
        "scheduler": scheduler_section(source.path, parts["scheduler"][1]),
    }
    hybrid = quantization.effective_mode == "static"
    feeds, calibrated = None, None
    if hybrid:  # optimum-intel's hybrid mode: the UNet's activations too, the other graphs' weights only
        with steps.step("recording UNet inputs along the pipeline's own sampling runs"):
            feeds, calibrated = _calibration_feeds(work, staging / TOKENIZER_FILE, sections, quantization.num_samples)
    graphs, recipes, versions = [], {}, []
    with steps.step(f"building the {options.runtime} {quantization.weights}{' hybrid' if hybrid else ''} graphs"):
        for role in ROLES:
            own = quantization if role == "unet" or not hybrid else replace(quantization, mode="weight-only", calibration=None)
            graph, recipe, min_version = build_graph(work / GRAPH_FILES[role], staging, role, options.runtime, own,
                                                     (lambda: feeds) if role == "unet" and hybrid else None, probe(role),
                                                     model_type="transformer" if role == "text_encoder" else "cnn")
            graphs.append(graph)
            recipes[role] = recipe
            versions.append(min_version)
    if calibrated is not None:
        recipes["unet"] = {**(recipes["unet"] or {}), "calibration": calibrated}
    if options.device is not None and options.device.static_shapes:
        with steps.step(f"fixing shapes for {options.device.name}: one image at the package's own size"):
            for graph in graphs:
                graph.update(_make_static(staging, graph, shapes))
    recipe = None if all(r is None for r in recipes.values()) else recipes
    return ExportResult(
        graphs=graphs, min_version=max(versions, key=version_tuple), recipe=recipe,
        sections=sections,
        validation={"reference": "diffusers / transformers PyTorch FP32", "max_abs_diff": exported["max_abs_diff"],
                    "atol": options.atol, "inputs": exported["validation_inputs"]},
        work_dir=work,
    )
