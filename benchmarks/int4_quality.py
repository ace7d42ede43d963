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

from common import machine, prose_from_html, run_worker  # benchmarks/common.py (on sys.path)

HERE = Path(__file__).resolve().parent
CONTEXT = 128  # tokens per window, both tools (our eval's window)


def run(command: list, what: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return done


def file_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def graphs_mb(package: Path) -> float:
    """The model files of a package: its graphs and their external weights."""
    graphs = json.loads((package / "manifest.json").read_text())["graphs"]
    return file_mb([package / g["path"] for g in graphs] + [package / name for g in graphs for name in g.get("external_data", [])])


def parse_recipe(recipe: str) -> dict:
    """``int4/g128/asym/head-int8/gptq/r0.8/ov/carry`` (any order): weights, group, symmetry, head,
    algorithm(s) joined by '+', ratio, runtime (ort|ov), carry (GGUF sources: carry the file's blocks
    over; otherwise they are requantized with the recipe)."""
    fields = {"weights": "fp32", "runtime": "onnxruntime", "carry": False}
    for token in recipe.split("/"):
        if token in ("fp32", "int8", "int4"):
            fields["weights"] = token
        elif token[:1] == "g" and token[1:].lstrip("-").isdigit():
            fields["group"] = token[1:]
        elif token in ("sym", "asym"):
            fields["sym"] = token == "sym"
        elif token.startswith("head-"):
            fields["head"] = token[5:]
        elif token[:1] == "r" and token[1:].replace(".", "").isdigit():
            fields["ratio"] = token[1:]
        elif token in ("ov", "ort"):
            fields["runtime"] = {"ov": "openvino", "ort": "onnxruntime"}[token]
        elif token == "carry":
            fields["carry"] = True
        elif token.startswith("acc") and token[3:].isdigit():
            fields["accuracy_level"] = token[3:]
        else:
            fields["algorithm"] = token.replace("+", ",")
    return fields


def export_recipe(args, model: Path, out: Path, recipe: str) -> Path:
    """``edge-sdk export`` of ``model`` at ``recipe`` into ``out`` (kept: a rerun reuses it)."""
    fields = parse_recipe(recipe)
    if not (out / "manifest.json").is_file():
        command = ["edge-sdk", "export", model, "-o", out, "--weights", fields["weights"], "--eval-data", args.data,
                   "--runtime", fields["runtime"], "-q", "--overwrite"]
        if fields["weights"] != "fp32":
            if "group" in fields:
                command += ["--group-size", fields["group"]]
            command += ["--sym" if fields.get("sym") else "--asym"]
            if "accuracy_level" in fields:
                command += ["--accuracy-level", fields["accuracy_level"]]
            if model.suffix == ".gguf" and not fields["carry"]:
                command += ["--requantize"]
            if fields["weights"] == "int4":
                command += ["--head-weights", fields.get("head", "int8")]
                if "algorithm" in fields:
                    command += ["--algorithm", fields["algorithm"]]
                if "ratio" in fields:
                    command += ["--ratio", fields["ratio"]]
                if args.calibration and (fields.get("algorithm", "rtn") not in ("rtn", "k-quant", "hqq") or "ratio" in fields):
                    command += ["--calibration", args.calibration, "--num-samples", args.num_samples]
        print(f"exporting {recipe} from {model.name} ...", file=sys.stderr)
        started = time.perf_counter()
        run(command, f"edge-sdk export {recipe}")
        (out / "export_seconds").write_text(f"{time.perf_counter() - started:.1f}")
    return out


def ours(args, recipe: str, reference: Path | None) -> dict:
    out = export_recipe(args, args.model, args.out / f"edge-{recipe.replace('/', '-').replace('+', '_')}", recipe)
    command = ["edge-sdk", "eval", out, "--data", args.data, "--windows", args.windows, "--json"]
    if reference is not None:
        command += ["--reference", reference]
    figures = json.loads(run(command, f"edge-sdk eval {recipe}").stdout)
    row = {"tool": "edge-sdk", "recipe": recipe, "perplexity": figures["perplexity"],
           "reference_perplexity": figures.get("reference_perplexity"), "kl": figures.get("kl_divergence"),
           "top1": figures.get("top1_agreement"), "model_mb": graphs_mb(out), "figures": figures,
           "export_seconds": float((out / "export_seconds").read_text()) if (out / "export_seconds").is_file() else None}
    if args.decode:
        row["decode_tok_s"] = decode_speed(args, out)
    return row


def random_twin(args, recipe: str) -> dict:
    """Decode speed only: ``recipe`` exported from a random-weight Llama of SmolLM2-135M's shape
    (converters/tiny.py's SMOLLM2_135M), to set the real weights' speed beside the random-weight
    figures of benchmarks/text_generation.py. Its quality figures would mean nothing."""
    from edge_sdk.converters import tiny

    model = args.out / "smollm2-135m-random"
    if not (model / "config.json").is_file():
        print(f"building the random SmolLM2-135M-shaped model in {model} ...", file=sys.stderr)
        tiny.build_causal_lm("LlamaForCausalLM", model, seed=0, config_overrides={**tiny.SMOLLM2_135M, "initializer_range": 0.02})
    out = export_recipe(args, model, args.out / f"random-{recipe.replace('/', '-').replace('+', '_')}", recipe)
    return {"tool": "edge-sdk, random weights", "recipe": recipe, "model_mb": graphs_mb(out), "decode_tok_s": decode_speed(args, out)}


def decode_speed(args, package: Path) -> float:
    """Decode tokens/s of ``edge-sdk bench`` (its own process, --threads)."""
    report = args.out / f"bench-{package.name}.json"
    run(["edge-sdk", "bench", package, "--threads", args.threads, "--min-runs", 5, "--min-seconds", 5, "--new-tokens", 64,
         "--json", report], f"edge-sdk bench {package.name}")
    return round(float(json.loads(report.read_text())["packages"][0]["metrics"]["decode_tokens_per_s"]), 1)


def llama(args, quant: str, f32: Path) -> dict:
    gguf = f32 if quant in ("F32", "original") else args.out / "llama.cpp" / f"model-{quant}.gguf"
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
    row = {"tool": "llama.cpp", "recipe": quant, "perplexity": perplexity, "stderr": error, "model_mb": file_mb([gguf])}
    if args.decode:  # llama-bench: 64 generated tokens, --threads
        bench = run([binaries / "llama-bench", "-m", gguf, "-p", "0", "-n", "64", "-t", args.threads, "-o", "json"],
                    f"llama-bench {quant}")
        row["decode_tok_s"] = round(float(json.loads(bench.stdout)[0]["avg_ts"]), 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="a Hugging Face model (samples/train_tiny_lm.py) or a GGUF file (llama.cpp starts from its F32 dequantization)")
    parser.add_argument("--data", type=Path, required=True, help="held-back text (the model's heldout.txt), or HTML pages' prose "
                        "with --data-html")
    parser.add_argument("--data-html", nargs="*", type=Path, help="write --data from these HTML pages' paragraphs first")
    parser.add_argument("--calibration", type=Path, help="calibration text for gptq/awq/scale-estimation and ratios")
    parser.add_argument("--calibration-html", nargs="*", type=Path, help="write --calibration from these HTML pages first")
    parser.add_argument("--num-samples", type=int, default=64, help="calibration windows (of 64 tokens)")
    parser.add_argument("--decode", action="store_true", help="also measure decode tokens/s (edge-sdk bench, llama-bench)")
    parser.add_argument("--out", type=Path, default=Path("out/int4-quality"))
    parser.add_argument("--ours", default="int4/g128/asym/head-int4,int4/g128/asym,int4/g32/asym,int8/g128/asym",
                        help="our recipes, comma-separated, each tokens joined by '/': int4|int8, gN, sym|asym, head-int4|int8, "
                             "an algorithm (rtn, k-quant, hqq, gptq, awq, scale-estimation; '+' joins OpenVINO's), rRATIO, "
                             "ort|ov, accN (ONNX Runtime accuracy level), carry (GGUF: the file's blocks carried over)")
    parser.add_argument("--windows", type=int, default=1000, help="our eval's windows of 128 tokens (at most)")
    parser.add_argument("--llama-cpp", help="llama.cpp tree with build/bin/llama-perplexity and llama-quantize")
    parser.add_argument("--llama-python", help="a Python with convert_hf_to_gguf.py's requirements")
    parser.add_argument("--llama-quants", default="Q4_0,Q4_K_M")
    parser.add_argument("--llama-original", action="store_true", help="GGUF --model: also score the file itself")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random-twin", default="", help="recipes also exported from a random-weight model of SmolLM2-135M's "
                        "shape and timed (decode tok/s only, with --decode): real against random weights")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data_html:
        args.data.write_text(prose_from_html(args.data_html))
    if args.calibration_html:
        args.calibration.write_text(prose_from_html(args.calibration_html))
    args.model, args.data = args.model.resolve(), args.data.resolve()
    gguf_source = args.model.suffix == ".gguf"
    if gguf_source:
        import gguf

        parameters = sum(int(t.n_elements) for t in gguf.GGUFReader(str(args.model)).tensors)
    else:
        training = args.model / "training.json"
        parameters = json.loads(training.read_text()).get("parameters") if training.is_file() else None

    rows = []
    fp32 = ours(args, "fp32", None)
    rows.append(fp32)
    for recipe in args.ours.split(","):
        rows.append(ours(args, recipe, args.out / "edge-fp32"))
    if args.llama_cpp:
        f32 = args.out / "llama.cpp" / "model-F32.gguf"
        if gguf_source and not f32.is_file():  # the file dequantized: the same FP32 weights our exports start from
            f32.parent.mkdir(parents=True, exist_ok=True)
            run([Path(args.llama_cpp) / "build" / "bin" / "llama-quantize", "--allow-requantize", args.model, f32, "F32",
                 args.threads], "llama-quantize F32")
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
        if gguf_source and args.llama_original:
            rows.append({**llama(args, "original", args.model), "recipe": f"{args.model.name} (as shipped)"})
    if args.decode and args.random_twin:
        rows += [random_twin(args, recipe) for recipe in args.random_twin.split(",")]
    for row in rows:
        if "perplexity" not in row:
            continue
        own = fp32 if row["tool"] == "edge-sdk" else base
        row["perplexity_change_pct"] = 100 * (row["perplexity"] / own["perplexity"] - 1)
        if parameters:
            row["bits_per_weight"] = 8e6 * row["model_mb"] / parameters
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "model": str(args.model), "data": str(args.data),
              "data_html": [str(p) for p in args.data_html or []], "calibration": str(args.calibration),
              "calibration_html": [str(p) for p in args.calibration_html or []],
              "parameters": parameters, "context": CONTEXT, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print("| tool | recipe | model MB | bits/weight | perplexity | vs own FP32 | KL vs FP32 | top-1 vs FP32 | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "perplexity" not in r:
            print(f"| {r['tool']} | {r['recipe']} | {r['model_mb']:.2f} | - | - | - | - | - | {r['decode_tok_s']} |")
            continue
        bits = f"{r['bits_per_weight']:.2f}" if "bits_per_weight" in r else "-"
        kl = f"{r['kl']:.4f}" if r.get("kl") is not None else "-"
        top1 = f"{100 * r['top1']:.1f}%" if r.get("top1") is not None else "-"
        print(f"| {r['tool']} | {r['recipe']} | {r['model_mb']:.2f} | {bits} | {r['perplexity']:.3f} | "
              f"{r['perplexity_change_pct']:+.2f}% | {kl} | {top1} | {r.get('decode_tok_s') or '-'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
