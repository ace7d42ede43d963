"""Benchmark export across decoder families: time and peak memory of each family's export.

    python benchmarks/export_families.py [--out results/families] [--families A,B] [--qwen-shape]

Every family the registry lists, as its tiny test model (``converters.tiny.TINY_CONFIGS``: 2 layers,
hidden 64, random weights), exported to an FP32 ONNX Runtime package in its own process (peak RSS
includes the export's child process). --qwen-shape adds the Qwen2.5-0.5B shape (hidden 896,
24 layers, 14 heads, 2 KV heads, vocab 151936, tied; random weights) exported the same way.

The Qwen2.5-0.5B-shaped INT4 decode against optimum-intel is ``benchmarks/text_generation.py
--shape qwen2.5-0.5b``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import machine, run_worker  # benchmarks/common.py (on sys.path)

TEXT_BENCHMARK = str(Path(__file__).with_name("text_generation.py"))  # its "export" worker: timed, peak RSS with children


def export_in_subprocess(model: Path, package: Path, variant: str, threads: int) -> dict:
    """Export in a fresh process (text_generation.py's worker); add the package's size and its
    FP32 graph's largest difference from PyTorch, read from the manifest."""
    figures = run_worker(TEXT_BENCHMARK, "export", threads, {"model": str(model), "package": str(package), "variant": variant,
                                                             "group_size": None, "eval_data": None})
    manifest = json.loads((package / "manifest.json").read_text())
    return {**figures, "package_mb": sum(f["size"] for f in manifest["files"]) / 1e6,
            "max_abs_diff": max(manifest["accuracy"]["max_abs_diff"].values(), default=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/families"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", default=None, help="comma-separated architectures [every listed family]")
    parser.add_argument("--qwen-shape", action="store_true", help="also the Qwen2.5-0.5B shape (FP32 and INT4 exports)")
    args = parser.parse_args()

    from edge_sdk.converters.registry import supported_architectures
    from edge_sdk.converters.tiny import QWEN25_05B, build_causal_lm

    families = args.families.split(",") if args.families else supported_architectures("text-generation")
    rows = {}
    (args.out / "pkg").mkdir(parents=True, exist_ok=True)
    for family in families:
        model = args.out / "models" / family
        if not (model / "config.json").is_file():
            build_causal_lm(family, model, seed=0)
        weights_mb = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e6
        print(f"exporting {family} ...", file=sys.stderr)
        rows[family] = {"weights_mb": weights_mb, **export_in_subprocess(model, args.out / "pkg" / family, "onnxruntime:fp32", args.threads)}
    if args.qwen_shape:
        model = args.out / "models" / "qwen2.5-0.5b-shape"
        if not (model / "config.json").is_file():
            print("building the Qwen2.5-0.5B-shaped model ...", file=sys.stderr)
            build_causal_lm("Qwen2ForCausalLM", model, seed=0, config_overrides=QWEN25_05B)
        weights_mb = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e6
        for variant in ("onnxruntime:fp32",):
            print(f"exporting the Qwen2.5-0.5B shape, {variant} ...", file=sys.stderr)
            rows[f"Qwen2.5-0.5B shape {variant}"] = {"weights_mb": weights_mb, **export_in_subprocess(
                model, args.out / "pkg" / f"qwen-{variant.replace(':', '-')}", variant, args.threads)}

    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "threads": args.threads, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores, {report['date']}; FP32 ONNX Runtime packages unless named\n")
    print("| model | weights (MB) | export (s) | peak RSS (MB) | peak / weights | package (MB) | max abs diff vs PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        diff = f"{r['max_abs_diff']:.1e}" if r.get("max_abs_diff") is not None else "-"
        print(f"| {name} | {r['weights_mb']:.1f} | {r['export_seconds']:.1f} | {r['peak_rss_mb']:.0f} "
              f"| {r['peak_rss_mb'] / r['weights_mb']:.1f}x | {r['package_mb']:.1f} | {diff} |")


if __name__ == "__main__":
    main()
