"""Benchmark text generation: PyTorch eager vs our packages (runtime x precision) vs the peers
(optimum-intel, llama.cpp, onnxruntime-genai), all in one interleaved run.

    python benchmarks/text_generation.py [--out results/text-generation] [--threads 2]
        [--variants onnxruntime:fp32,onnxruntime:int8,...] [--prompt-tokens 32,128]
        [--optimum-python PATH] [--llama-cpp DIR --llama-python PATH] [--genai-python PATH]
        [--accuracy-model DIR --eval-data FILE]

    # every peer, built once into /tmp/peers, then everything in one run:
    bash benchmarks/setup_peers.sh
    python benchmarks/text_generation.py --out out/bench-peers --no-torch \
        --optimum-python /tmp/peers/optimum/bin/python \
        --llama-cpp /tmp/peers/llama.cpp --llama-python /tmp/peers/llamacpp-venv/bin/python \
        --genai-python /tmp/peers/genai/bin/python

Speed: a SmolLM2-135M-shaped Llama (or --shape qwen2.5-0.5b) with random weights (speed does not
depend on them), a prompt of exactly N tokens for each N of --prompt-tokens, 64 new tokens, greedy,
EOS ignored. Every engine runs in its own process (so peak RSS is its own) and loads once; per
prompt length one warm-up, then runs until --min-runs and --min-seconds are both reached; the whole
set of engines runs --rounds times, interleaved, and the median over rounds of each round's median
is reported (shared machines drift; interleaving spreads the drift over everyone). First token:
from the call to the first generated token; decode: the 63 tokens after it over their time.
Exports are timed in their own processes too (peak RSS includes the export's child process).

Accuracy (optional): the same variants exported from a trained tiny LM (samples/train_tiny_lm.py),
read from each package's manifest: KL divergence and top-1 agreement against FP32, perplexity.

Peers (each optional; benchmarks/setup_peers.sh builds them all into /tmp/peers):

- optimum-intel: `optimum-cli export openvino --weight-format fp32|int8|int4 --group-size 64` of the
  same model, loaded with OVModelForCausalLM, run by --optimum-python (a Python that has
  optimum-intel installed), timed with a streamer the same way.
- llama.cpp (--llama-cpp: a llama.cpp tree with build/bin/llama-bench and llama-quantize):
  convert_hf_to_gguf.py, run by --llama-python, writes an F16 GGUF of the same model, and
  llama-quantize makes each of --llama-quants from it. Our tokenizer is trained on the spot, so the
  converter does not know its pre-tokenizer's hash; it is a byte-level BPE split by GPT-2's regex,
  which llama.cpp calls "gpt-2", and the worker tells the converter so (only when the hash is
  unknown and tokenizer.json says exactly that; see worker_gguf). Timed with llama-bench (random
  token ids: no tokenizer, no sampling; it warms up each test itself), one `-r 1` call per run:
  first token is DERIVED as prompt tokens / llama-bench's prompt-processing tok/s (`-p N -n 0`),
  decode is its token-generation tok/s after a context of the prompt's length (`-p 0 -n 64 -d N`).
- onnxruntime-genai (--genai-python: a Python with onnxruntime-genai, torch and transformers): its
  model builder (`python -m onnxruntime_genai.models.builder -i MODEL -o OUT -p int8|int4 -e cpu`,
  int4 with block_size = --group-size) of the same model, run with og.Generator (greedy,
  min_length = max_length so EOS is ignored, --threads intra-op threads through og.Config.overlay),
  timed per token the same way as ours.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import dispatch, machine, peak_rss_mb, repeat, run_worker  # benchmarks/common.py (on sys.path)

NEW_TOKENS = 64
FIGURES = ("first_token_ms", "decode_tokens_per_s")  # per prompt length, per run; medians reported
# --shape: (architecture, config, label); random weights (speed does not depend on them)
SHAPES = {"smollm2-135m": ("LlamaForCausalLM", "SMOLLM2_135M", "SmolLM2-135M-shaped Llama"),
          "qwen2.5-0.5b": ("Qwen2ForCausalLM", "QWEN25_05B", "Qwen2.5-0.5B-shaped Qwen2")}
DEFAULT_VARIANTS = "onnxruntime:fp32,onnxruntime:int8,onnxruntime:int4,openvino:fp32,openvino:int8,openvino:int4"
LLAMA_BIN = Path("build") / "bin"  # under --llama-cpp: llama-bench, llama-quantize (setup_peers.sh's cmake build)
# (our weights, peer row): the report gives our best variant of those weights over the peer, per prompt length
PEER_RATIOS = (("int8", "llama.cpp Q8_0"), ("int4", "llama.cpp Q4_0"), ("int4", "llama.cpp Q4_K_M"),
               ("int8", "ort-genai int8"), ("int4", "ort-genai int4"),
               ("int8", "optimum-intel openvino int8"), ("int4", "optimum-intel openvino int4"))


def prompt_of(encode, length: int) -> str:
    """A text whose encoding (with BOS) is exactly ``length`` tokens."""
    words = ["a"]
    while len(encode(" ".join(words))) < length:
        words.append("a")
    text = " ".join(words)
    if len(encode(text)) != length:
        raise SystemExit(f"cannot build a {length}-token prompt with this tokenizer")
    return text


def medians(runs: list[dict]) -> dict:
    return {"runs": len(runs), **{key: statistics.median(r[key] for r in runs) for key in FIGURES}}


def measured(run_once, args, load_seconds: float) -> dict:
    """Per prompt length, the harness's repeat (one warm-up, then --min-runs and --min-seconds) of
    ``run_once(length)`` and medians of the runs."""
    by_prompt = {}
    for length in args.prompt_tokens:
        _, runs = repeat(functools.partial(run_once, length), 1, args.min_runs, args.min_seconds)
        by_prompt[str(length)] = medians(runs)
    return {"load_seconds": load_seconds, "by_prompt": by_prompt, "peak_rss_mb": peak_rss_mb()}


def timed(first: float, times: list[float]) -> dict:
    """One run's figures from its start and the time each new token arrived."""
    if len(times) != NEW_TOKENS:
        raise RuntimeError(f"{len(times)} tokens generated, {NEW_TOKENS} asked for")
    return {"first_token_ms": (times[0] - first) * 1e3, "decode_tokens_per_s": (len(times) - 1) / (times[-1] - times[0])}


