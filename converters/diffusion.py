"""Diffusion UNets (diffusers ``UNet2DModel``) -> an edge package: the UNet graph plus its scheduler config.

Sources: a diffusers pipeline directory (``model_index.json`` with ``unet/`` and ``scheduler/``), or a
UNet directory (``config.json`` with ``"_class_name": "UNet2DModel"``) with its scheduler config in
``scheduler_config.json`` beside it or in ``../scheduler/``. The UNet runs in the engine; the DDPM /
DDIM loop runs in numpy (``runtimes/schedulers.py``).

    graph  unet  sample (batch, channels, height, width) float32, timestep (batch,) int64
                 -> noise (batch, channels, height, width): the model's prediction (epsilon, v or x0)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_sdk.converters.sources import ExportResult, Source, resolver
from edge_sdk.errors import ModelLoadError

UNET_FILE = "unet.onnx"
SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                  "clip_sample", "clip_sample_range", "timestep_spacing", "steps_offset", "variance_type", "set_alpha_to_one",
                  "distilled_steps")  # the last: DDIM steps a step-distilled UNet samples in (edge-sdk distill --step-distill)


def diffusion_source(path: Path) -> tuple[Path, Path] | None:
    """(unet directory, scheduler config file) when ``path`` is a diffusers UNet2DModel source."""
    if not path.is_dir():
        return None
    if (path / "model_index.json").is_file():
        from edge_sdk.converters.text_to_image import read_pipeline

        if read_pipeline(path) is not None:  # a text-to-image pipeline (its resolver is asked first)
            return None
        unet, scheduler = path / "unet", path / "scheduler" / "scheduler_config.json"
    elif (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if config.get("_class_name") not in ("UNet2DModel", "UNet2DConditionModel"):
            return None
        unet = path
        beside, sibling = path / "scheduler_config.json", path.parent / "scheduler" / "scheduler_config.json"
        scheduler = beside if beside.is_file() else sibling
    else:
        return None
    if not (unet / "config.json").is_file():
        raise ModelLoadError(f"{path} is a diffusers pipeline without a unet/ directory; edge-sdk exports its UNet")
    class_name = json.loads((unet / "config.json").read_text(encoding="utf-8")).get("_class_name")
    if class_name != "UNet2DModel":
        raise ModelLoadError(f"{unet} holds a {class_name}; a conditional UNet is exported with its whole pipeline: pass "
                             "the diffusers pipeline directory (with model_index.json) as a text-to-image model")
    if not scheduler.is_file():
        raise ModelLoadError(f"no scheduler config for {unet}: put scheduler_config.json beside it (or in ../scheduler/)")
    return unet, scheduler


@resolver("diffusers")
def _diffusers_source(model: str, path: Path) -> Source | None:
    found = diffusion_source(path)
    if found is None:
        return None
    from edge_sdk.converters.registry import lookup

    unet, scheduler = found
    return Source(unet, lookup(["UNet2DModel"], source=model), {"scheduler_file": scheduler})


def export_unet(source: Source, staging: Path, options, steps) -> ExportResult:
    from edge_sdk.converters.stage import run_stage
    from edge_sdk.converters.target import build_graph

    steps.expect(5)
    work = staging / "fp32-work"
    request = {"unet": str(source.path), "work": str(work), "atol": options.atol}
    exported = run_stage("edge_sdk.converters.diffusion_torch:export_fp32", request, work, steps, inputs=[source.path])
    scheduler = json.loads(Path(source.extra["scheduler_file"]).read_text(encoding="utf-8"))
    scheduler = {key: scheduler[key] for key in SCHEDULER_KEYS if key in scheduler}
    shapes = exported["shapes"]
    probe_sample = np.random.default_rng(3).standard_normal((1, shapes["channels"], *shapes["sample_size"])).astype(np.float32)

    def probe(session) -> np.ndarray:
        return session.run({"sample": probe_sample, "timestep": np.array([500], np.int64)})["noise"]

    quantization = options.quantization
    calibration = calibrated = None
    if quantization.effective_mode == "static":
        with steps.step("recording calibration inputs along sampling trajectories"):
            feeds, calibrated = _calibration_feeds(work / UNET_FILE, shapes, scheduler, quantization.num_samples)
        calibration = lambda: feeds  # noqa: E731
    with steps.step(f"building the {options.runtime} {quantization.weights} graph"):
        graph, recipe, min_version = build_graph(work / UNET_FILE, staging, "unet", options.runtime, quantization, calibration,
                                                 probe, model_type="cnn")
    if calibrated is not None:
        recipe = {**recipe, "calibration": calibrated}
    return ExportResult(
        graphs=[graph], min_version=min_version, recipe=recipe,
        sections={"model": {"architecture": source.spec.architecture, **shapes}, "scheduler": scheduler},
        validation={"reference": "diffusers PyTorch FP32", "max_abs_diff": exported["max_abs_diff"], "atol": options.atol,
                    "inputs": exported["validation_inputs"]},
        work_dir=work,
    )



_CALIBRATION_TRAJECTORIES = 4


def _calibration_feeds(fp32: Path, shapes: dict, scheduler: dict, num_samples: int) -> tuple[list[dict], dict]:
    """UNet inputs for static calibration, recorded along real sampling trajectories of the FP32
    graph over the whole timestep range (activations at t=999 and t=0 differ by orders of
    magnitude, so one timestep would not do).

    A few trajectories are sampled together with DDIM in ``num_samples`` steps (the model's own
    timestep spacing); feed i is trajectory i mod k at step i, so every feed has its own timestep
    and every trajectory its share of them.
    """
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.schedulers import Scheduler

    sampler = Scheduler.from_config(scheduler, "ddim")
    steps = min(num_samples, sampler.train_steps)
    k = min(_CALIBRATION_TRAJECTORIES, steps)
    session = open_session("onnxruntime", fp32)
    feeds: list[dict] = []

    def unet(x: np.ndarray, t: int) -> np.ndarray:
        feeds.append({"sample": x[len(feeds) % k][None].copy(), "timestep": np.array([t], np.int64)})
        return session.run({"sample": x, "timestep": np.full(len(x), t, np.int64)})["noise"]

    noise = np.random.default_rng(0).standard_normal((k, shapes["channels"], *shapes["sample_size"])).astype(np.float32)
    sampler.denoise(unet, noise, steps, eta=0.0)
    timesteps = [int(f["timestep"][0]) for f in feeds]
    return feeds, {"source": "DDIM sampling trajectories of the FP32 model", "trajectories": k, "inputs": len(feeds),
                   "timesteps": [min(timesteps), max(timesteps)]}
