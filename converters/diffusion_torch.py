"""The PyTorch side of a UNet export (runs in the export's child process; see ``stage``)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.converters.diffusion import UNET_FILE
from edge_sdk.converters.validate import Comparison
from edge_sdk.errors import ModelLoadError


def load_unet(directory: Path):
    try:
        import torch
        from diffusers import UNet2DModel
    except ImportError as e:
        from edge_sdk.errors import missing_extra

        raise missing_extra(e.name or "diffusers", "convert", "exporting a diffusion model") from e
    try:
        return UNet2DModel.from_pretrained(directory, torch_dtype=torch.float32).eval()
    except Exception as e:
        raise ModelLoadError(f"diffusers cannot load the UNet in {directory} ({type(e).__name__}: {e})") from e


def export_fp32(request: dict[str, Any], step) -> dict[str, Any]:
    import torch
    from torch import nn

    from edge_sdk.converters.onnx_export import export_onnx
    from edge_sdk.runtimes.backend import open_session

    work = Path(request["work"])
    step("loading model")
    unet = load_unet(Path(request["unet"]))
    config = unet.config
    size = config.sample_size
    size = [size, size] if isinstance(size, int) else list(size)
    channels = int(config.in_channels)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep):
            return self.unet(sample, timestep).sample

    wrapper = Wrapper().eval()
    rng = np.random.default_rng(0)
    cases = [(rng.standard_normal((2, channels, *size)).astype(np.float32), np.array([t, t], np.int64)) for t in (0, 499, 999)]
    with torch.inference_mode():
        expected = [wrapper(torch.from_numpy(x), torch.from_numpy(t)).numpy() for x, t in cases]

    step("exporting to ONNX (torch.export)")
    batch = torch.export.Dim("batch")
    trace = (torch.from_numpy(cases[1][0]), torch.from_numpy(cases[1][1]))  # batch 2: batch 1 would be specialized
    export_onnx(wrapper, trace, work / UNET_FILE, input_names=["sample", "timestep"], output_names=["noise"],
                dynamic_shapes=({0: batch}, {0: batch}))
    del wrapper, unet
    gc.collect()

    step("validating against PyTorch")
    comparison = Comparison(atol=request["atol"])
    session = open_session("onnxruntime", work / UNET_FILE)
    for (x, t), reference in zip(cases, expected):
        comparison.check(f"timestep {t[0]}: noise", session.run({"sample": x, "timestep": t})["noise"], reference)
        single = session.run({"sample": x[:1], "timestep": t[:1]})["noise"]  # batch 1 too
        comparison.check(f"timestep {t[0]}, batch 1: noise", single, reference[:1])
    comparison.raise_if_failed("the exported UNet does not reproduce the PyTorch model")
    return {
        "shapes": {"channels": channels, "out_channels": int(config.out_channels), "sample_size": size},
        "max_abs_diff": comparison.max_diffs(),
        "validation_inputs": "random samples at timesteps 0, 499, 999, batch 2 and 1",
    }
