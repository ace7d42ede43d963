"""Benchmark text generation: PyTorch eager vs our packages (runtime x precision) vs optimum-intel.

    python benchmarks/text_generation.py [--out results/text-generation] [--threads 2]
        [--variants onnxruntime:fp32,onnxruntime:int8,...] [--optimum-python PATH]
        [--accuracy-model DIR --eval-data FILE]

Speed: a SmolLM2-135M-shaped Llama with random weights (speed does not depend on them), a prompt of
exactly 32 tokens, 64 new tokens, greedy, EOS ignored. Every engine runs in its own process (so
peak RSS is its own): one warm-up, then runs until --min-runs and --min-seconds are both reached;
the whole set of engines runs --rounds times, interleaved, and the median over rounds of each
round's median is reported (shared machines drift; interleaving spreads the drift over everyone).
Exports are timed in their own processes too (peak RSS includes the export's child process).

Accuracy (optional): the same variants exported from a trained tiny LM (samples/train_tiny_lm.py),
read from each package's manifest: KL divergence and top-1 agreement against FP32, perplexity.

optimum-intel (optional): `optimum-cli export openvino --weight-format fp32|int8|int4 --group-size 64`
of the same model, loaded with OVModelForCausalLM, run by --optimum-python (a Python that has
optimum-intel installed), timed with a streamer the same way.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import dispatch, machine, peak_rss_mb, repeat, run_worker  # benchmarks/common.py (on sys.path)

PROMPT_TOKENS, NEW_TOKENS = 32, 64
# --shape: (architecture, config, label); random weights (speed does not depend on them)
SHAPES = {"smollm2-135m": ("LlamaForCausalLM", "SMOLLM2_135M", "SmolLM2-135M-shaped Llama"),
          "qwen2.5-0.5b": ("Qwen2ForCausalLM", "QWEN25_05B", "Qwen2.5-0.5B-shaped Qwen2")}
DEFAULT_VARIANTS = "onnxruntime:fp32,onnxruntime:int8,onnxruntime:int4,openvino:fp32,openvino:int8,openvino:int4"


def prompt_of(encode, length: int) -> str:
    """A text whose encoding (with BOS) is exactly ``length`` tokens."""
    words = ["a"]
    while len(encode(" ".join(words))) < length:
        words.append("a")
    text = " ".join(words)
    if len(encode(text)) != length:
        raise SystemExit(f"cannot build a {length}-token prompt with this tokenizer")
    return text


def measured(run_once, args, load_seconds: float) -> dict:
    """The harness's repeat (one warm-up, then --min-runs and --min-seconds) and medians of the runs."""
    _, runs = repeat(run_once, 1, args.min_runs, args.min_seconds)
    return {"runs": len(runs), "load_seconds": load_seconds, "first_token_ms": statistics.median(r["first_token_ms"] for r in runs),
            "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs), "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------- workers (each in its own process)

def worker_export(args) -> dict:
    import edge_sdk
    from edge_sdk.converters.export import ExportOptions
    from edge_sdk.quantization import QuantizationOptions

    runtime, weights = args.variant.split(":")
    options = ExportOptions(runtime=runtime, quantization=QuantizationOptions(weights=weights, group_size=args.group_size if weights == "int4" else None),
                            eval_data=Path(args.eval_data) if args.eval_data else None)
    start = time.perf_counter()
    edge_sdk.export(args.model, args.package, options, overwrite=True, progress=False)
    return {"export_seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(children=True)}


def worker_torch(args) -> dict:
    import warnings

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    load_seconds = time.perf_counter() - start
    ids = torch.tensor([tokenizer(prompt_of(lambda t: tokenizer(t)["input_ids"], PROMPT_TOKENS))["input_ids"]])
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

    return measured(run_once, args, load_seconds)


def worker_package(args) -> dict:
    import edge_sdk

    start = time.perf_counter()
    lm = edge_sdk.load(args.package, threads=args.threads)
    load_seconds = time.perf_counter() - start
    prompt = prompt_of(lm.tokenizer.encode, PROMPT_TOKENS)

    def run_once() -> dict:
        result = lm.generate(prompt, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        assert len(result.token_ids) == NEW_TOKENS and result.stats.prompt_tokens == PROMPT_TOKENS
        return {"first_token_ms": result.stats.first_token_seconds * 1e3,
                "decode_tokens_per_s": result.stats.decode_tokens_per_second}

    return {**measured(run_once, args, load_seconds), "package_mb": lm.package.size_bytes / 1e6}


def worker_optimum(args) -> dict:
    """Runs under --optimum-python: OVModelForCausalLM with a streamer that timestamps each token."""
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    config = {"INFERENCE_NUM_THREADS": str(args.threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "CACHE_DIR": ""}
    start = time.perf_counter()
    model = OVModelForCausalLM.from_pretrained(args.package, ov_config=config)
    tokenizer = AutoTokenizer.from_pretrained(args.package)
    load_seconds = time.perf_counter() - start
    inputs = tokenizer(prompt_of(lambda t: tokenizer(t)["input_ids"], PROMPT_TOKENS), return_tensors="pt")

    class Clock(BaseStreamer):
        def __init__(self):
            self.times, self.calls = [], 0

        def put(self, value):
            self.calls += 1
            if self.calls > 1:  # the first call carries the prompt
                self.times.append(time.perf_counter())

        def end(self):
            pass

    def run_once() -> dict:
        clock = Clock()
        t0 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, streamer=clock)
        return {"first_token_ms": (clock.times[0] - t0) * 1e3,
                "decode_tokens_per_s": (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])}

    size = sum(p.stat().st_size for p in Path(args.package).rglob("*") if p.is_file())
    return {**measured(run_once, args, load_seconds), "package_mb": size / 1e6}


WORKERS = {"export": worker_export, "torch": worker_torch, "package": worker_package, "optimum": worker_optimum}


# ---------------------------------------------------------------- orchestration

def worker_entry(request: dict, step=None) -> dict:
    return dispatch(WORKERS, request)


def in_subprocess(kind: str, args, python: str | None = None, **fields) -> dict:
    fields = {"min_runs": args.min_runs, "min_seconds": args.min_seconds, "group_size": args.group_size, "variant": None,
              "package": None, "model": None, "eval_data": None, **fields}
    return run_worker(__file__, kind, args.threads, fields, python)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "onnxruntime", "openvino", "nncf", "onnxscript"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def export_optimum(args, model: Path, weights: str, out: Path) -> dict:
    cli = Path(args.optimum_python).with_name("optimum-cli")
    command = [str(cli), "export", "openvino", "--model", str(model), "--task", "text-generation-with-past",
               "--weight-format", weights]
    if weights == "int4":
        command += ["--group-size", str(args.group_size)]
    # Through a small wrapper process: RUSAGE_CHILDREN of this (long-lived) process is the maximum
    # over every child it ever waited for, which would charge optimum-cli with our exports' peaks.
    wrapper = ("import json, resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(done.stderr); print(json.dumps({'rc': done.returncode, "
               "'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command, str(out)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    report = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"rc": done.returncode}
    if report["rc"] != 0:
        raise SystemExit(f"optimum-cli failed:\n{done.stderr[-3000:]}")
    return {"export_seconds": seconds, "peak_rss_mb": report["peak_kib"] * 1024 / 1e6}


def reuse_or_run(args, package: Path, export, what: str) -> dict:
    """Export figures of ``package``: from its export.json with --reuse-exports, else by exporting now."""
    record = package.with_name(package.name + ".export.json")
    if args.reuse_exports and record.is_file() and package.is_dir():
        return json.loads(record.read_text())
    print(f"{what} ...", file=sys.stderr)
    figures = export()
    record.write_text(json.dumps(figures))
    return figures


def accuracy_of(args, variant: str) -> dict | None:
    if not args.accuracy_model:
        return None
    out = args.out / "accuracy" / variant.replace(":", "-")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (out / "manifest.json").is_file():
        in_subprocess("export", args, model=args.accuracy_model, package=out, variant=variant, eval_data=args.eval_data,
                      group_size=args.group_size)
    return json.loads((out / "manifest.json").read_text())["accuracy"]["eval"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/text-generation"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-runs", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="runtime:weights, comma-separated")
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size (ours and optimum's)")
    parser.add_argument("--optimum-python", help="a Python with optimum-intel installed")
    parser.add_argument("--accuracy-model", help="trained Hugging Face model directory for the accuracy columns")
    parser.add_argument("--eval-data", help="held-back text for the accuracy columns")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m",
                        help="model shape (random weights): SmolLM2-135M's Llama, or Qwen2.5-0.5B's Qwen2")
    parser.add_argument("--optimum-weights", default="fp32,int8,int4", help="optimum-intel exports to run, comma-separated")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager row")
    parser.add_argument("--reuse-exports", action="store_true",
                        help="keep packages (and their export figures) from an earlier run in --out")
    args = parser.parse_args()


    from edge_sdk.converters import tiny

    architecture, config_name, label = SHAPES[args.shape]
    overrides = {**getattr(tiny, config_name), "initializer_range": 0.02}
    model = args.out / f"{args.shape}-random"
    if not (model / "config.json").is_file():
        print(f"building the {label} random model in {model}", file=sys.stderr)
        tiny.build_causal_lm(architecture, model, seed=0, config_overrides=overrides)
    weights_mb = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e6

    engines: dict[str, dict] = {}  # row name -> {"package": path or None, "kind": worker, "python": ...}
    if not args.no_torch:
        engines["PyTorch eager fp32"] = {"kind": "torch", "model": model}
    exports: dict[str, dict] = {}
    for variant in args.variants.split(","):
        package = args.out / f"edge-{variant.replace(':', '-')}"
        exports[variant] = reuse_or_run(args, package, lambda: in_subprocess(
            "export", args, model=model, package=package, variant=variant, group_size=args.group_size), f"exporting {variant}")
        engines[f"edge-sdk {variant.replace(':', ' ')}"] = {"kind": "package", "package": package, "variant": variant}
    if args.optimum_python:
        for weights in args.optimum_weights.split(","):
            package = args.out / f"optimum-openvino-{weights}"
            exports[f"optimum:{weights}"] = reuse_or_run(
                args, package, lambda: export_optimum(args, model, weights, package), f"optimum-cli export {weights}")
            engines[f"optimum-intel openvino {weights}"] = {"kind": "optimum", "package": package, "python": args.optimum_python,
                                                            "export": f"optimum:{weights}"}

    accuracy = {v: accuracy_of(args, v) for v in args.variants.split(",")}  # before the long part: fail early
    rounds: dict[str, list[dict]] = {name: [] for name in engines}
    for round_index in range(args.rounds):
        for name, engine in engines.items():
            print(f"round {round_index + 1}: {name} ...", file=sys.stderr)
            rounds[name].append(in_subprocess(engine["kind"], args, python=engine.get("python"),
                                              model=engine.get("model"), package=engine.get("package")))
    rows = {}
    for name, results in rounds.items():
        row = dict(results[-1])
        for key in ("first_token_ms", "decode_tokens_per_s"):
            row[key] = statistics.median(r[key] for r in results)
            row[f"{key}_by_round"] = [r[key] for r in results]
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
        variant = engines[name].get("variant")
        if variant:
            row["export"] = exports[variant]
            row["accuracy"] = accuracy[variant]
        elif engines[name].get("export"):
            row["export"] = exports[engines[name]["export"]]
        rows[name] = row

    def best(prefix: str, weights: str) -> tuple[str, float]:
        candidates = {n: r["decode_tokens_per_s"] for n, r in rows.items() if n.startswith(prefix) and n.endswith(weights)}
        name = max(candidates, key=candidates.get)
        return name, candidates[name]

    ratios = {}
    if args.optimum_python and "int4" in args.optimum_weights and any(n.endswith("int4") for n in rows if n.startswith("edge-sdk")):
        for name in (n for n in rows if n.startswith("edge-sdk") and n.endswith("int4")):
            ratios[f"{name} decode over optimum int4"] = (rows[name]["decode_tokens_per_s"]
                                                         / rows["optimum-intel openvino int4"]["decode_tokens_per_s"])
    if "PyTorch eager fp32" in rows and any(n.endswith("int8") for n in rows if n.startswith("edge-sdk")):
        ours8 = best("edge-sdk", "int8")
        ratios["best_int8_decode_over_pytorch"] = ours8[1] / rows["PyTorch eager fp32"]["decode_tokens_per_s"]
        if any(n.endswith("int4") for n in rows if n.startswith("edge-sdk")):
            ours4 = best("edge-sdk", "int4")
            ratios["best_int4_over_best_int8_decode"] = ours4[1] / ours8[1]
            if args.optimum_python and "int8" in args.optimum_weights:
                ratios["best_int8_over_optimum_int8_decode"] = ours8[1] / rows["optimum-intel openvino int8"]["decode_tokens_per_s"]
                ratios["best_int4_over_optimum_int4_decode"] = ours4[1] / rows["optimum-intel openvino int4"]["decode_tokens_per_s"]
    if "PyTorch eager fp32" in rows:
        ratios["fp32_onnxruntime_decode_over_pytorch"] = (
            rows.get("edge-sdk onnxruntime fp32", {}).get("decode_tokens_per_s", float("nan")) / rows["PyTorch eager fp32"]["decode_tokens_per_s"])
    ratios["max_export_peak_rss_over_fp32_weights"] = max(e["peak_rss_mb"] for k, e in exports.items() if not k.startswith("optimum")) / weights_mb

    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(), "threads": args.threads,
              "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "rounds": args.rounds, "fp32_weights_mb": weights_mb,
              "int4_group_size": args.group_size, "shape": label, "rows": rows, "exports": exports, "ratios": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print_report(report)


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {report['threads']} threads, {report['date']}")
    print(", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print(f"{report.get('shape', 'SmolLM2-135M-shaped Llama')} (random weights, {report['fp32_weights_mb']:.0f} MB FP32), "
          f"{report['prompt_tokens']}-token prompt, {report['new_tokens']} new tokens, greedy; "
          f"median of {report['rounds']} interleaved rounds\n")
    print("| engine | first token (ms) | decode (tok/s) [by round] | peak RSS (MB) | package (MB) | export s / peak MB | KL vs FP32 | top-1 vs FP32 | perplexity |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in report["rows"].items():
        rounds = "/".join(f"{v:.0f}" for v in r["decode_tokens_per_s_by_round"])
        export = r.get("export")
        export_cell = f"{export['export_seconds']:.0f} / {export['peak_rss_mb']:.0f}" if export else "-"
        accuracy = r.get("accuracy") or {}
        kl, top1 = accuracy.get("kl_divergence"), accuracy.get("top1_agreement")
        kl_cell = f"{kl:.4f}" if kl is not None else "-"
        top1_cell = f"{top1:.1%}" if top1 is not None else "-"
        ppl_cell = f"{accuracy['perplexity']:.2f}" if "perplexity" in accuracy else "-"
        package_cell = f"{r['package_mb']:.0f}" if "package_mb" in r else "-"
        print(f"| {name} | {r['first_token_ms']:.1f} | {r['decode_tokens_per_s']:.1f} [{rounds}] | {r['peak_rss_mb']:.0f} "
              f"| {package_cell} | {export_cell} | {kl_cell} | {top1_cell} | {ppl_cell} |")
    print()
    for key, value in report["ratios"].items():
        print(f"{key}: {value:.2f}")


if __name__ == "__main__":
    main()
