"""`bench --remote` over loopback against `bench` here, on the same package: what measuring through
ssh costs in the figures (the board is this machine, so any difference is the remote path's).

    python benchmarks/remote_overhead.py PACKAGE [--rounds 3] [--min-runs 20] [--min-seconds 5]

Starts an OpenSSH server on a free loopback port with generated keys (tests/sshd.py, as the remote
tests do), then alternates `edge-sdk bench PACKAGE --json` and `edge-sdk bench PACKAGE --remote
board --json` (the remote one copies the package, runs the harness there, reads the JSON back)
--rounds times, and prints each round's p50 latency and the median ratio remote / local. The
wall time of the remote command (copy + ssh + harness) is printed beside the local one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def bench(arguments: list[str], out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edge_sdk.cli", "bench", *arguments, "--json", str(out), "-q"], check=True,
                   capture_output=True, text=True, cwd=out.parent)
    return json.loads(out.read_text()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-runs", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    args = parser.parse_args()
    from sshd import loopback_sshd

    flags = [str(args.package.resolve()), "--min-runs", str(args.min_runs), "--min-seconds", str(args.min_seconds)]
    with tempfile.TemporaryDirectory() as work, loopback_sshd(Path(work)) as board:
        remote = ["--remote", "board", "--ssh-config", str(board["config"]), "--remote-python", sys.executable,
                  "--remote-dir", str(Path(work) / "remote")]
        ratios = []
        for round_ in range(args.rounds):
            local, local_wall = bench(flags, Path(work) / "local.json")
            report, remote_wall = bench(flags + remote, Path(work) / "remote.json")
            here = local["packages"][0]["latency_ms"]["p50"]
            # with --remote the report holds this machine's figures too; the board's are under "remote"
            there = report["remote"]["packages"][0]["latency_ms"]["p50"]
            ratios.append(there / here)
            print(f"round {round_ + 1}: p50 local {here:.2f} ms, remote {there:.2f} ms, ratio {there / here:.3f}; "
                  f"wall: bench {local_wall:.1f} s, bench --remote {remote_wall:.1f} s (both measured, copy and ssh)", flush=True)
        print(f"median remote/local p50 ratio over {args.rounds} rounds: {statistics.median(ratios):.3f} "
              f"(overhead {100 * (statistics.median(ratios) - 1):+.1f}%)")


if __name__ == "__main__":
    main()
