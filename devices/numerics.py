"""Which integer kernels a CPU gets: the "numerics" an accuracy figure was measured on.

An INT8 package computes the same products with different instructions on different CPUs (x86 VNNI
or AVX2, ARM with or without the dot-product and i8mm extensions), and ONNX Runtime's and
OpenVINO's int8 paths round differently on each: on a Raspberry Pi 4 (Cortex-A72, no dot product)
greedy tokens of an int8 package part from x86's after a dozen tokens. So the manifest records,
beside each accuracy figure, the CPU's int8 path and the engine it was measured with, and
``inspect`` / ``bench`` warn when a package runs where that path differs.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_flags(info: str | None = None) -> tuple[str, set[str], str]:
    """(architecture, ISA flags, CPU model name) of this machine, from /proc/cpuinfo (or its text ``info``)."""
    if info is None:
        info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags_line = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
    flags = set(flags_line.split(":", 1)[1].split()) if ":" in flags_line else set()
    machine = platform.machine().lower()
    architecture = "aarch64" if machine in ("aarch64", "arm64") else "armv7l" if machine.startswith("arm") else "x86_64"
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith(("model name", "Model"))),
                platform.processor() or machine)
    return architecture, flags, name


def int8_path(architecture: str, flags) -> str:
    """The family of int8 kernels engines pick on a CPU with these ISA flags."""
    flags = set(flags)
    if architecture == "x86_64":
        if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
            return "x86-64 VNNI"
        return "x86-64 AVX2" if "avx2" in flags else "x86-64 SSE"
    if architecture == "aarch64":
        if "i8mm" in flags:
            return "arm64 i8mm"
        return "arm64 dot-product" if "asimddp" in flags else "arm64 NEON (no dot product)"
    return f"{architecture} NEON" if "neon" in flags else architecture


def this_machine(runtime: str | None = None) -> dict:
    """What to record beside an accuracy figure measured here (``runtime``: its engine and version)."""
    architecture, flags, name = cpu_flags()
    record = {"architecture": architecture, "cpu": name, "int8_path": int8_path(architecture, flags)}
    if runtime:
        from edge_sdk.runtimes.backend import BACKENDS

        record["engine"] = f"{runtime} {BACKENDS.get(runtime).engine_version()}"
    return record


def numerics_warning(manifest: dict) -> str | None:
    """A warning when a quantized package runs on a CPU whose int8 path differs from every one its
    accuracy was measured on (at export, or by ``eval --device``: ``accuracy.on_devices``); None
    when one is the same, or nothing was recorded, or it is FP."""
    precision = manifest.get("precision") or {}
    quantized = precision.get("weights") in ("int8", "int4") or precision.get("activations") not in (None, "fp32", "fp16")
    accuracy = manifest.get("accuracy") or {}
    recorded = [accuracy["measured_on"]] if accuracy.get("measured_on") else []
    recorded += [r["measured_on"] for r in (accuracy.get("on_devices") or {}).values() if isinstance(r, dict) and r.get("measured_on")]
    if not quantized or not recorded:
        return None
    here = this_machine()
    if any(r.get("int8_path") == here["int8_path"] for r in recorded):
        return None
    where = "; ".join(f"{r.get('cpu', '?')} ({r.get('int8_path')} int8 kernels{', ' + r['engine'] if r.get('engine') else ''})"
                      for r in recorded)
    return (f"this package's accuracy was measured on {where}; this CPU takes the {here['int8_path']} path, "
            "whose int8 results differ: measure it here with 'edge-sdk eval' (or 'edge-sdk eval --device PROFILE')")