def directory_mb(path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e6


# ---------------------------------------------------------------- workers (each in its own process)

def worker_export(args) -> dict:
    import edge_sdk
    from edge_sdk.converters.export import ExportOptions
    from edge_sdk.quantization import QuantizationOptions

    runtime, weights, *head = args.variant.split(":")  # runtime:weights[:head-int4|head-int8]
    quantization = QuantizationOptions(weights=weights, group_size=args.group_size if weights == "int4" else None,
                                       head=head[0].removeprefix("head-") if head else None)
    options = ExportOptions(runtime=runtime, quantization=quantization,
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
    ids = {n: torch.tensor([tokenizer(prompt_of(lambda t: tokenizer(t)["input_ids"], n))["input_ids"]]) for n in args.prompt_tokens}
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def run_once(length: int) -> dict:
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(input_ids=ids[length], use_cache=True)
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
    prompts = {n: prompt_of(lm.tokenizer.encode, n) for n in args.prompt_tokens}

    def run_once(length: int) -> dict:
        result = lm.generate(prompts[length], max_new_tokens=NEW_TOKENS, ignore_eos=True)
        assert len(result.token_ids) == NEW_TOKENS and result.stats.prompt_tokens == length
        return {"first_token_ms": result.stats.first_token_seconds * 1e3,
                "decode_tokens_per_s": result.stats.decode_tokens_per_second}

    return {**measured(run_once, args, load_seconds), "package_mb": lm.package.size_bytes / 1e6}


def worker_optimum(args) -> dict:
    """Runs under --optimum-python: OVModelForCausalLM with a streamer that timestamps each token."""
    from importlib.metadata import version

    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    config = {"INFERENCE_NUM_THREADS": str(args.threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "CACHE_DIR": ""}
    start = time.perf_counter()
    model = OVModelForCausalLM.from_pretrained(args.package, ov_config=config)
    tokenizer = AutoTokenizer.from_pretrained(args.package)
    load_seconds = time.perf_counter() - start
    inputs = {n: tokenizer(prompt_of(lambda t: tokenizer(t)["input_ids"], n), return_tensors="pt") for n in args.prompt_tokens}

    class Clock(BaseStreamer):
        def __init__(self):
            self.times, self.calls = [], 0

        def put(self, value):
            self.calls += 1
            if self.calls > 1:  # the first call carries the prompt
                self.times.append(time.perf_counter())

        def end(self):
            pass

    def run_once(length: int) -> dict:
        clock = Clock()
        t0 = time.perf_counter()
        model.generate(**inputs[length], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, streamer=clock)
        return timed(t0, clock.times)

    return {**measured(run_once, args, load_seconds), "package_mb": directory_mb(args.package),
            "engine_version": f"optimum-intel {version('optimum-intel')}, openvino {version('openvino')}"}


def worker_genai(args) -> dict:
    """Runs under --genai-python: the model builder's package with og.Generator, each token timestamped."""
    import onnxruntime_genai as og

    threads = {"intra_op_num_threads": args.threads, "inter_op_num_threads": 1}
    start = time.perf_counter()
    config = og.Config(args.package)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": threads}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    load_seconds = time.perf_counter() - start
    ids = {n: tokenizer.encode(prompt_of(tokenizer.encode, n)) for n in args.prompt_tokens}

    def run_once(length: int) -> dict:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=length + NEW_TOKENS, min_length=length + NEW_TOKENS)
        times = []
        t0 = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens(ids[length])
        while not generator.is_done():
            generator.generate_next_token()
            times.append(time.perf_counter())
        return timed(t0, times)

    return {**measured(run_once, args, load_seconds), "package_mb": directory_mb(args.package),
            "engine_version": f"onnxruntime-genai {og.__version__}"}


def worker_gguf(args) -> dict:
    """Runs under --llama-python: llama.cpp's convert_hf_to_gguf.py, the model to an F16 (or ``outtype``) GGUF.

    The converter names a BPE tokenizer's pre-tokenizer by hashing its encoding of a fixed text,
    and stops on a hash it does not know; its documented fix (convert_hf_to_gguf_update.py)
    downloads the known models' tokenizers, and ours is trained on the spot. So when, and only
    when, the hash is unknown and tokenizer.json's pre-tokenizer is a byte-level split with GPT-2's
    regex (what tiny.train_tokenizer makes), the converter is told "gpt-2": llama.cpp's
    pre-tokenizer for that regex.
    """
    root = Path(args.llama_cpp).resolve()
    sys.path[:0] = [str(root), str(root / "gguf-py")]  # the tree's own gguf, as the script does
    import convert_hf_to_gguf
    try:  # the converter's classes: a package in newer trees, the script itself in older ones
        from conversion import TextModel
    except ImportError:
        TextModel = convert_hf_to_gguf.TextModel

    known = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            pre = json.loads((Path(self.dir_model) / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
            if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
                return "gpt-2"
            raise

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    outtype = getattr(args, "outtype", None) or "f16"  # int4_quality.py asks for f32 (its FP32 reference)
    sys.argv = ["convert_hf_to_gguf.py", str(args.model), "--outfile", str(args.package), "--outtype", outtype]
    start = time.perf_counter()
    convert_hf_to_gguf.main()
    return {"export_seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def worker_llama_bench(args) -> dict:
    """llama.cpp's llama-bench on one GGUF, one ``-r 1`` call pair per run (see the module's docstring).

    Peak RSS: llama-bench's, or this small Python's if larger (RUSAGE_CHILDREN)."""
    bench = [str(Path(args.llama_cpp) / LLAMA_BIN / "llama-bench"), "-m", str(args.package), "-t", str(args.threads),
             "-r", "1", "-o", "json"]
    lengths = ",".join(str(n) for n in args.prompt_tokens)
    found = {}

    def tests(*options: str) -> list[dict]:
        done = subprocess.run([*bench, *options], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"llama-bench {' '.join(options)} failed:\n{done.stderr[-2000:]}")
        results = json.loads(done.stdout)
        found.update(results[0])
        return results

    def run_once() -> dict:
        prefill = {t["n_prompt"]: t["avg_ts"] for t in tests("-p", lengths, "-n", "0")}
        decode = {t["n_depth"]: t["avg_ts"] for t in tests("-p", "0", "-n", str(NEW_TOKENS), "-d", lengths)}
        return {n: {"first_token_ms": n / prefill[n] * 1e3, "decode_tokens_per_s": decode[n]} for n in args.prompt_tokens}

    _, runs = repeat(run_once, 0, args.min_runs, args.min_seconds)  # llama-bench warms up before each test
    version = f"llama.cpp build {found['build_number']} ({found['build_commit']})"
    origin = Path(args.llama_cpp) / "VENDORED_FROM"  # setup_peers.sh's note: a tree without git has no build number
    if found["build_commit"] == "unknown" and origin.is_file():
        version = f"llama.cpp from {origin.read_text().strip()}"
    return {"load_seconds": None, "by_prompt": {str(n): medians([r[n] for r in runs]) for n in args.prompt_tokens},
            "peak_rss_mb": peak_rss_mb(children=True), "package_mb": Path(args.package).stat().st_size / 1e6,
            "bits_per_weight": 8 * found["model_size"] / found["model_n_params"], "model_type": found["model_type"],
            "engine_version": version}


WORKERS = {"export": worker_export, "torch": worker_torch, "package": worker_package, "optimum": worker_optimum,
           "genai": worker_genai, "gguf": worker_gguf, "llama_bench": worker_llama_bench}


# ---------------------------------------------------------------- orchestration

def worker_entry(request: dict, step=None) -> dict:
    return dispatch(WORKERS, request)


def in_subprocess(kind: str, args, python: str | None = None, **fields) -> dict:
    fields = {"min_runs": args.min_runs, "min_seconds": args.min_seconds, "group_size": args.group_size, "variant": None,
              "package": None, "model": None, "eval_data": None, "prompt_tokens": args.prompt_tokens,
              "llama_cpp": args.llama_cpp, **fields}
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


def run_timed(command: list, what: str) -> dict:
    """Run a peer's export ``command``: its wall time and peak RSS. Through a small wrapper process:
    RUSAGE_CHILDREN of this (long-lived) process is the maximum over every child it ever waited
    for, which would charge the peer's tool with our exports' peaks."""
    wrapper = ("import json, resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(done.stderr[-20000:]); print(json.dumps({'rc': done.returncode, "
               "'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *map(str, command)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    report = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"rc": done.returncode}
    if report["rc"] != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return {"export_seconds": seconds, "peak_rss_mb": report["peak_kib"] * 1024 / 1e6}


def export_optimum(args, model: Path, weights: str, out: Path) -> dict:
    cli = Path(args.optimum_python).with_name("optimum-cli")
    command = [cli, "export", "openvino", "--model", model, "--task", "text-generation-with-past", "--weight-format", weights]
    if weights == "int4":
        command += ["--group-size", str(args.group_size)]
    return run_timed([*command, out], "optimum-cli")


def export_genai(args, model: Path, weights: str, out: Path) -> dict:
    command = [args.genai_python, "-m", "onnxruntime_genai.models.builder", "-i", model, "-o", out, "-p", weights,
               "-e", "cpu", "-c", args.out / "ort-genai-cache"]
    if weights == "int4":
        command += ["--extra_options", f"block_size={args.group_size}"]
    return run_timed(command, "the onnxruntime-genai model builder")


def export_llama_cpp(args, model: Path, exports: dict, engines: dict) -> None:
    """convert_hf_to_gguf.py to F16 once, then llama-quantize to each of --llama-quants."""
    folder = args.out / "llama.cpp"
    folder.mkdir(parents=True, exist_ok=True)
    f16 = folder / "model-F16.gguf"
    converted = reuse_or_run(args, f16, lambda: in_subprocess("gguf", args, python=args.llama_python, model=model, package=f16),
                             "convert_hf_to_gguf.py F16")
    quantize = Path(args.llama_cpp) / LLAMA_BIN / "llama-quantize"
    for quant in args.llama_quants.split(","):
        gguf, figures = f16, converted
        if quant != "F16":
            gguf = folder / f"model-{quant}.gguf"
            quantized = reuse_or_run(args, gguf, lambda: run_timed([quantize, f16, gguf, quant, str(args.threads)], "llama-quantize"),
                                     f"llama-quantize {quant}")
            figures = {"export_seconds": converted["export_seconds"] + quantized["export_seconds"],
                       "peak_rss_mb": max(converted["peak_rss_mb"], quantized["peak_rss_mb"])}
        exports[f"llama.cpp:{quant}"] = figures
        engines[f"llama.cpp {quant}"] = {"kind": "llama_bench", "package": gguf, "export": f"llama.cpp:{quant}"}


def reuse_or_run(args, package: Path, export, what: str) -> dict:
    """Export figures of ``package``: from its export.json with --reuse-exports, else by exporting now."""
    record = package.with_name(package.name + ".export.json")
    if args.reuse_exports and record.is_file() and package.exists():
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


def combined(results: list[dict]) -> dict:
    """One engine's row from its rounds: per prompt length the median over rounds, and each round's."""
    row = {key: value for key, value in results[-1].items() if key != "by_prompt"}
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    row["by_prompt"] = {}
    for length in results[0]["by_prompt"]:
        cells = [r["by_prompt"][length] for r in results]
        row["by_prompt"][length] = {**{key: statistics.median(c[key] for c in cells) for key in FIGURES},
                                    **{f"{key}_by_round": [c[key] for c in cells] for key in FIGURES},
                                    "runs_by_round": [c["runs"] for c in cells]}
    return row


def ratios_of(rows: dict, lengths: list[int]) -> dict:
    """Per prompt length: our best int8/int4 (by decode) over PyTorch and each peer of PEER_RATIOS;
    decode is ours / theirs, first token is theirs / ours (both > 1 when we are faster)."""
    def figure(name: str, length: str, key: str) -> float:
        return rows[name]["by_prompt"][length][key]

    by_prompt = {}
    for length in map(str, lengths):
        ours = {w: [n for n in rows if n.startswith("edge-sdk") and n.split()[2] == w] for w in ("int8", "int4")}
        best = {w: max(names, key=lambda n: figure(n, length, "decode_tokens_per_s")) for w, names in ours.items() if names}
        ratios = {f"best_{w}": name for w, name in best.items()}
        if "PyTorch eager fp32" in rows:
            torch_decode = figure("PyTorch eager fp32", length, "decode_tokens_per_s")
            if "int8" in best:
                ratios["best_int8_decode_over_pytorch"] = figure(best["int8"], length, "decode_tokens_per_s") / torch_decode
            if "edge-sdk onnxruntime fp32" in rows:
                ratios["fp32_onnxruntime_decode_over_pytorch"] = figure("edge-sdk onnxruntime fp32", length, "decode_tokens_per_s") / torch_decode
        if len(best) == 2:
            ratios["best_int4_over_best_int8_decode"] = (figure(best["int4"], length, "decode_tokens_per_s")
                                                         / figure(best["int8"], length, "decode_tokens_per_s"))
        for weights, peer in PEER_RATIOS:
            if weights in best and peer in rows:
                ratios[f"best_{weights}_over_{peer}_decode"] = (figure(best[weights], length, "decode_tokens_per_s")
                                                                / figure(peer, length, "decode_tokens_per_s"))
                ratios[f"best_{weights}_over_{peer}_first_token"] = (figure(peer, length, "first_token_ms")
                                                                     / figure(best[weights], length, "first_token_ms"))
        by_prompt[length] = ratios
    return by_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/text-generation"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-runs", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="runtime:weights[:head-int4|head-int8] (int4's --head-weights), comma-separated")
    parser.add_argument("--prompt-tokens", type=lambda text: [int(n) for n in text.split(",")], default=[32, 128],
                        help="prompt lengths in tokens, comma-separated; every engine is measured at each")
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size (ours, optimum's and ort-genai's block size)")
    parser.add_argument("--optimum-python", help="a Python with optimum-intel installed")
    parser.add_argument("--optimum-weights", default="fp32,int8,int4", help="optimum-intel exports to run, comma-separated")
    parser.add_argument("--llama-cpp", help="a llama.cpp tree with build/bin/llama-bench and llama-quantize (setup_peers.sh)")
    parser.add_argument("--llama-python",
                        help="a Python with convert_hf_to_gguf.py's requirements (torch, transformers, numpy, sentencepiece)")
    parser.add_argument("--llama-quants", default="Q8_0,Q4_0,Q4_K_M", help="llama-quantize types to run (or F16), comma-separated")
    parser.add_argument("--genai-python", help="a Python with onnxruntime-genai (and torch, transformers for its builder)")
    parser.add_argument("--genai-weights", default="int8,int4", help="onnxruntime-genai builder precisions to run, comma-separated")
    parser.add_argument("--accuracy-model", help="trained Hugging Face model directory for the accuracy columns")
    parser.add_argument("--eval-data", help="held-back text for the accuracy columns")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m",
                        help="model shape (random weights): SmolLM2-135M's Llama, or Qwen2.5-0.5B's Qwen2")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager row")
    parser.add_argument("--reuse-exports", action="store_true",
                        help="keep packages (and their export figures) from an earlier run in --out")
    args = parser.parse_args()
    if args.llama_cpp and not args.llama_python:
        parser.error("--llama-cpp needs --llama-python (setup_peers.sh makes /tmp/peers/llamacpp-venv/bin/python)")

    from edge_sdk.converters import tiny

    architecture, config_name, label = SHAPES[args.shape]
    overrides = {**getattr(tiny, config_name), "initializer_range": 0.02}
    model = args.out / f"{args.shape}-random"
    if not (model / "config.json").is_file():
        print(f"building the {label} random model in {model}", file=sys.stderr)
        tiny.build_causal_lm(architecture, model, seed=0, config_overrides=overrides)
    weights_mb = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e6

    engines: dict[str, dict] = {}  # row name -> {"kind": worker, "package"/"model", "python", "export": key of exports}
    if not args.no_torch:
        engines["PyTorch eager fp32"] = {"kind": "torch", "model": model}
    exports: dict[str, dict] = {}
    variants = args.variants.split(",") if args.variants else []
    for variant in variants:
        package = args.out / f"edge-{variant.replace(':', '-')}"
        exports[variant] = reuse_or_run(args, package, lambda: in_subprocess(
            "export", args, model=model, package=package, variant=variant, group_size=args.group_size), f"exporting {variant}")
        engines[f"edge-sdk {variant.replace(':', ' ')}"] = {"kind": "package", "package": package, "export": variant}
    def add_peer(kind: str, python: str, weights_list: str, directory: str, label: str, export, what: str) -> None:
        """One row per precision of a peer that exports with its own tool and runs under ``python``."""
        for weights in weights_list.split(","):
            package = args.out / f"{directory}-{weights}"
            exports[f"{kind}:{weights}"] = reuse_or_run(args, package, lambda: export(args, model, weights, package), f"{what} {weights}")
            engines[f"{label} {weights}"] = {"kind": kind, "package": package, "python": python, "export": f"{kind}:{weights}"}

    if args.optimum_python:
        add_peer("optimum", args.optimum_python, args.optimum_weights, "optimum-openvino", "optimum-intel openvino",
                 export_optimum, "optimum-cli export")
    if args.llama_cpp:
        export_llama_cpp(args, model, exports, engines)
    if args.genai_python:
        add_peer("genai", args.genai_python, args.genai_weights, "ort-genai", "ort-genai", export_genai,
                 "onnxruntime-genai builder")

    accuracy = {v: accuracy_of(args, v) for v in variants}  # before the long part: fail early
    rounds: dict[str, list[dict]] = {name: [] for name in engines}
    for round_index in range(args.rounds):
        for name, engine in engines.items():
            print(f"round {round_index + 1}: {name} ...", file=sys.stderr)
            rounds[name].append(in_subprocess(engine["kind"], args, python=engine.get("python"),
                                              model=engine.get("model"), package=engine.get("package")))
    rows = {}
    for name, results in rounds.items():
        rows[name] = combined(results)
        if engines[name].get("export"):
            rows[name]["export"] = exports[engines[name]["export"]]
        if engines[name]["kind"] == "package":
            rows[name]["accuracy"] = accuracy[engines[name]["export"]]

    ratios = {"by_prompt": ratios_of(rows, args.prompt_tokens)}
    ours = [e["peak_rss_mb"] for k, e in exports.items() if k in variants]
    if ours:
        ratios["max_export_peak_rss_over_fp32_weights"] = max(ours) / weights_mb

    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(), "threads": args.threads,
              "prompt_tokens": args.prompt_tokens, "new_tokens": NEW_TOKENS, "rounds": args.rounds, "fp32_weights_mb": weights_mb,
              "int4_group_size": args.group_size, "shape": label, "rows": rows, "exports": exports, "ratios": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print_report(report)


def print_report(report: dict) -> None:
    m, lengths = report["machine"], [str(n) for n in report["prompt_tokens"]]
    print(f"\n{m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {report['threads']} threads, {report['date']}")
    print(", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    peers = sorted({r["engine_version"] for r in report["rows"].values() if "engine_version" in r})
    if peers:
        print("peers: " + "; ".join(peers))
    print(f"{report['shape']} (random weights, {report['fp32_weights_mb']:.0f} MB FP32), "
          f"{'/'.join(lengths)}-token prompts, {report['new_tokens']} new tokens, greedy; "
          f"median of {report['rounds']} interleaved rounds\n")
    accuracy = any(r.get("accuracy") for r in report["rows"].values())
    columns = [c for n in lengths for c in (f"first token @{n} (ms)", f"decode @{n} (tok/s) [by round]")]
    columns += ["peak RSS (MB)", "package (MB)", "export s / peak MB"]
    columns += ["KL vs FP32", "top-1 vs FP32", "perplexity"] if accuracy else []
    print("| engine | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, r in report["rows"].items():
        cells = []
        for n in lengths:
            figures = r["by_prompt"][n]
            rounds = "/".join(f"{v:.0f}" for v in figures["decode_tokens_per_s_by_round"])
            cells += [f"{figures['first_token_ms']:.1f}", f"{figures['decode_tokens_per_s']:.1f} [{rounds}]"]
        export = r.get("export")
        cells += [f"{r['peak_rss_mb']:.0f}", f"{r['package_mb']:.0f}" if "package_mb" in r else "-",
                  f"{export['export_seconds']:.0f} / {export['peak_rss_mb']:.0f}" if export else "-"]
        if accuracy:
            found = r.get("accuracy") or {}
            kl, top1, ppl = found.get("kl_divergence"), found.get("top1_agreement"), found.get("perplexity")
            cells += [f"{kl:.4f}" if kl is not None else "-", f"{top1:.1%}" if top1 is not None else "-",
                      f"{ppl:.2f}" if ppl is not None else "-"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if any(n.startswith("llama.cpp") for n in report["rows"]):
        print("\nllama.cpp: first token = prompt tokens / llama-bench prompt-processing tok/s; decode = llama-bench "
              "token generation after a context of the prompt's length (random tokens, no sampling)")
        for name, r in report["rows"].items():
            if "bits_per_weight" in r:
                print(f"  {name}: {r['bits_per_weight']:.2f} bits per weight")
    print()
    for length, ratios in report["ratios"]["by_prompt"].items():
        if not ratios:
            continue
        print(f"{length}-token prompt: best int8 = {ratios.get('best_int8', '-')}, best int4 = {ratios.get('best_int4', '-')}")
        for key, value in ratios.items():
            if isinstance(value, float):  # the others name the best rows
                print(f"  {key}: {value:.2f}")
    if "max_export_peak_rss_over_fp32_weights" in report["ratios"]:
        print(f"max_export_peak_rss_over_fp32_weights: {report['ratios']['max_export_peak_rss_over_fp32_weights']:.2f}")


if __name__ == "__main__":
    main()
