"""The benchmark harness behind ``edge-sdk bench``: latency percentiles, task metrics, peak memory,
and whether a package fits a device profile.

Each package is measured in a fresh process (its load time and peak RSS are its own): a warm-up,
then runs until both ``min_runs`` and ``min_seconds`` are reached. One run is one unit of the
task's work, as its ``Task.workload`` in ``edge_sdk.tasks`` defines it (text: ``new_tokens``
tokens after a ``prompt_tokens``-token prompt; speech: the bundled 7.8 s sentence or ``audio``;
images: one image in ``steps`` DDIM steps); its budgets and projection come from there too.

When the device profile is not this machine, every figure is also projected to it (see
``project``), and the projected figures are labelled as such. Nothing here imports torch.

Example::

    from edge_sdk.devices.bench import BenchOptions, bench
    report = bench(["out/smollm-int8"], BenchOptions(min_runs=5), device="raspberry-pi-5")
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_sdk.devices.measure import peak_rss_mb, repeat, summarize
from edge_sdk.devices.profiles import DeviceProfile, detect, load_profile
from edge_sdk.errors import InvalidInputError
from edge_sdk.tasks import get_task
from edge_sdk.tasks.speech_recognition import SPEECH_SAMPLE  # noqa: F401  (tests and benchmarks take it from here)

SCHEMA = "edge-sdk-bench/1"


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


def measure_package(package: str, options: BenchOptions, threads: int) -> dict[str, Any]:
    """Load and measure one package in this process (see ``bench`` for the fresh-process wrapper)."""
    import edge_sdk

    start = time.perf_counter()
    model = edge_sdk.load(package, threads=threads)
    load_seconds = time.perf_counter() - start
    task = get_task(model.package.task)
    run, workload = task.workload(model, options)
    latencies, metrics = repeat(run, options.warmup, options.min_runs, options.min_seconds)
    manifest = model.package.manifest
    return {
        "package": str(package),
        "task": task.name,
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
    task = get_task(result["task"])
    rule, m = task.projection, result["metrics"]
    metrics = {}
    for keys, ratio in ((rule.compute_bound, compute), (rule.memory_bound, memory)):
        for key in keys:  # times grow with the ratio, rates shrink with it
            metrics[key] = m[key] / ratio if task.metric(key).higher_is_better else m[key] * ratio
    share = rule.memory_share(m) if rule.memory_share else 0.0
    scale = (1 - share) * compute + share * memory
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
    m = figures["metrics"]
    for budget in get_task(result["task"]).budgets:
        target = profile.budgets.target(budget.key)
        if target is None:
            continue
        key, higher = budget.metric.key, budget.metric.higher_is_better
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
    from edge_sdk import worker
    from edge_sdk.tasks import external_modules

    request = {"package": str(package), "options": asdict(options), "threads": threads}
    return worker.run("edge_sdk.devices.bench:measure_request", request, threads=threads, imports=external_modules(),
                      what=f"benchmarking {package} in its worker process")


def measure_request(request: dict, step=None) -> dict:
    """Worker entry (``edge_sdk.worker``): ``measure_package`` from a JSON request."""
    return measure_package(request["package"], BenchOptions(**request["options"]), request["threads"])
