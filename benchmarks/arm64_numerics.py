"""Accuracy on a Raspberry Pi's numerics, per engine and precision: `eval --device` under qemu-user
emulation of the Pi 4's Cortex-A72 and the Pi 5's Cortex-A76, beside the same figures here (x86).

    python benchmarks/arm64_numerics.py MODEL_DIR [--data heldout.txt] [--out out/arm64-numerics] [--windows 8]

MODEL_DIR: a trained Hugging Face causal LM (a random-weight one's logits nearly tie everywhere, and
any rounding flips them). Exports it for ONNX Runtime and OpenVINO at FP32, INT8 and INT4; then for
each package and each of (x86 here, raspberry-pi-4, raspberry-pi-5): KL divergence and top-1
agreement against the ONNX Runtime FP32 package (computed on x86: FP32 gives the same figures on
every core, which the emulated FP32 rows check), and against the same package run on x86 (what the
device's int8 kernels change). Needs qemu-user-static; the emulated environment is built once
(deb.debian.org, PyPI) under $EDGE_SDK_CACHE.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="Held-back text [MODEL_DIR/heldout.txt].")
    parser.add_argument("--out", type=Path, default=Path("out/arm64-numerics"))
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.device_eval import evaluate_on_device
    from edge_sdk.devices.numerics import this_machine
    from edge_sdk.devices.profiles import load_profile
    from edge_sdk.evaluation import evaluate_package
    from edge_sdk.quantization import QuantizationOptions

    data = args.data or args.model / "heldout.txt"
    args.out.mkdir(parents=True, exist_ok=True)
    packages = {}
    for runtime in ("onnxruntime", "openvino"):
        for weights in ("fp32", "int8", "int4"):
            target = args.out / f"{runtime}-{weights}"
            if not (target / "manifest.json").exists():
                export(args.model, target, ExportOptions(runtime=runtime, quantization=QuantizationOptions(weights=weights)),
                       progress=False, overwrite=True)
            packages[f"{runtime} {weights}"] = target
    fp32 = packages["onnxruntime fp32"]
    rows = []
    for name, package in packages.items():
        row = {"package": name}
        here, _ = evaluate_package(package, data, reference=fp32, max_windows=args.windows, threads=2)
        row["x86"] = {"vs_fp32": {"kl": here.kl_divergence, "top1": here.top1_agreement}, "on": this_machine()["int8_path"]}
        for profile in ("raspberry-pi-4", "raspberry-pi-5"):
            t0 = time.perf_counter()
            figures = {}
            for label, reference in (("vs_fp32", fp32), ("vs_x86", package)):
                record = evaluate_on_device(str(package), load_profile(profile), data=str(data), reference=str(reference),
                                            windows=args.windows, threads=2, save=False)
                figures[label] = {"kl": record["eval"]["kl_divergence"], "top1": record["eval"]["top1_agreement"]}
            row[profile] = {**figures, "on": record["measured_on"]["int8_path"], "seconds": time.perf_counter() - t0}
        rows.append(row)
        cells = [f"x86 vs FP32 KL {row['x86']['vs_fp32']['kl']:.2e} top-1 {row['x86']['vs_fp32']['top1']:.2%}"]
        for profile in ("raspberry-pi-4", "raspberry-pi-5"):
            r = row[profile]
            cells.append(f"{profile}: vs FP32 KL {r['vs_fp32']['kl']:.2e} top-1 {r['vs_fp32']['top1']:.2%}, vs x86 KL "
                         f"{r['vs_x86']['kl']:.2e} top-1 {r['vs_x86']['top1']:.2%} [{r['seconds']:.0f} s]")
        print(f"{name:18s} " + "; ".join(cells), flush=True)
    (args.out / "results.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
