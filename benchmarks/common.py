"""What every benchmark reports about the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next((l for l in info.splitlines() if l.startswith("flags")), "")
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f" {f}" in flags]
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa, "python": platform.python_version()}


try:
    from edge_sdk.devices.bench import peak_rss_mb  # VmHWM: ru_maxrss would carry a parent's peak over fork + exec
except ImportError:  # a peer's venv (faster-whisper) runs our worker without edge-sdk installed
    def peak_rss_mb() -> float:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024 / 1e6


def run_worker(script: str, kind: str, threads: int, fields: dict, python: str | None = None) -> dict:
    """Run ``script --worker KIND --threads N --<field> value ...`` in a fresh process (its own
    engine, its own peak memory) and return the JSON its last stdout line holds."""
    import json
    import subprocess
    import sys

    command = [python or sys.executable, script, "--worker", kind, "--threads", str(threads)]
    for name, value in fields.items():
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
