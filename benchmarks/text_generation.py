"""Benchmark: PyTorch eager FP32 vs the ONNX Runtime FP32 package, on a SmolLM2-135M-shaped Llama.

    python benchmarks/text_generation.py [--out results/text-generation] [--threads 2]

Random weights (speed does not depend on them), a prompt of exactly 32 tokens, 64 new tokens,
greedy, EOS ignored so every run decodes the same number of tokens. Each engine runs in its own
process (so peak RSS is its own): one warm-up, then repetitions until both --min-runs and
--min-seconds are reached; medians are reported. Export time and peak RSS are measured in a
process of their own too. Prints a Markdown table and writes JSON next to the model.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT_TOKENS, NEW_TOKENS = 32, 64


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports KiB; MB = 1e6 bytes


def prompt_of(tokenizer_encode, length: int) -> str:
    """A text whose encoding (with BOS) is exactly ``length`` tokens."""
    words = ["a"]
    while len(tokenizer_encode(" ".join(words))) < length:
        words.append("a")
    text = " ".join(words)
    if len(tokenizer_encode(text)) != length:
        raise SystemExit(f"cannot build a {length}-token prompt with this tokenizer")
    return text


def repeat(run_once, min_runs: int, min_seconds: float) -> list[dict]:
    run_once()  # warm-up: first-call allocations, thread pool start
    results, start = [], time.perf_counter()
    while len(results) < min_runs or time.perf_counter() - start < min_seconds:
        results.append(run_once())
    return results


def worker_export(args) -> dict:
    import edge_sdk

    start = time.perf_counter()
    edge_sdk.export(args.model, args.package, overwrite=True, progress=False)
    return {"export_seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def worker_torch(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    load_seconds = time.perf_counter() - start
    prompt = prompt_of(lambda t: tokenizer(t)["input_ids"], PROMPT_TOKENS)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def run_once() -> dict:
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            t1 = time.perf_counter()
            for _ in range(NEW_TOKENS - 1):
                out = model(input_ids=token, use_cache=True, **{cache: getattr(out, cache)})
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            t2 = time.perf_counter()
        return {"first_token_ms": (t1 - t0) * 1e3, "decode_tokens_per_s": (NEW_TOKENS - 1) / (t2 - t1)}

    import warnings

    warnings.filterwarnings("ignore")
    runs = repeat(run_once, args.min_runs, args.min_seconds)
    return summarize(runs, load_seconds)


def worker_onnxruntime(args) -> dict:
    import edge_sdk

    start = time.perf_counter()
    lm = edge_sdk.load(args.package, threads=args.threads)
    load_seconds = time.perf_counter() - start
    prompt = prompt_of(lm.tokenizer.encode, PROMPT_TOKENS)

    def run_once() -> dict:
        result = lm.generate(prompt, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        assert len(result.token_ids) == NEW_TOKENS and result.stats.prompt_tokens == PROMPT_TOKENS
        return {
            "first_token_ms": result.stats.first_token_seconds * 1e3,
            "decode_tokens_per_s": result.stats.decode_tokens_per_second,
        }

    runs = repeat(run_once, args.min_runs, args.min_seconds)
    return {**summarize(runs, load_seconds), "package_mb": lm.package.size_bytes / 1e6}


def summarize(runs: list[dict], load_seconds: float) -> dict:
    return {
        "runs": len(runs),
        "load_seconds": load_seconds,
        "first_token_ms": statistics.median(r["first_token_ms"] for r in runs),
        "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs),
        "decode_tokens_per_s_min": min(r["decode_tokens_per_s"] for r in runs),
        "decode_tokens_per_s_max": max(r["decode_tokens_per_s"] for r in runs),
        "peak_rss_mb": peak_rss_mb(),
    }


WORKERS = {"export": worker_export, "torch": worker_torch, "onnxruntime": worker_onnxruntime}


def in_subprocess(kind: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--out", str(args.out), "--threads", str(args.threads),
               "--min-runs", str(args.min_runs), "--min-seconds", str(args.min_seconds)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict:
    flags = ""
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f" {f}" in flags]
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa, "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/text-generation"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-runs", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model, args.package = args.out / "smollm2-135m-random", args.out / "smollm2-135m-random-onnx-fp32"

    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    from edge_sdk.converters.tiny import SMOLLM2_135M, build_causal_lm

    if not (args.model / "config.json").is_file():
        print(f"building SmolLM2-135M-shaped random model in {args.model}", file=sys.stderr)
        build_causal_lm("LlamaForCausalLM", args.model, seed=0, config_overrides={**SMOLLM2_135M, "initializer_range": 0.02})
    weights_mb = sum(p.stat().st_size for p in args.model.glob("*.safetensors")) / 1e6

    print("exporting ...", file=sys.stderr)
    export = in_subprocess("export", args)
    print("PyTorch eager ...", file=sys.stderr)
    torch_result = in_subprocess("torch", args)
    print("ONNX Runtime package ...", file=sys.stderr)
    ort_result = in_subprocess("onnxruntime", args)

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "threads": args.threads,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "fp32_weights_mb": weights_mb,
        "export": {**export, "peak_rss_over_weights": export["peak_rss_mb"] / weights_mb},
        "pytorch_eager_fp32": torch_result,
        "onnxruntime_fp32": ort_result,
        "decode_speedup": ort_result["decode_tokens_per_s"] / torch_result["decode_tokens_per_s"],
        "first_token_speedup": torch_result["first_token_ms"] / ort_result["first_token_ms"],
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2))

    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {args.threads} threads, {report['date']}")
    print(f"SmolLM2-135M-shaped Llama (random weights, {weights_mb:.0f} MB FP32), {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, greedy\n")
    print("| engine | first token (ms) | decode (tok/s, median [min-max]) | peak RSS (MB) | load (s) | runs |")
    print("|---|---|---|---|---|---|")
    for name, r in (("PyTorch eager FP32", torch_result), ("edge-sdk ONNX Runtime FP32", ort_result)):
        print(f"| {name} | {r['first_token_ms']:.1f} | {r['decode_tokens_per_s']:.1f} [{r['decode_tokens_per_s_min']:.1f}-{r['decode_tokens_per_s_max']:.1f}] "
              f"| {r['peak_rss_mb']:.0f} | {r['load_seconds']:.2f} | {r['runs']} |")
    print(f"\ndecode speed-up ORT / PyTorch: {report['decode_speedup']:.2f}x (target >= 2.0x); "
          f"first-token speed-up: {report['first_token_speedup']:.2f}x")
    print(f"export: {export['export_seconds']:.0f} s, peak RSS {export['peak_rss_mb']:.0f} MB = "
          f"{report['export']['peak_rss_over_weights']:.2f}x the FP32 weights (target <= 3x); package {ort_result['package_mb']:.0f} MB")


if __name__ == "__main__":
    main()
