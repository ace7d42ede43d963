"""Device profiles: TOML data files describing a target (CPU, memory, NPU, preferred runtime and
precisions, budgets), read with the standard library's ``tomllib``.

The profiles shipped with edge-sdk live beside this module (``edge_sdk/devices/*.toml``); anywhere a
profile name is accepted, a path to a user's own TOML file is accepted too. ``detect()`` builds a
profile of this machine (cores, ISA flags, RAM, a short measured memory bandwidth).

Example::

    from edge_sdk.devices.profiles import load_profile, detect
    pi5 = load_profile("raspberry-pi-5")
    here = detect()
    print(pi5.cpu.cores, here.memory.bandwidth_gbps)
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.quantization import RUNTIMES, WEIGHTS
from edge_sdk.runtimes.backend import usable_cpus
from edge_sdk.tasks import budget_keys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).parent
ARCHITECTURES = ("x86_64", "aarch64", "armv7l")
PRECISIONS = WEIGHTS
BANDWIDTH_SOURCES = ("spec", "measured")


class ProfileError(InvalidInputError):
    """A device profile that is missing, malformed or incomplete (the message names the field)."""


@dataclass(frozen=True)
class CPU:
    architecture: str  # x86_64 | aarch64
    cores: int
    threads: int  # threads the engines should use
    clock_ghz: float
    isa: tuple[str, ...]
    simd_bits: int  # widest vector: 128 (NEON, SSE), 256 (AVX2), 512 (AVX-512)
    model: str = ""  # the core, as qemu names it (cortex-a72): what `eval --device` emulates


@dataclass(frozen=True)
class Memory:
    ram_gb: float
    bandwidth_gbps: float
    bandwidth_source: str  # "spec" or "measured"


@dataclass(frozen=True)
class NPU:
    device: str  # OpenVINO device name
    static_shapes: bool
    weights: tuple[str, ...]  # e.g. "int4-sym", "int8"


@dataclass(frozen=True)
class Budgets:
    max_ram_share: float  # of RAM the package's peak memory may use
    # task budget key (each task's ``budgets`` in edge_sdk.tasks, e.g. "text_decode_tokens_per_s") -> target
    targets: dict[str, float] = field(default_factory=dict, hash=False)

    def target(self, key: str) -> float | None:
        return self.targets.get(key)

    def as_dict(self) -> dict[str, float]:
        """As the profile's ``[budgets]`` table: ``max_ram_share`` and each target by its key."""
        return {"max_ram_share": self.max_ram_share, **self.targets}


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    cpu: CPU
    memory: Memory
    preferred_runtime: str
    precisions: tuple[str, ...]
    budgets: Budgets
    npu: NPU | None = None
    source: str = field(default="", compare=False)  # the file it was read from ("" when built here)

    @property
    def ram_budget_bytes(self) -> float:
        return self.memory.ram_gb * 1e9 * self.budgets.max_ram_share

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("source")
        out["budgets"] = self.budgets.as_dict()
        return out

    def to_toml(self) -> str:
        """The profile as a TOML file ``load_profile`` reads back (users edit it)."""
        lines = [f"name = {_toml(self.name)}", f"description = {_toml(self.description)}", ""]
        sections = [("cpu", asdict(self.cpu)), ("memory", asdict(self.memory))]
        if self.npu is not None:
            sections.append(("npu", asdict(self.npu)))
        sections += [("runtime", {"preferred": self.preferred_runtime, "precisions": self.precisions}),
                     ("budgets", self.budgets.as_dict())]
        for title, values in sections:
            lines.append(f"[{title}]")
            lines += [f"{key} = {_toml(value)}" for key, value in values.items() if value != ""]
            lines.append("")
        return "\n".join(lines)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """A shipped profile by name, or a TOML file by path."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (path.suffix == ".toml" or os.sep in text or path.is_file()):
        path = PROFILE_DIR / f"{text}.toml"
        if not path.is_file():
            raise ProfileError(f"unknown device profile {text!r}; shipped: {', '.join(shipped_profiles())} "
                               "(or pass the path of a .toml profile)")
    if not path.is_file():
        raise ProfileError(f"device profile file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path} is not valid TOML: {e}") from e
    return parse_profile(data, str(path))


def parse_profile(data: dict, source: str = "<profile>") -> DeviceProfile:
    """Validate a profile's TOML data; every error names the field (``cpu.cores``) and the file."""
    reader = _Reader(data, source)
    cpu = CPU(
        architecture=reader.choice("cpu.architecture", ARCHITECTURES),
        cores=reader.number("cpu.cores", int, minimum=1),
        threads=reader.number("cpu.threads", int, minimum=1),
        clock_ghz=reader.number("cpu.clock_ghz", float, minimum=0.1),
        isa=tuple(reader.strings("cpu.isa")),
        simd_bits=reader.choice("cpu.simd_bits", (128, 256, 512)),
        model=reader.string("cpu.model", optional=True) or "",
    )
    memory = Memory(
        ram_gb=reader.number("memory.ram_gb", float, minimum=0.1),
        bandwidth_gbps=reader.number("memory.bandwidth_gbps", float, minimum=0.01),
        bandwidth_source=reader.choice("memory.bandwidth_source", BANDWIDTH_SOURCES),
    )
    npu = None
    if "npu" in data:
        npu = NPU(device=reader.string("npu.device"), static_shapes=reader.boolean("npu.static_shapes"),
                  weights=tuple(reader.strings("npu.weights")))
    precisions = reader.strings("runtime.precisions")
    if not precisions:
        raise ProfileError(f"{source}: runtime.precisions is empty; list the precisions to use, best first (e.g. [\"int8\"])")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ProfileError(f"{source}: runtime.precisions has {precision!r}; valid: {', '.join(PRECISIONS)}")
    known = budget_keys()
    written = data.get("budgets") if isinstance(data.get("budgets"), dict) else {}
    unknown = sorted(set(written) - set(known) - {"max_ram_share"})
    if unknown:
        raise ProfileError(f"{source}: unknown budget(s) {', '.join(unknown)}; valid: max_ram_share, {', '.join(sorted(known))}")
    targets = {key: reader.number(f"budgets.{key}", float, minimum=0.0, optional=True) for key in sorted(known)}
    budgets = Budgets(
        max_ram_share=reader.number("budgets.max_ram_share", float, minimum=0.01, maximum=1.0),
        targets={key: value for key, value in targets.items() if value is not None},
    )
    if cpu.threads > 2 * cpu.cores:
        raise ProfileError(f"{source}: cpu.threads ({cpu.threads}) is more than twice cpu.cores ({cpu.cores})")
    return DeviceProfile(name=reader.string("name"), description=reader.string("description", optional=True) or "",
                         cpu=cpu, memory=memory, preferred_runtime=reader.choice("runtime.preferred", RUNTIMES),
                         precisions=tuple(precisions), budgets=budgets, npu=npu, source=source)


