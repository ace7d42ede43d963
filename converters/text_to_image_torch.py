"""The PyTorch side of a text-to-image export (runs in the export's child process; see ``stage``).

Loads the pipeline's parts with diffusers / transformers (never its remote code), exports the text
encoder, UNet, VAE decoder and VAE encoder to ONNX with dynamic batch (and height / width for the
image graphs), validates each against PyTorch and writes the CLIP tokenizer as one tokenizer.json.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
from edge_sdk.converters.validate import Comparison

from edge_sdk.errors import ModelLoadError


def _load(kind: str, class_name: str, directory: Path):
    import torch

    try:
        if kind == "transformers":
            import transformers

            cls = getattr(transformers, class_name)
        else:
            import diffusers

            cls = getattr(diffusers, class_name)
        return cls.from_pretrained(directory, torch_dtype=torch.float32).eval()
    except ImportError as e:
        from edge_sdk.errors import missing_extra

        raise missing_extra(e.name or "diffusers", "convert", "exporting a text-to-image pipeline") from e
    except Exception as e:
        raise ModelLoadError(f"cannot load the {class_name} in {directory} ({type(e).__name__}: {e})") from e


def export_fp32(request: dict[str, Any], step) -> dict[str, Any]:
    import torch
    from edge_sdk.converters.onnx_export import export_onnx
    from edge_sdk.converters.text_to_image import GRAPH_FILES, TOKENIZER_FILE
    from edge_sdk.runtimes.backend import open_session
    from torch import nn

    root, work = Path(request["pipeline"]), Path(request["work"])
    parts = request["parts"]  # name -> [library, class]
    comparison = Comparison(atol=request["atol"])
    rng = np.random.default_rng(0)
    dim = torch.export.Dim
    shapes: dict[str, Any] = {}

    step("writing the tokenizer")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer in {root / 'tokenizer'} ({type(e).__name__}: {e})") from e
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelLoadError(f"{root / 'tokenizer'} has no fast (tokenizers) form; edge-sdk runs CLIP's BPE with tokenizers")
    backend.save(str(work / TOKENIZER_FILE))
    max_length = 77 if tokenizer.model_max_length > 10**6 else int(tokenizer.model_max_length)  # unset: CLIP's 77
    shapes["tokenizer"] = {"max_length": max_length, "bos_token_id": tokenizer.bos_token_id,
                           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}

    def check(role: str, session_inputs: dict, expected: dict) -> None:
        session = open_session("onnxruntime", work / GRAPH_FILES[role])
        got = session.run(session_inputs)
        for name, value in expected.items():
            comparison.check(f"{role}: {name}", got[name], value)

    # ---------------------------------------------------------------- text encoder
    step("exporting the text encoder")
    text_encoder = _load(*parts["text_encoder"], root / "text_encoder")

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = text_encoder

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).last_hidden_state

    vocab = int(text_encoder.config.vocab_size)
    ids = rng.integers(0, vocab, (2, max_length)).astype(np.int64)
    ids[:, 0] = shapes["tokenizer"]["bos_token_id"] or 0
    ids[:, -1] = shapes["tokenizer"]["eos_token_id"] or 0
    wrapper = Text().eval()
    with torch.inference_mode():
        hidden = wrapper(torch.from_numpy(ids)).numpy()
    export_onnx(wrapper, (torch.from_numpy(ids),), work / GRAPH_FILES["text_encoder"], input_names=["input_ids"],
                output_names=["last_hidden_state"], dynamic_shapes=({0: dim("batch")},))
    check("text_encoder", {"input_ids": ids}, {"last_hidden_state": hidden})
    check("text_encoder", {"input_ids": ids[:1]}, {"last_hidden_state": hidden[:1]})
    shapes["text_encoder"] = {"hidden_size": int(text_encoder.config.hidden_size), "vocab_size": vocab}
    del wrapper, text_encoder
    gc.collect()

    # ---------------------------------------------------------------- UNet
    step("exporting the UNet")
    unet = _load(*parts["unet"], root / "unet")
    config = unet.config
    size = config.sample_size
    size = [size, size] if isinstance(size, int) else list(size)
    factor = 2 ** (len(config.block_out_channels) - 1)  # the UNet's downsampling: latents are multiples of it
    cond_dim = config.time_cond_proj_dim
    channels = int(config.in_channels)
    context = int(config.cross_attention_dim)

    class Unet(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
            return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond).sample

    wrapper = Unet().eval()
    h, w = size[0], size[1] + factor  # not square: height and width must stay apart in the graph

    def unet_inputs(batch: int, hh: int, ww: int, t: float) -> dict:
        feeds = {"sample": rng.standard_normal((batch, channels, hh, ww)).astype(np.float32),
                 "timestep": np.full(batch, t, np.float32),
                 "encoder_hidden_states": rng.standard_normal((batch, max_length, context)).astype(np.float32)}
        if cond_dim:
            feeds["timestep_cond"] = rng.standard_normal((batch, cond_dim)).astype(np.float32)
        return feeds

    cases = [unet_inputs(2, h, w, 999.0), unet_inputs(2, h, w, 1.0), unet_inputs(1, 2 * factor, 3 * factor, 500.5)]
    names = list(cases[0])
    with torch.inference_mode():
        expected = [wrapper(*(torch.from_numpy(case[n]) for n in names)).numpy() for case in cases]
    batch, height, width = dim("batch"), factor * dim("height_blocks", min=1), factor * dim("width_blocks", min=1)
    dynamic = [{0: batch, 2: height, 3: width}, {0: batch}, {0: batch}] + ([{0: batch}] if cond_dim else [])
    export_onnx(wrapper, tuple(torch.from_numpy(cases[0][n]) for n in names), work / GRAPH_FILES["unet"],
                input_names=names, output_names=["noise"], dynamic_shapes=tuple(dynamic))
    for case, reference in zip(cases, expected):
        check("unet", case, {"noise": reference})
    shapes["unet"] = {"in_channels": channels, "out_channels": int(config.out_channels), "sample_size": size,
                      "cross_attention_dim": context, "time_cond_proj_dim": int(cond_dim) if cond_dim else None,
                      "downsampling": factor}
    del wrapper, unet
    gc.collect()

    # ---------------------------------------------------------------- VAE decoder and encoder
    step("exporting the VAE")
    vae_library, vae_class = parts["vae"]
    vae = _load(vae_library, vae_class, root / "vae")
    tiny = vae_class == "AutoencoderTiny"
    latent_channels = int(vae.config.latent_channels)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, latent):
            return self.vae.decode(latent).sample

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, image):
            if tiny:
                return self.vae.encode(image).latents
            dist = self.vae.encode(image).latent_dist
            return dist.mean, dist.std

    decoder, encoder = Decoder().eval(), Encoder().eval()
    latents = [rng.standard_normal((2, latent_channels, h, w)).astype(np.float32),
               rng.standard_normal((1, latent_channels, 2 * factor, 3 * factor)).astype(np.float32)]
    with torch.inference_mode():
        decoded = [decoder(torch.from_numpy(x)).numpy() for x in latents]
    lat_dyn = {0: batch, 2: dim("latent_height", min=1), 3: dim("latent_width", min=1)}
    export_onnx(decoder, (torch.from_numpy(latents[0]),), work / GRAPH_FILES["vae_decoder"], input_names=["latent"],
                output_names=["image"], dynamic_shapes=(lat_dyn,))
    for x, reference in zip(latents, decoded):
        check("vae_decoder", {"latent": x}, {"image": reference})
    vae_factor = decoded[0].shape[-1] // latents[0].shape[-1]  # pixels per latent

    images = [np.clip(rng.standard_normal(d.shape), -1, 1).astype(np.float32) for d in decoded]
    outputs = ["latent"] if tiny else ["mean", "std"]
    with torch.inference_mode():
        encoded = []
        for image in images:
            out = encoder(torch.from_numpy(image))
            encoded.append([o.numpy() for o in (out if isinstance(out, tuple) else (out,))])
    img_dyn = {0: batch, 2: vae_factor * dim("image_height_blocks", min=1), 3: vae_factor * dim("image_width_blocks", min=1)}
    export_onnx(encoder, (torch.from_numpy(images[0]),), work / GRAPH_FILES["vae_encoder"], input_names=["image"],
                output_names=outputs, dynamic_shapes=(img_dyn,))
    for image, reference in zip(images, encoded):
        check("vae_encoder", {"image": image}, dict(zip(outputs, reference)))
    config = vae.config
    shapes["vae"] = {"class": vae_class, "latent_channels": latent_channels, "scale_factor": int(vae_factor),
                     "scaling_factor": float(getattr(config, "scaling_factor", 1.0) or 1.0),
                     "shift_factor": float(getattr(config, "shift_factor", 0.0) or 0.0)}
    del decoder, encoder, vae
    gc.collect()

    comparison.raise_if_failed("the exported pipeline does not reproduce the PyTorch model")
    return {
        "shapes": shapes,
        "max_abs_diff": comparison.max_diffs(),
        "validation_inputs": "random token ids (batch 2 and 1); UNet at timesteps 999, 1 and 500.5 on two latent sizes; "
                             "VAE decoder and encoder on two sizes",
    }
