"""The benchmark harness behind ``edge-sdk bench``: latency percentiles, task metrics, peak memory,
and whether a package fits a device profile.

Each package is measured in a fresh process (its load time and peak RSS are its own): a warm-up,
then runs until both ``min_runs`` and ``min_seconds`` are reached. One run is one unit of the
task's work:

    text-generation     generate ``new_tokens`` tokens after a ``prompt_tokens``-token prompt
                        (greedy, EOS ignored): first-token ms, prefill and decode tokens/s
    speech-recognition  transcribe the bundled 7.8 s espeak-ng sentence (or ``audio``): real-time factor
    image-generation    one image, ``steps`` DDIM steps: seconds per step and per image

When the device profile is not this machine, every figure is also projected to it (see
``project``), and the projected figures are labelled as such. Nothing here imports torch.

Example::

    from edge_sdk.devices.bench import BenchOptions, bench
    report = bench(["out/smollm-int8"], BenchOptions(min_runs=5), device="raspberry-pi-5")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import edge_sdk
from edge_sdk.devices.profiles import DeviceProfile, detect, load_profile
from edge_sdk.errors import EdgeSDKError, InvalidInputError

SCHEMA = "edge-sdk-bench/1"
SPEECH_SAMPLE = Path(edge_sdk.__file__).parent / "data" / "speech-sample.wav"  # espeak-ng, 7.8 s, 16 kHz
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class BenchOptions:
    threads: int | None = None  # None: the profile's thread count (capped at this machine's cores)
    warmup: int = 1
    min_runs: int = 10
    min_seconds: float = 5.0
    prompt_tokens: int = 32  # text
    new_tokens: int = 32  # text
    audio: str | None = None  # speech: a WAV to transcribe instead of the bundled sample
    steps: int = 10  # image generation: DDIM steps per run

    def __post_init__(self):
        for name in ("warmup", "min_runs", "prompt_tokens", "new_tokens", "steps"):
            minimum = 0 if name == "warmup" else 1
            if getattr(self, name) < minimum:
                raise InvalidInputError(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(self, name)}")
        if self.new_tokens < 2:
            raise InvalidInputError(f"--new-tokens must be >= 2 (decode speed needs a step after the first token), got {self.new_tokens}")
        if self.min_seconds < 0:
            raise InvalidInputError(f"--min-seconds must be >= 0, got {self.min_seconds}")
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"--threads must be >= 1, got {self.threads}")
        if self.audio is not None and not Path(self.audio).is_file():
            raise InvalidInputError(f"audio file {self.audio} does not exist")


# ---------------------------------------------------------------- workloads: one run of each task

def _text_workload(model, options: BenchOptions) -> tuple[Callable[[], dict], dict]:
    from edge_sdk.evaluation import BUNDLED_EVAL_TEXT

    words = BUNDLED_EVAL_TEXT.read_text(encoding="utf-8").split()
    encode = model.tokenizer.encode
    count = options.prompt_tokens
    while count > 1 and len(encode(" ".join(words[:count]))) > options.prompt_tokens:
        count -= 1
    prompt = " ".join(words[:count])
    settings = model.options(max_new_tokens=options.new_tokens, ignore_eos=True, temperature=0.0)

    def run() -> dict:
        model.generate(prompt, settings)
        s = model.last_stats
        return {"first_token_ms": s.first_token_seconds * 1e3, "decode_tokens_per_s": s.decode_tokens_per_second,
                "prefill_tokens_per_s": s.prompt_tokens / s.first_token_seconds if s.first_token_seconds else 0.0,
                "decode_seconds": s.total_seconds - s.first_token_seconds}

    return run, {"prompt_tokens": len(encode(prompt)), "new_tokens": options.new_tokens}


def _speech_workload(model, options: BenchOptions) -> tuple[Callable[[], dict], dict]:
    audio = Path(options.audio) if options.audio else SPEECH_SAMPLE

    def run() -> dict:
        result = model.transcribe(audio)
        s = result.stats
        return {"real_time_factor": s.real_time_factor, "audio_seconds": s.audio_seconds,
                "encoder_seconds": s.encoder_seconds, "decoder_seconds": s.decoder_seconds}

    return run, {"audio": str(audio)}


def _image_workload(model, options: BenchOptions) -> tuple[Callable[[], dict], dict]:
    def run() -> dict:
        model.sample(num_images=1, steps=options.steps, seed=0, scheduler="ddim")
        s = model.last_stats
        return {"seconds_per_step": s.total_seconds / s.steps, "seconds_per_image": s.total_seconds}

    return run, {"steps": options.steps, "scheduler": "ddim", "batch": 1}


WORKLOADS = {"text-generation": _text_workload, "speech-recognition": _speech_workload, "image-generation": _image_workload}
# the figure a task is judged by, and whether higher is better
TASK_METRIC = {"text-generation": ("decode_tokens_per_s", True), "speech-recognition": ("real_time_factor", False),
               "image-generation": ("seconds_per_step", False)}


def repeat(run: Callable[[], dict], warmup: int, min_runs: int, min_seconds: float) -> tuple[list[float], list[dict]]:
    """Warm-up runs, then runs until both ``min_runs`` and ``min_seconds`` are reached: (latencies s, metrics)."""
    for _ in range(warmup):
        run()
    latencies, metrics = [], []
    clock = time.perf_counter
    start = clock()
    while len(latencies) < min_runs or clock() - start < min_seconds:
        t0 = clock()
        figures = run()
        latencies.append(clock() - t0)
        metrics.append(figures)
    return latencies, metrics


def measure_package(package: str, options: BenchOptions, threads: int) -> dict[str, Any]:
    """Load and measure one package in this process (see ``bench`` for the fresh-process wrapper)."""
    import edge_sdk

    start = time.perf_counter()
    model = edge_sdk.load(package, threads=threads)
    load_seconds = time.perf_counter() - start
    task = model.package.task
    if task not in WORKLOADS:
        raise InvalidInputError(f"{package} is a {task} package; bench measures {', '.join(WORKLOADS)}")
    run, workload = WORKLOADS[task](model, options)
    latencies, metrics = repeat(run, options.warmup, options.min_runs, options.min_seconds)
    manifest = model.package.manifest
    return {
        "package": str(package),
        "task": task,
        "runtime": manifest["runtime"]["name"],
        "weights": manifest["precision"]["weights"],
        "activations": manifest["precision"].get("activations", "fp32"),
        "size_mb": model.package.size_bytes / 1e6,
        "load_seconds": load_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "threads": threads,
        "workload": workload,
        "warmup": options.warmup,
        "runs": len(latencies),
        "seconds": float(sum(latencies)),
        "latency_ms": summarize([x * 1e3 for x in latencies]),
        "latencies_ms": [x * 1e3 for x in latencies],
        "metrics": {key: float(np.median([m[key] for m in metrics])) for key in metrics[0]},
    }


def summarize(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms, dtype=np.float64)
    summary = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    summary.update(mean=float(values.mean()), min=float(values.min()), max=float(values.max()))
    return summary


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB; ru_maxrss would carry a parent's peak over exec."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


# ---------------------------------------------------------------- projection and fit

def _compute_score(threads: int, clock_ghz: float, simd_bits: int) -> float:
    return threads * clock_ghz * simd_bits


def project(result: dict, host: DeviceProfile, target: DeviceProfile, host_threads: int) -> dict[str, Any]:
    """Figures measured on ``host`` (with ``host_threads``) projected to ``target``.

    Model: compute-bound work (prefill / first token, speech, diffusion steps) scales with cores x
    clock x SIMD width; text decode, bound by reading the weights once per token, scales with the
    memory bandwidth ratio. Not modelled: int8 dot-product instructions (VNNI / SDOT), caches,
    thermal throttling. A first-order estimate, labelled "projected" everywhere it appears.
    """
    compute = _compute_score(host_threads, host.cpu.clock_ghz, host.cpu.simd_bits) / _compute_score(
        target.cpu.threads, target.cpu.clock_ghz, target.cpu.simd_bits)
    memory = host.memory.bandwidth_gbps / target.memory.bandwidth_gbps
    m = result["metrics"]
    task = result["task"]
    if task == "text-generation":
        first = m["first_token_ms"] * compute
        decode_seconds = m["decode_seconds"] * memory
        metrics = {"first_token_ms": first, "prefill_tokens_per_s": m["prefill_tokens_per_s"] / compute,
                   "decode_tokens_per_s": m["decode_tokens_per_s"] / memory}
        scale = (first / 1e3 + decode_seconds) / (m["first_token_ms"] / 1e3 + m["decode_seconds"])
    elif task == "speech-recognition":
        metrics, scale = {"real_time_factor": m["real_time_factor"] * compute}, compute
    else:
        metrics = {"seconds_per_step": m["seconds_per_step"] * compute, "seconds_per_image": m["seconds_per_image"] * compute}
        scale = compute
    return {
        "projected": True,
        "model": (f"compute-bound parts x{compute:.2f} (threads x clock x SIMD bits: host {host_threads} x "
                  f"{host.cpu.clock_ghz} GHz x {host.cpu.simd_bits}, target {target.cpu.threads} x {target.cpu.clock_ghz} GHz x "
                  f"{target.cpu.simd_bits}); text decode x{memory:.2f} (bandwidth host {host.memory.bandwidth_gbps} GB/s "
                  f"{host.memory.bandwidth_source}, target {target.memory.bandwidth_gbps} GB/s {target.memory.bandwidth_source})"),
        "compute_ratio": compute,
        "bandwidth_ratio": memory,
        "latency_ms": {key: value * scale for key, value in result["latency_ms"].items()},
        "metrics": metrics,
    }


def fit(result: dict, profile: DeviceProfile, figures: dict) -> dict[str, Any]:
    """PASS/FAIL of a package on ``profile``: memory (package size and peak RSS within the RAM
    budget) and the task's latency targets, judged on ``figures`` (projected when projecting)."""
    budget_mb = profile.ram_budget_bytes / 1e6
    checks = []
    for label, value in (("package size", result["size_mb"]), ("peak memory", result["peak_rss_mb"])):
        checks.append({"check": label, "ok": value <= budget_mb,
                       "detail": f"{label} {value:.0f} MB {'<=' if value <= budget_mb else '>'} budget {budget_mb:.0f} MB "
                                 f"({profile.budgets.max_ram_share:.0%} of {profile.memory.ram_gb:g} GB)"})
    b, m = profile.budgets, figures["metrics"]
    targets = {
        "text-generation": [("first_token_ms", b.text_first_token_ms, False), ("decode_tokens_per_s", b.text_decode_tokens_per_s, True)],
        "speech-recognition": [("real_time_factor", b.speech_real_time_factor, False)],
        "image-generation": [("seconds_per_step", b.image_seconds_per_step, False)],
    }[result["task"]]
    for key, target, higher in targets:
        if target is None:
            continue
        value = m[key]
        ok = value >= target if higher else value <= target
        relation = (">=" if ok else "<") if higher else ("<=" if ok else ">")
        checks.append({"check": key, "ok": ok, "detail": f"{key} {value:.4g} {relation} target {target:g}"})
    failed = [c["detail"] for c in checks if not c["ok"]]
    return {"verdict": "FAIL" if failed else "PASS", "reason": "; ".join(failed) if failed else "all checks met",
            "checks": checks}


