"""Installed size of edge-sdk's runtime extras, on x86-64 and on aarch64 (a Raspberry Pi).

    python benchmarks/install_size.py [--out out/install-size] [--python 3.11]
        [--extras ",audio,openvino,image,serve,audio-formats,all"]

For each platform and each combination: `pip install --target DIR` of the project's wheel with
that extra, binary wheels only for the platform (manylinux up to glibc 2.36, x86_64 / aarch64, CPython
--python), from PyPI; then the bytes under DIR (what site-packages gains; the interpreter itself
not counted). The empty extra is the lean install (`pip install edge-sdk`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# glibc 2.36 (Debian 12, Raspberry Pi OS bookworm) runs wheels tagged for any older manylinux
PLATFORMS = {arch: [f"manylinux_2_{v}_{arch}" for v in (36, 35, 34, 31, 28, 27, 26, 17)] + [f"manylinux2014_{arch}"]
             for arch in ("x86_64", "aarch64")}


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/install-size"))
    parser.add_argument("--python", default="3.11")
    parser.add_argument("--extras", default=",audio,openvino,image,serve,audio-formats,all")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wheels = Path(tempfile.mkdtemp(prefix="edge-sdk-wheel-"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], check=True)
    wheel = next(wheels.glob("edge_sdk-*.whl"))
    results = []
    for arch, platform in PLATFORMS.items():
        for extra in args.extras.split(","):
            target = Path(tempfile.mkdtemp(prefix=f"size-{arch}-"))
            requirement = f"{wheel}[{extra}]" if extra else str(wheel)
            command = [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "--only-binary=:all:",
                       *[flag for tag in platform for flag in ("--platform", tag)], "--python-version", args.python,
                       "--implementation", "cp", requirement]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            row = {"arch": arch, "extra": extra or "(lean)", "ok": done.returncode == 0,
                   "seconds": round(time.perf_counter() - start, 1)}
            if done.returncode == 0:
                row["mb"] = round(tree_bytes(target) / 1e6, 1)
                row["packages"] = sorted(p.name.split("-")[0] for p in target.glob("*.dist-info"))
            else:
                row["error"] = done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "failed"
            results.append(row)
            print(f"{arch:8s} {row['extra']:14s} {row.get('mb', 'FAILED')} MB  {row.get('error', '')}", flush=True)
            subprocess.run(["rm", "-rf", str(target)])
    (args.out / "install-size.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "python": args.python,
                                                            "results": results}, indent=2))


if __name__ == "__main__":
    main()
