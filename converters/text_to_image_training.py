"""A small text-to-image model trained here: a latent diffusion pipeline that draws the digit a prompt names.

scikit-learn's bundled digits (16x16, grey as RGB) with captions such as "a handwritten seven" or
"the digit 7"; a frozen, seeded CLIP text encoder (the tokenizer trained on the captions), a tiny
AutoencoderTiny VAE trained first (16x16 pixels <-> 8x8x4 latents), then a conditional UNet trained
to predict the noise with 10 % of captions dropped (so classifier-free guidance has an
unconditional branch). The result is a diffusers StableDiffusionPipeline directory that exports like
any other (``edge-sdk export DIR -o PKG``); its quality is prompt adherence: the share of images the
digits judge (``edge_sdk.evaluation.DigitsJudge``) reads as the prompted digit (``text_to_image_eval.adherence``).

Example::

    from edge_sdk.converters.text_to_image_training import DigitsT2IOptions, train_digits_text_to_image
    report = train_digits_text_to_image("out/digits-t2i", DigitsT2IOptions(unet_steps=800))
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten {word}", "the digit {number}", "a drawing of the number {word}", "{word}")
UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8)
VAE = dict(in_channels=3, out_channels=3, encoder_block_out_channels=(32, 32), decoder_block_out_channels=(32, 32),
           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4, upsampling_scaling_factor=2)
TOKENS = 16  # prompt length (the captions are short): cross-attention over 16 positions, not CLIP's 77
TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1, max_position_embeddings=TOKENS,
            initializer_factor=4.0)  # larger random token embeddings: prompts differ more after the frozen encoder


def caption(digit: int, template: int = 0) -> str:
    return TEMPLATES[template].format(word=WORDS[digit], number=digit)


@dataclass(frozen=True)
class DigitsT2IOptions:
    """The defaults train in about 2.5 minutes on 2 cores (guided adherence ~100 %, see BENCHMARKS.md)."""

    vae_steps: int = 120  # AutoencoderTiny reconstruction steps (batch 64)
    unet_steps: int = 800  # UNet noise-prediction steps (batch 64)
    batch_size: int = 64
    learning_rate: float = 3e-3
    drop_caption: float = 0.1  # share of captions replaced by "" (the unconditional branch of guidance)
    ema_decay: float = 0.98
    seed: int = 0
    threads: int | None = None


def train_digits_text_to_image(output: str | Path, options: DigitsT2IOptions = DigitsT2IOptions(), on_step=None) -> dict:
    """Train the model and save it as a diffusers StableDiffusionPipeline directory ``output`` (plus
    training.json); ``on_step(stage, step, loss)`` reports progress. Returns the training report."""
    import copy

    import diffusers
    import torch
    from edge_sdk.converters.tiny import SD_SCHEDULER, train_clip_tokenizer
    from edge_sdk.converters.training import optimizer_step
    from transformers import CLIPTextConfig, CLIPTextModel

    from edge_sdk.evaluation import digits

    if options.threads:
        torch.set_num_threads(options.threads)
    start = time.perf_counter()
    images, labels = digits(16)
    pixels = torch.from_numpy(images)[:, None].repeat(1, 3, 1, 1) * 2 - 1
    captions = [caption(d, t) for d in range(10) for t in range(len(TEMPLATES))]
    tokenizer = train_clip_tokenizer(vocab_size=400, corpus=captions, max_length=TOKENS)
    torch.manual_seed(options.seed)
    config = CLIPTextConfig(**TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(config).eval()
    with torch.no_grad():
        ids = tokenizer(captions + [""], padding="max_length", max_length=TOKENS, truncation=True, return_tensors="pt").input_ids
        states = text_encoder(ids).last_hidden_state
    context, empty = states[:-1].view(10, len(TEMPLATES), TOKENS, -1), states[-1:]
    generator = torch.Generator().manual_seed(options.seed)
    losses: dict[str, list[float]] = {"vae": [], "unet": []}

    vae = diffusers.AutoencoderTiny(**VAE)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    for step in range(options.vae_steps):
        batch = pixels[torch.randint(0, len(pixels), (options.batch_size,), generator=generator)]
        loss = torch.nn.functional.mse_loss(vae.decode(vae.encode(batch).latents).sample, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses["vae"].append(float(loss.detach()))
        if on_step:
            on_step("vae", step, losses["vae"][-1])
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = vae.encode(pixels).latents
        reconstruction = float(torch.nn.functional.mse_loss(vae.decode(latents).sample, pixels))

    unet = diffusers.UNet2DConditionModel(**UNET)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = diffusers.PNDMScheduler.from_config(SD_SCHEDULER)
    alphas = scheduler.alphas_cumprod.float()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=options.learning_rate, weight_decay=0.01)
    targets = torch.from_numpy(labels)
    b = options.batch_size
    for step in range(options.unet_steps):
        index = torch.randint(0, len(latents), (b,), generator=generator)
        template = torch.randint(0, len(TEMPLATES), (b,), generator=generator)
        dropped = torch.rand(b, generator=generator) < options.drop_caption
        ctx = torch.where(dropped[:, None, None], empty.expand(b, -1, -1), context[targets[index], template])
        t = torch.randint(0, len(alphas), (b,), generator=generator)
        noise = torch.randn(latents[index].shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        loss = torch.nn.functional.mse_loss(unet(a.sqrt() * latents[index] + (1 - a).sqrt() * noise, t, ctx).sample, noise)
        optimizer_step(unet, optimizer, loss, ema, options.ema_decay)
        losses["unet"].append(float(loss.detach()))
        if on_step:
            on_step("unet", step, losses["unet"][-1])
    pipeline = diffusers.StableDiffusionPipeline(unet=ema, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipeline.save_pretrained(output)
    report = {
        "data": "scikit-learn digits (1797 images, 16x16), captions from " + "; ".join(TEMPLATES),
        "seconds": time.perf_counter() - start,
        "parameters": {"unet": sum(p.numel() for p in ema.parameters()), "vae": sum(p.numel() for p in vae.parameters()),
                       "text_encoder (frozen)": sum(p.numel() for p in text_encoder.parameters())},
        "vae_reconstruction_mse": reconstruction,
        "unet_loss_first_50": float(np.mean(losses["unet"][:50])) if losses["unet"] else None,
        "unet_loss_last_50": float(np.mean(losses["unet"][-50:])) if losses["unet"] else None,
        "options": asdict(options),
    }
    (Path(output) / "training.json").write_text(json.dumps(report, indent=2))
    return report