def is_this_machine(profile: DeviceProfile, host: DeviceProfile) -> bool:
    """The profile describes this host (same CPU shape and RAM within 5%): figures need no projection."""
    if profile is host:
        return True
    same_cpu = ((profile.cpu.architecture, profile.cpu.cores, profile.cpu.simd_bits) ==
                (host.cpu.architecture, host.cpu.cores, host.cpu.simd_bits) and abs(profile.cpu.clock_ghz - host.cpu.clock_ghz) < 0.05)
    return same_cpu and abs(profile.memory.ram_gb - host.memory.ram_gb) <= 0.05 * host.memory.ram_gb


def bench(packages: list[str], options: BenchOptions | None = None, device: str | None = None,
          progress: Callable[[str], None] | None = None, host: DeviceProfile | None = None) -> dict[str, Any]:
    """Measure ``packages`` (each in a fresh process) and judge them against ``device`` (a profile
    name or TOML path; None: this machine). ``host``: this machine's profile if already detected.
    Returns the report (see README: bench JSON)."""
    options = options or BenchOptions()
    if not packages:
        raise InvalidInputError("no packages given; pass one or more package directories")
    host = host or detect(bandwidth_seconds=0.3)
    profile = load_profile(device) if device else host
    projecting = not is_this_machine(profile, host)
    threads = options.threads or min(profile.cpu.threads, host.cpu.cores)
    rows = []
    for package in packages:
        if progress:
            progress(package)
        result = _in_fresh_process(package, options, threads)
        result["projection"] = project(result, host, profile, threads) if projecting else None
        result["fit"] = fit(result, profile, result["projection"] or result)
        rows.append(result)
    return {
        "schema": SCHEMA,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": host.as_dict(),
        "device": {"name": profile.name, "source": profile.source or "detected", "projected": projecting},
        "threads": threads,
        "options": asdict(options),
        "packages": rows,
    }


def _in_fresh_process(package: str, options: BenchOptions, threads: int) -> dict:
    request = json.dumps({"package": str(package), "options": asdict(options), "threads": threads})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "edge_sdk.devices.bench", request], capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        error = next((l for l in reversed(done.stderr.strip().splitlines()) if l.startswith("edge-sdk-error: ")), None)
        if error:
            import edge_sdk.errors

            kind, _, message = error[len("edge-sdk-error: "):].partition(": ")
            cls = getattr(edge_sdk.errors, kind, None)
            raise (cls if isinstance(cls, type) and issubclass(cls, EdgeSDKError) else EdgeSDKError)(message)
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise EdgeSDKError(f"benchmarking {package} failed in its worker process: {last[0][:300]} "
                           "(run the package with edge-sdk --debug to see the traceback)")
    return json.loads(lines[-1])


def _worker(request: str) -> int:
    request = json.loads(request)
    try:
        result = measure_package(request["package"], BenchOptions(**request["options"]), request["threads"])
    except EdgeSDKError as e:
        print(f"edge-sdk-error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1]))
