"""Quality at equal bits: each tool's 4-bit model against its own FP32, on a trained tiny LM.

    python samples/train_tiny_lm.py --out out/tiny-lm            # ~9 min on 2 cores
    bash benchmarks/setup_peers.sh                                # llama.cpp (llama-perplexity, llama-quantize)
    python benchmarks/int4_quality.py --model out/tiny-lm --data out/tiny-lm/heldout.txt --out out/int4-quality \
        --llama-cpp /tmp/peers/llama.cpp --llama-python /tmp/peers/llamacpp-venv/bin/python

Ours: `edge-sdk export` of the model for each recipe of --ours (weights:group:sym|asym[:head]),
scored with `edge-sdk eval --reference FP32 --windows N` (windows of 128 tokens, every position
scored). llama.cpp: its convert_hf_to_gguf.py to an F32 GGUF (the tokenizer handled as
text_generation.py's worker_gguf does), llama-quantize to each of --llama-quants, scored with
llama-perplexity -c 128 on the same file (llama.cpp scores the second half of each window, so the
two tools' absolute perplexities differ; each is compared with its own FP32). Size: the model
file(s), and bits per weight over the parameter count of the FP32 model.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from common import machine, run_worker  # benchmarks/common.py (on sys.path)

HERE = Path(__file__).resolve().parent
CONTEXT = 128  # tokens per window, both tools (our eval's window)


def run(command: list, what: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return done


def file_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def ours(args, recipe: str, reference: Path | None) -> dict:
    weights, group, symmetry, *rest = (recipe.split(":") + ["", "", ""])[:4] if recipe != "fp32" else ("fp32", "", "", "")
    out = args.out / f"edge-{recipe.replace(':', '-')}"
    if not (out / "manifest.json").is_file():
        command = ["edge-sdk", "export", args.model, "-o", out, "--weights", weights, "--eval-data", args.data, "-q", "--overwrite"]
        if weights != "fp32":
            command += ["--group-size", group or "128", "--sym" if symmetry == "sym" else "--asym"]
            if weights == "int4":
                command += ["--head-weights", rest[0] or "int8"]
        print(f"exporting {recipe} ...", file=sys.stderr)
        run(command, f"edge-sdk export {recipe}")
    command = ["edge-sdk", "eval", out, "--data", args.data, "--windows", args.windows, "--json"]
    if reference is not None:
        command += ["--reference", reference]
    figures = json.loads(run(command, f"edge-sdk eval {recipe}").stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    model = [out / g["path"] for g in manifest["graphs"]]
    model += [out / name for g in manifest["graphs"] for name in g.get("external_data", [])]
    return {"tool": "edge-sdk", "recipe": recipe, "perplexity": figures["perplexity"],
            "reference_perplexity": figures.get("reference_perplexity"), "kl": figures.get("kl_divergence"),
            "top1": figures.get("top1_agreement"), "model_mb": file_mb(model), "figures": figures}


def llama(args, quant: str, f32: Path) -> dict:
    gguf = f32 if quant == "F32" else args.out / "llama.cpp" / f"model-{quant}.gguf"
    binaries = Path(args.llama_cpp) / "build" / "bin"
    if not gguf.is_file():
        run([binaries / "llama-quantize", f32, gguf, quant, args.threads], f"llama-quantize {quant}")
    done = run([binaries / "llama-perplexity", "-m", gguf, "-f", args.data, "-c", CONTEXT, "-b", CONTEXT, "-t", args.threads],
               f"llama-perplexity {quant}")
    found = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", done.stdout + done.stderr)
    if found:
        perplexity, error = float(found.group(1)), float(found.group(2))
    else:  # its log thread can exit before printing the final line: the running estimate after the last chunk is it
        chunks = re.findall(r"\[(\d+)\]([0-9.]+),", done.stdout)
        if not chunks:
            raise SystemExit(f"llama-perplexity {quant}: no estimate in its output:\n{(done.stdout + done.stderr)[-2000:]}")
        perplexity, error = float(chunks[-1][1]), None
    return {"tool": "llama.cpp", "recipe": quant, "perplexity": perplexity, "stderr": error, "model_mb": file_mb([gguf])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="trained Hugging Face model (samples/train_tiny_lm.py)")
    parser.add_argument("--data", type=Path, required=True, help="held-back text (the model's heldout.txt)")
    parser.add_argument("--out", type=Path, default=Path("out/int4-quality"))
    parser.add_argument("--ours", default="int4:128:asym:int4,int4:128:asym:int8,int4:32:asym:int8,int8:128:asym",
                        help="our recipes, weights:group:sym|asym[:head] (head: int4 only, --head-weights, default int8)")
    parser.add_argument("--windows", type=int, default=1000, help="our eval's windows of 128 tokens (at most)")
    parser.add_argument("--llama-cpp", help="llama.cpp tree with build/bin/llama-perplexity and llama-quantize")
    parser.add_argument("--llama-python", help="a Python with convert_hf_to_gguf.py's requirements")
    parser.add_argument("--llama-quants", default="Q4_0,Q4_K_M")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.model, args.data = args.model.resolve(), args.data.resolve()
    parameters = json.loads((args.model / "training.json").read_text()).get("parameters") if (args.model / "training.json").is_file() else None

    rows = []
    fp32 = ours(args, "fp32", None)
    rows.append(fp32)
    for recipe in args.ours.split(","):
        rows.append(ours(args, recipe, args.out / "edge-fp32"))
    if args.llama_cpp:
        f32 = args.out / "llama.cpp" / "model-F32.gguf"
        if not f32.is_file():
            f32.parent.mkdir(parents=True, exist_ok=True)
            print("convert_hf_to_gguf.py F32 ...", file=sys.stderr)
            run_worker(str(HERE / "text_generation.py"), "gguf", args.threads,
                       {"model": str(args.model), "package": str(f32), "llama_cpp": args.llama_cpp, "outtype": "f32"},
                       args.llama_python)
        base = llama(args, "F32", f32)
        rows.append(base)
        for quant in args.llama_quants.split(","):
            rows.append(llama(args, quant, f32))
    for row in rows:
        own = fp32 if row["tool"] == "edge-sdk" else base
        row["perplexity_change_pct"] = 100 * (row["perplexity"] / own["perplexity"] - 1)
        if parameters:
            row["bits_per_weight"] = 8e6 * row["model_mb"] / parameters
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "model": str(args.model), "data": str(args.data),
              "parameters": parameters, "context": CONTEXT, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print("| tool | recipe | model MB | bits/weight | perplexity | vs own FP32 | KL vs FP32 | top-1 vs FP32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        bits = f"{r['bits_per_weight']:.2f}" if "bits_per_weight" in r else "-"
        kl = f"{r['kl']:.4f}" if r.get("kl") is not None else "-"
        top1 = f"{100 * r['top1']:.1f}%" if r.get("top1") is not None else "-"
        print(f"| {r['tool']} | {r['recipe']} | {r['model_mb']:.2f} | {bits} | {r['perplexity']:.3f} | "
              f"{r['perplexity_change_pct']:+.2f}% | {kl} | {top1} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
