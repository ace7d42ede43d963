"""Benchmark text-to-image: seconds per guided step and per image, peak RSS and package size of our
packages beside diffusers (PyTorch eager, same threads), and prompt adherence on the digits model.

Models:
  --digits DIR   the digits text-to-image pipeline of samples/train_digits_text_to_image.py (trained
                 weights: its adherence means something), at its own 16x16;
  --shape NAME   a pipeline with random weights (speed does not depend on them) in a real model's
                 shape: bk-sdm-tiny (nota-ai/bk-sdm-tiny's UNet: no mid block, one layer per block,
                 no innermost stage) or sd15 (Stable Diffusion 1.5's UNet), CLIP ViT-L/14's text
                 encoder, SD's AutoencoderKL, at --size.

    python samples/train_digits_text_to_image.py --out /tmp/t2i/digits-t2i
    python benchmarks/text_to_image.py --out /tmp/t2i --digits /tmp/t2i/digits-t2i
    python benchmarks/text_to_image.py --out /tmp/t2i --shape bk-sdm-tiny --size 256 --variants onnxruntime:fp32,openvino:int8

Variants are runtime:weights[:mode]; mode static is the hybrid (UNet activations calibrated on the
pipeline's own inputs, the other graphs' weights only). Every engine runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import diffusion  # benchmarks/diffusion.py: each variant exported as it exports them
from common import (  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)
    dispatch,
    machine,
    peak_rss_mb,
    run_worker,
)

VARIANTS = "onnxruntime:fp32,onnxruntime:int8,onnxruntime:int8:static,openvino:fp32,openvino:int8,openvino:int8:static"
PROMPT = "a photograph of a lighthouse on a rocky coast at dusk"

# nota-ai/bk-sdm-tiny and runwayml/stable-diffusion-v1-5 UNet configs (the parts that differ from diffusers' defaults)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8)
# BK-SDM-Tiny: SD 1.5 without its mid block, one layer per block, and without its innermost stage (the
# attention-free 1280-channel one), so all three stages left keep their cross-attention (323 M parameters)
BK_SDM_TINY_UNET = dict(SD15_UNET, layers_per_block=1, block_out_channels=(320, 640, 1280),
                        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                        mid_block_type=None)
# what the first run of 2026-12-08 measured (219 M): the same but without attention in the 1280-channel stage
BK_SDM_TINY_NO_INNER_ATTENTION = dict(BK_SDM_TINY_UNET, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                                          "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
              projection_dim=768, hidden_act="quick_gelu")
SHAPES = {"bk-sdm-tiny": BK_SDM_TINY_UNET, "bk-sdm-tiny-219m": BK_SDM_TINY_NO_INNER_ATTENTION, "sd15": SD15_UNET}


# ---------------------------------------------------------------- workers (each in its own process)

def worker_package(args) -> dict:
    import edge_sdk

    start = time.perf_counter()
    gen = edge_sdk.load(args.package, threads=args.threads)
    load = time.perf_counter() - start
    size = {"width": args.size, "height": args.size} if args.size else {}
    gen.generate(prompt=PROMPT, steps=1, seed=0, **size)  # warm-up
    rounds = []
    for _ in range(args.rounds):
        stats = gen.generate(prompt=PROMPT, steps=args.steps, seed=0, **size).stats
        rounds.append(stats)
    best = min(rounds, key=lambda s: s.total_seconds)
    return {"seconds_per_step": best.seconds_per_step, "unet_seconds_per_step": best.unet_seconds_per_step,
            "seconds_per_image": best.total_seconds, "unet_calls": best.steps, "load_seconds": load,
            "peak_rss_mb": peak_rss_mb(), "package_mb": gen.package.size_bytes / 1e6}


def worker_torch(args) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    size = {"width": args.size, "height": args.size} if args.size else {}
    unet_seconds = []

    def timed_unet(*a, **k):
        t0 = time.perf_counter()
        out = original(*a, **k)
        unet_seconds.append(time.perf_counter() - t0)
        return out

    original = pipe.unet.forward
    pipe.unet.forward = timed_unet
    with torch.inference_mode():
        pipe(PROMPT, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np", **size)
        best = None
        for _ in range(args.rounds):
            unet_seconds.clear()
            t0 = time.perf_counter()
            pipe(PROMPT, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), output_type="np", **size)
            total = time.perf_counter() - t0
            if best is None or total < best[0]:
                best = (total, sum(unet_seconds), len(unet_seconds))
    total, unet, calls = best
    return {"seconds_per_step": total / calls, "unet_seconds_per_step": unet / calls, "seconds_per_image": total,
            "unet_calls": calls, "load_seconds": load, "peak_rss_mb": peak_rss_mb()}


def worker_adherence(args) -> dict:
    import edge_sdk
    from edge_sdk.text_to_image_eval import adherence

    gen = edge_sdk.load(args.package, threads=args.threads)
    return {f"guidance {g:g}": adherence(gen, guidance_scale=g, steps=args.steps) for g in (1.0, 3.0, 7.5)}


WORKERS = {"package": worker_package, "torch": worker_torch, "adherence": worker_adherence}


def worker_entry(request: dict, step=None) -> dict:
    return dispatch(WORKERS, request)


# ---------------------------------------------------------------- orchestration

def in_subprocess(kind: str, args, **fields) -> dict:
    return run_worker(__file__, kind, args.threads, {"rounds": args.rounds, "steps": args.steps, "size": args.size,
                                                     "package": None, "model": None, **fields})


def build_shape(name: str, out: Path) -> Path:
    """A random-weight pipeline in a real model's shape (the tiny pipeline's tokenizer; CLIP's 77 positions)."""
    import diffusers
    import torch
    from edge_sdk.converters.tiny import SD_SCHEDULER, train_clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    path = out / f"{name}-random"
    if (path / "model_index.json").is_file():
        return path
    tokenizer = train_clip_tokenizer()
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_L, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    pipe = diffusers.StableDiffusionPipeline(
        unet=diffusers.UNet2DConditionModel(**SHAPES[name]).eval(), vae=diffusers.AutoencoderKL(**SD_VAE).eval(),
        text_encoder=text, tokenizer=tokenizer, scheduler=diffusers.PNDMScheduler.from_config(SD_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def export_variants(model: Path, out: Path, variants: list[str], label: str) -> dict[str, dict]:
    """diffusion.py's exports, with each package's accuracy summary against FP32 from its manifest."""
    exported = diffusion.export_variants(model, out, variants, label)
    for done in exported.values():
        manifest = json.loads((done["package"] / "manifest.json").read_text())
        done["vs_fp32"] = manifest["accuracy"].get("eval", {}).get("summary")
    return exported


def name_of(variant: str) -> str:
    runtime, weights, *mode = variant.split(":")
    return f"edge-sdk {runtime} {weights}" + (" hybrid" if mode and mode[0] == "static" else (f" {mode[0]}" if mode else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/text-to-image"))
    parser.add_argument("--digits", type=Path, help="the digits text-to-image pipeline (samples/train_digits_text_to_image.py)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a random-weight pipeline in this model's shape")
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (default: the model's own)")
    parser.add_argument("--steps", type=int, default=10, help="PNDM steps per timed image")
    parser.add_argument("--rounds", type=int, default=3, help="timed images per engine (the fastest is kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=VARIANTS, help="runtime:weights[:mode], comma-separated")
    args = parser.parse_args()
    if not args.digits and not args.shape:
        parser.error("give --digits DIR and/or --shape NAME")
    args.out.mkdir(parents=True, exist_ok=True)
    variants = args.variants.split(",")
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "threads": args.threads, "steps": args.steps,
              "prompt": PROMPT, "models": {}}
    models = ([("digits", args.digits)] if args.digits else []) + ([(args.shape, build_shape(args.shape, args.out))]
                                                                   if args.shape else [])
    for label, model in models:
        print(f"timing diffusers on {label} ...", file=sys.stderr, flush=True)
        rows = {"diffusers PyTorch eager fp32": in_subprocess("torch", args, model=model)}
        for variant, done in export_variants(model, args.out, variants, label).items():
            print(f"timing {label} {variant} ...", file=sys.stderr, flush=True)
            rows[name_of(variant)] = {**in_subprocess("package", args, package=done["package"]),
                                      "export_seconds": done["export_seconds"], "vs_fp32": done["vs_fp32"]}
            if label == "digits":
                rows[name_of(variant)]["adherence"] = in_subprocess("adherence", args, package=done["package"])
        base = rows["diffusers PyTorch eager fp32"]["unet_seconds_per_step"]
        for row in rows.values():
            row["unet_speedup_vs_diffusers"] = base / row["unet_seconds_per_step"]
        report["models"][label] = {"source": str(model), "rows": rows}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    for label, entry in report["models"].items():
        print(f"\n{label} ({args.steps} PNDM steps, guided, {args.threads} threads)")
        print(f"{'engine':34s} {'s/step':>8s} {'UNet s':>8s} {'vs torch':>8s} {'s/image':>8s} {'RSS MB':>7s} {'MB':>7s}  adherence g=1/3/7.5")
        for name, row in entry["rows"].items():
            adh = row.get("adherence")
            adh = "/".join(f"{v['adherence']:.0f}" for v in adh.values()) if adh else ""
            print(f"{name:34s} {row['seconds_per_step']:8.3f} {row['unet_seconds_per_step']:8.3f} "
                  f"{row['unet_speedup_vs_diffusers']:7.2f}x {row['seconds_per_image']:8.2f} {row['peak_rss_mb']:7.0f} "
                  f"{row.get('package_mb', float('nan')):7.1f}  {adh}")


if __name__ == "__main__":
    main()
