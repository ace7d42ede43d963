"""What `edge-sdk bench` adds to the latency it measures, against a bare loop calling the engine.

On an image-generation package (one run = one image, --steps DDIM steps): the bare loop is an
onnxruntime.InferenceSession (or an OpenVINO compiled model) called --steps times with the same
inputs, timed with perf_counter; the runtime loop times `edge_sdk.load(PKG).sample(1, steps)` the
same way (what our runtime adds: the numpy DDIM step, noise, checks); the harness is
`edge_sdk.devices.bench.bench` (fresh process, warm-up, runs until --runs). All three in
alternating rounds, so that drift hits them alike.

    python benchmarks/harness_overhead.py --package /tmp/bench-diffusion/cifar-onnxruntime-fp32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common import machine  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)


def bare_loop(package: Path, threads: int, steps: int, runs: int) -> list[float]:
    manifest = json.loads((package / "manifest.json").read_text())
    graph = next(g for g in manifest["graphs"] if g["role"] == "unet")
    model = manifest["model"]
    sample = np.random.default_rng(0).standard_normal((1, model["channels"], *model["sample_size"])).astype(np.float32)
    timesteps = np.linspace(999, 0, steps).astype(np.int64)
    if manifest["runtime"]["name"] == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(package / graph["path"]), options, providers=["CPUExecutionProvider"])
        call = lambda t: session.run(None, {"sample": sample, "timestep": np.array([t], np.int64)})  # noqa: E731
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(package / graph["path"]), "CPU",
                                           {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        call = lambda t: request.infer({"sample": sample, "timestep": np.array([t], np.int64)})  # noqa: E731
    for t in timesteps:  # warm-up run
        call(t)
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        for t in timesteps:
            call(t)
        latencies.append(time.perf_counter() - start)
    return latencies


def runtime_loop(package: Path, threads: int, steps: int, runs: int) -> list[float]:
    import edge_sdk

    gen = edge_sdk.load(package, threads=threads)
    gen.sample(1, steps, seed=0, scheduler="ddim")  # warm-up run
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        gen.sample(1, steps, seed=0, scheduler="ddim")
        latencies.append(time.perf_counter() - start)
    return latencies


def main() -> None:
    from edge_sdk.devices.bench import BenchOptions, bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bare, runtime, harness = [], [], []
    for _ in range(args.rounds):
        bare.append(float(np.median(bare_loop(args.package, args.threads, args.steps, args.runs))) * 1e3)
        runtime.append(float(np.median(runtime_loop(args.package, args.threads, args.steps, args.runs))) * 1e3)
        report = bench([str(args.package)], BenchOptions(threads=args.threads, warmup=1, min_runs=args.runs, min_seconds=0,
                                                         steps=args.steps))
        harness.append(report["packages"][0]["latency_ms"]["p50"])
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {args.threads} threads, {time.strftime('%Y-%m-%d')}")
    print(f"package {args.package.name}: one run = {args.steps} UNet steps, {args.runs} runs per round, {args.rounds} rounds")
    for i, (b, r, h) in enumerate(zip(bare, runtime, harness)):
        print(f"round {i + 1}: bare engine p50 {b:.2f} ms, runtime loop {r:.2f} ms, edge-sdk bench {h:.2f} ms")
    b, r, h = (float(np.median(x)) for x in (bare, runtime, harness))
    print(f"median of rounds: bare engine {b:.2f} ms, runtime loop {r:.2f} ms ({100 * (r / b - 1):+.2f}% runtime), "
          f"bench {h:.2f} ms: {100 * (h / r - 1):+.2f}% harness over the runtime loop, {100 * (h / b - 1):+.2f}% over the bare engine "
          "(target < 5%)")


if __name__ == "__main__":
    main()
