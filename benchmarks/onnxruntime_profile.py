"""Where an ONNX Runtime text package's prefill and decode time goes: per-op-type kernel time.

    python benchmarks/onnxruntime_profile.py PKG [--prompt-tokens 128] [--steps 30] [--threads 2]

Runs a --prompt-tokens prefill and --steps one-token decode steps through the package's own
DecoderState (so a shared-cache package runs its GroupQueryAttention graph, bound as it is in
generation) with ONNX Runtime's profiler on, and prints, for the prefill and per decode step, the
kernel time by op type (ms and share) against wall time. The profiler's JSON is read and deleted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()

    import onnxruntime as ort

    import edge_sdk
    from edge_sdk.runtimes.decoder import DecoderState

    lm = edge_sdk.load(args.package, threads=args.threads)
    entry = lm.package.graph("decoder")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / "edge-sdk-ort-profile")
    options.log_severity_level = 3
    session = lm._session  # the runtime's own session wrapper; swap its ORT session for a profiling one
    session._session = ort.InferenceSession(str(args.package / entry["path"]), options, providers=["CPUExecutionProvider"])
    ids = [list(np.random.default_rng(0).integers(10, 1000, args.prompt_tokens))]
    with DecoderState(session, lm._graph) as state:  # warm-up: first-run allocations out of the figures
        state.prefill(ids, capacity=args.prompt_tokens + args.steps + 1)
        state.step([5])
    marks = {}
    with DecoderState(session, lm._graph) as state:
        start = time.perf_counter()
        state.prefill(ids, capacity=args.prompt_tokens + args.steps + 1)
        marks["prefill"] = time.perf_counter() - start
        start = time.perf_counter()
        token = [5]
        for _ in range(args.steps):
            token = [int(state.step(token)[0].argmax())]
        marks["decode"] = (time.perf_counter() - start) / args.steps
    trace = session._session.end_profiling()
    events = json.loads(Path(trace).read_text())
    Path(trace).unlink()
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    # the last 1 + steps runs are the measured prefill and steps (the warm-up ran 2 before)
    measured = runs[-(1 + args.steps):]
    phases = {"prefill": [measured[0]], "decode": measured[1:]}
    print(f"{args.package.name}: kv_cache {entry.get('kv_cache')}, {args.threads} threads, prompt {args.prompt_tokens} tokens")
    for phase, phase_runs in phases.items():
        by_op, count = collections.Counter(), collections.Counter()
        for run in phase_runs:
            begin, end = run["ts"], run["ts"] + run["dur"]
            for k in kernels:
                if begin <= k["ts"] <= end:
                    by_op[k["args"]["op_name"]] += k["dur"]
                    count[k["args"]["op_name"]] += 1
        n = len(phase_runs)
        total = sum(by_op.values())
        wall = marks[phase] * 1e3
        run_ms = sum(r["dur"] for r in phase_runs) / n / 1e3
        label = "prefill" if phase == "prefill" else "per decode step"
        extra = f", {args.prompt_tokens / marks['prefill']:.0f} prompt tok/s" if phase == "prefill" else f", {1 / marks['decode']:.1f} tok/s"
        print(f"  {label}: wall {wall:.2f} ms{extra}; session run {run_ms:.2f} ms; kernels {total / n / 1e3:.2f} ms")
        for op, us in by_op.most_common(args.top):
            print(f"    {op:28s} {us / n / 1e3:7.3f} ms  {100 * us / total:5.1f}%  ({count[op] // n} nodes)")


if __name__ == "__main__":
    main()