class _Reader:
    def __init__(self, data: dict, source: str):
        self.data, self.source = data, source

    def _get(self, key: str, optional: bool):
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if optional:
                    return None
                raise ProfileError(f"{self.source}: missing field {key}")
            node = node[part]
        return node

    def number(self, key: str, kind, minimum=None, maximum=None, optional: bool = False):
        value = self._get(key, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ProfileError(f"{self.source}: {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ProfileError(f"{self.source}: {key} = {value} is out of range [{minimum}, {maximum if maximum is not None else '...'}]")
        return kind(value)

    def string(self, key: str, optional: bool = False) -> str | None:
        value = self._get(key, optional)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ProfileError(f"{self.source}: {key} must be a non-empty string, got {value!r}")
        return value

    def strings(self, key: str) -> list[str]:
        value = self._get(key, False)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f"{self.source}: {key} must be a list of strings, got {value!r}")
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key, False)
        if not isinstance(value, bool):
            raise ProfileError(f"{self.source}: {key} must be true or false, got {value!r}")
        return value

    def choice(self, key: str, valid: tuple):
        value = self._get(key, False)
        if value not in valid:
            raise ProfileError(f"{self.source}: {key} = {value!r}; valid: {', '.join(map(str, valid))}")
        return value


# ---------------------------------------------------------------- this machine

