"""Benchmark image generation: per-step latency of diffusers/PyTorch eager vs our packages, and the
quality each package keeps on a trained model.

Speed: a UNet2DModel with google/ddpm-cifar10-32's configuration (35.7 M parameters, 32x32 RGB,
random weights: speed does not depend on them), batch 1, DDIM; each engine in its own process.
Quality: the digits DDPM of samples/train_digits_ddpm.py exported in the same variants; every
package samples the same 100 initial noises (DDIM, 50 steps); a classifier trained on the real
digits judges them (mean top-class confidence, classes covered) and the PSNR against the FP32
package's images from the same noise says how far quantization moved them.

    python samples/train_digits_ddpm.py --out /tmp/digits/ddpm-digits
    python benchmarks/diffusion.py --out /tmp/bench-diffusion --digits /tmp/digits/ddpm-digits

Variants are runtime:weights[:mode] (mode: weight-only, dynamic, static; static is calibrated on
inputs recorded along the FP32 model's own sampling trajectories).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import dispatch, machine, peak_rss_mb, run_worker  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)

# google/ddpm-cifar10-32's unet/config.json
CIFAR10_UNET = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
                    norm_eps=1e-6, attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                    center_input_sample=False, mid_block_scale_factor=1, act_fn="silu", time_embedding_type="positional")
VARIANTS = ("onnxruntime:fp32,onnxruntime:int8,onnxruntime:int8:dynamic,onnxruntime:int8:static,onnxruntime:int4,"
            "openvino:fp32,openvino:int8,openvino:int8:static,openvino:int4")
SPEED_STEPS = 20  # DDIM steps per timed sampling round
QUALITY_IMAGES, QUALITY_STEPS = 100, 50


# ---------------------------------------------------------------- workers (each in its own process)

def _rounds(sample_once, unet_once, rounds: int) -> dict:
    """A warm-up round, then ``rounds`` timed sampling rounds of SPEED_STEPS steps, and 3 x SPEED_STEPS
    bare UNet calls (at the timesteps of the schedule) for the latency distribution."""
    sample_once()
    per_step = []
    for _ in range(rounds):
        start = time.perf_counter()
        sample_once()
        per_step.append((time.perf_counter() - start) / SPEED_STEPS)
    calls = [unet_once(t) for _ in range(3) for t in np.linspace(999, 0, SPEED_STEPS).astype(int)]
    return {"step_ms": 1e3 * float(np.median(per_step)), "unet_p50_ms": 1e3 * float(np.percentile(calls, 50)),
            "unet_p90_ms": 1e3 * float(np.percentile(calls, 90)), "rounds": rounds}


def worker_package(args) -> dict:
    import edge_sdk

    start = time.perf_counter()
    gen = edge_sdk.load(args.package, threads=args.threads)
    load = time.perf_counter() - start
    x = np.random.default_rng(0).standard_normal(gen.noise_shape(1)).astype(np.float32)

    def unet_once(t):
        t0 = time.perf_counter()
        gen.unet(x, int(t))
        return time.perf_counter() - t0

    timed = _rounds(lambda: gen.sample(1, SPEED_STEPS, seed=0, scheduler="ddim"), unet_once, args.rounds)
    return {**timed, "load_seconds": load, "peak_rss_mb": peak_rss_mb(), "package_mb": gen.package.size_bytes / 1e6}


def worker_torch(args) -> dict:
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    unet = UNet2DModel.from_pretrained(Path(args.model) / "unet").eval()
    scheduler = DDIMScheduler.from_pretrained(Path(args.model) / "scheduler")
    pipeline = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    x = torch.randn(1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)

    def sample_once():
        with torch.inference_mode():
            pipeline(batch_size=1, num_inference_steps=SPEED_STEPS, eta=0.0, generator=torch.Generator().manual_seed(0),
                     output_type="np")

    def unet_once(t):
        with torch.inference_mode():
            t0 = time.perf_counter()
            unet(x, torch.tensor([int(t)]))
            return time.perf_counter() - t0

    return {**_rounds(sample_once, unet_once, args.rounds), "load_seconds": load, "peak_rss_mb": peak_rss_mb()}


def worker_quality(args) -> dict:
    """Sample the quality set with a package; the images go to --images (uint8 .npy)."""
    import edge_sdk

    gen = edge_sdk.load(args.package, threads=args.threads)
    noise = np.random.default_rng(1234).standard_normal(gen.noise_shape(QUALITY_IMAGES)).astype(np.float32)
    images = gen.sample(QUALITY_IMAGES, QUALITY_STEPS, scheduler="ddim", noise=noise)
    np.save(args.images, images, allow_pickle=False)
    return {"unet_seconds_per_step": gen.last_stats.unet_seconds_per_step}


WORKERS = {"package": worker_package, "torch": worker_torch, "quality": worker_quality}


# ---------------------------------------------------------------- orchestration

def worker_entry(request: dict, step=None) -> dict:
    return dispatch(WORKERS, request)


def in_subprocess(kind: str, args, **fields) -> dict:
    return run_worker(__file__, kind, args.threads, {"rounds": args.rounds, "package": None, "model": None, "images": None, **fields})


def export_variants(model: Path, out: Path, variants: list[str], label: str) -> dict[str, dict]:
    """variant -> {"package": path, "export_seconds": s}; packages already there are reused."""
    exported = {}
    for variant in variants:
        runtime, weights, *mode = variant.split(":")
        package = out / f"{label}-{variant.replace(':', '-')}"
        seconds = None
        if not (package / "manifest.json").is_file():
            print(f"exporting {label} {variant} ...", file=sys.stderr)
            command = [sys.executable, "-m", "edge_sdk.cli", "export", str(model), "-o", str(package), "--runtime", runtime,
                       "--weights", weights, "--overwrite", "-q"]
            if mode:
                command += ["--quant-mode", mode[0]] + (["--calibration", "sampling"] if mode[0] == "static" else [])
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds = time.perf_counter() - start
        exported[variant] = {"package": package, "export_seconds": seconds}
    return exported


def name_of(variant: str) -> str:
    runtime, weights, *mode = variant.split(":")
    return f"edge-sdk {runtime} {weights}" + (f" {mode[0]}" if mode else "")


def speed(args, variants: list[str]) -> dict[str, dict]:
    from edge_sdk.converters.tiny import build_unet

    model = args.out / "cifar10-shaped"
    if not (model / "model_index.json").is_file():
        build_unet(model, seed=0, config_overrides=CIFAR10_UNET,
                   scheduler={"num_train_timesteps": 1000, "beta_schedule": "linear", "clip_sample": True})
    rows = {"diffusers PyTorch eager fp32": in_subprocess("torch", args, model=model)}
    for variant, done in export_variants(model, args.out, variants, "cifar").items():
        print(f"timing {variant} ...", file=sys.stderr)
        rows[name_of(variant)] = {**in_subprocess("package", args, package=done["package"]), "export_seconds": done["export_seconds"]}
    return rows


def quality(args, variants: list[str]) -> dict:
    from edge_sdk.evaluation import DigitsJudge, psnr

    judge = DigitsJudge()
    rows = {}
    images = {}
    for variant, done in export_variants(args.digits, args.out, variants, "digits").items():
        print(f"sampling {variant} ...", file=sys.stderr)
        path = args.out / f"digits-{variant.replace(':', '-')}.npy"
        in_subprocess("quality", args, package=done["package"], images=path)
        images[variant] = np.load(path, allow_pickle=False)
        rows[name_of(variant)] = judge.judge(images[variant]).as_dict()
    for variant in variants:
        runtime = variant.split(":")[0]
        reference = images.get(f"{runtime}:fp32", images.get("onnxruntime:fp32"))
        rows[name_of(variant)]["psnr_db"] = psnr(images[variant], reference) if reference is not None else None
    return {"rows": rows, "real_digits": {"held_out_accuracy": judge.held_out_accuracy,
                                          "held_out_confidence": judge.held_out_confidence}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/diffusion"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timed sampling rounds of 20 steps per engine")
    parser.add_argument("--variants", default=VARIANTS, help="runtime:weights[:mode], comma-separated")
    parser.add_argument("--digits", type=Path, help="the digits DDPM (samples/train_digits_ddpm.py) for the quality table")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    variants = args.variants.split(",")
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "threads": args.threads}
    results = args.out / "results.json"
    if results.is_file():  # keep the part of an earlier run this one skips
        report = {**json.loads(results.read_text()), **report}
    if not args.skip_speed:
        report["speed"] = speed(args, variants)
    if args.digits:
        report["quality"] = quality(args, variants)
    results.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {report['threads']} threads, {report['date']}")
    if "speed" in report:
        rows = report["speed"]
        eager = rows["diffusers PyTorch eager fp32"]["step_ms"]
        ours = {runtime: rows.get(f"edge-sdk {runtime} fp32", {}).get("step_ms") for runtime in ("onnxruntime", "openvino")}
        print(f"\nSpeed: ddpm-cifar10-32-shaped UNet (random weights), batch 1, DDIM {SPEED_STEPS} steps\n")
        print("| engine | ms/step (sampling) | vs eager | vs our FP32 (same runtime) | UNet p50 / p90 ms | load s | peak RSS MB | package MB |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            runtime = name.split()[1] if name.startswith("edge-sdk") else None
            fp32 = ours.get(runtime)
            versus = f"{fp32 / r['step_ms']:.2f}x faster" if fp32 else "-"
            package = f"{r['package_mb']:.0f}" if "package_mb" in r else "-"
            print(f"| {name} | {r['step_ms']:.1f} | {r['step_ms'] / eager:.2f}x | {versus} | {r['unet_p50_ms']:.1f} / "
                  f"{r['unet_p90_ms']:.1f} | {r['load_seconds']:.2f} | {r['peak_rss_mb']:.0f} | {package} |")
    if "quality" in report:
        q = report["quality"]
        real = q["real_digits"]
        print(f"\nQuality: digits DDPM, {QUALITY_IMAGES} images from the same noise, DDIM {QUALITY_STEPS} steps; classifier on "
              f"real held-out digits: accuracy {real['held_out_accuracy']:.1f}%, confidence {real['held_out_confidence']:.1f}%\n")
        print("| package | confidence % | classes | PSNR vs FP32 dB | class counts |")
        print("|---|---|---|---|---|")
        for name, r in q["rows"].items():
            value = r["psnr_db"]
            shown = "-" if value is None else ("identical" if value == float("inf") else f"{value:.1f}")
            print(f"| {name} | {r['confidence']:.1f} | {r['coverage']}/10 | {shown} | {r['class_counts']} |")


if __name__ == "__main__":
    main()
