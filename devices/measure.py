"""The harness's measuring primitives: repeated runs, latency summaries, peak memory.

numpy and the standard library only, no edge-sdk imports: ``edge-sdk bench`` uses them, and so do
the benchmark scripts' workers, also in a peer's Python without edge-sdk (faster-whisper's or
optimum-intel's venv), which loads this file by its path (benchmarks/common.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

PERCENTILES = (50, 90, 99)


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


def summarize(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms, dtype=np.float64)
    summary = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    summary.update(mean=float(values.mean()), min=float(values.min()), max=float(values.max()))
    return summary


def peak_rss_mb(children: bool = False) -> float:
    """This process's peak resident set (VmHWM) in MB; ru_maxrss would carry a parent's peak over exec.

    ``children``: the larger of that and the peak of any child process it waited for (an export's
    PyTorch stage runs in one).
    """
    import resource

    peak = None
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024 / 1e6
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    if children:  # Linux reports KiB
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6)
    return peak