_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
              "neon", "asimd", "asimddp", "i8mm", "sve")


def detect(bandwidth_seconds: float = 0.5) -> DeviceProfile:
    """A profile of this machine: cores (physical, from /proc/cpuinfo), ISA flags, RAM, clock, and
    a memory bandwidth measured by copying a 256 MB buffer for about ``bandwidth_seconds``."""
    from edge_sdk.devices.numerics import cpu_flags

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    architecture, flags, _ = cpu_flags(info)
    isa = [f for f in _ISA_FLAGS if f in flags]
    machine = platform.machine().lower()
    if architecture == "armv7l" and "neon" in flags:
        isa = ["neon"] + [f for f in isa if f != "neon"]
    if architecture == "aarch64" and "asimd" in flags:
        isa = ["neon"] + [f for f in isa if f != "asimd"]
    simd = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    logical = usable_cpus()
    cores = min(_physical_cores(info) or logical, logical)  # a container's CPU set caps what we may use
    ram_gb = _ram_gb()
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), platform.processor() or machine)
    return DeviceProfile(
        name="this-machine",
        description=f"{name}, {cores} cores / {logical} threads, detected {time.strftime('%Y-%m-%d')}",
        cpu=CPU(architecture=architecture, cores=cores, threads=cores, clock_ghz=round(_clock_ghz(info), 2), isa=tuple(isa),
                simd_bits=simd, model=_ARM_CORES.get(_cpu_part(info), "")),
        memory=Memory(ram_gb=round(ram_gb, 1), bandwidth_gbps=round(measure_bandwidth(bandwidth_seconds), 2),
                      bandwidth_source="measured"),
        preferred_runtime="openvino" if architecture == "x86_64" else "onnxruntime",
        precisions=("int8", "int4", "fp32"),
        budgets=Budgets(max_ram_share=0.5),
    )


def measure_bandwidth(seconds: float = 0.5, megabytes: int = 256) -> float:
    """Sustained copy bandwidth in GB/s (bytes read + written per second), best of the repetitions."""
    source = np.ones(megabytes * 2**20 // 8)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault the pages in
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds or best == 0.0:
        t0 = time.perf_counter()
        np.copyto(target, source)
        best = max(best, 2 * source.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


_ARM_CORES = {"0xd03": "cortex-a53", "0xd05": "cortex-a55", "0xd08": "cortex-a72", "0xd0b": "cortex-a76"}  # CPU part -> core


def _cpu_part(info: str) -> str:
    return next((line.split(":", 1)[1].strip().lower() for line in info.splitlines() if line.startswith("CPU part")), "")


def _physical_cores(info: str) -> int | None:
    pairs = set()
    physical = core = None
    for line in info.splitlines() + [""]:
        if line.startswith("physical id"):
            physical = line.split(":", 1)[1].strip()
        elif line.startswith("core id"):
            core = line.split(":", 1)[1].strip()
        elif not line.strip():
            if core is not None:
                pairs.add((physical, core))
            physical = core = None
    return len(pairs) or None


def _ram_gb() -> float:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        match = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text())
        if match:
            return int(match.group(1)) * 1024 / 1e9
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def _clock_ghz(info: str) -> float:
    maximum = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if maximum.is_file():
        return int(maximum.read_text().strip()) / 1e6
    mhz = [float(l.split(":", 1)[1]) for l in info.splitlines() if l.startswith("cpu MHz")]
    return max(mhz) / 1e3 if mhz else 1.0
