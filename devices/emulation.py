"""Run edge-sdk under qemu-user emulation of a device's CPU: its numerics without the board.

An arm64 Python environment is built once per cache, with no system install: Debian bookworm's
arm64 Python 3.11 and the libraries it links, unpacked from deb.debian.org's .debs into a sysroot;
the aarch64 wheels of the runtime's dependencies from PyPI, at the versions installed here (so the
engine is the one the package's x86 figures came from); and this edge-sdk's own code, copied from
where it is installed. The .debs come over https and are checked against the index's SHA256. ``qemu-aarch64-static -L SYSROOT -cpu MODEL`` runs it (Debian's
qemu-user-static). ONNX Runtime reads /proc/cpuinfo at import, and the host's x86 one crashes it;
qemu's -L prefix redirects the read to SYSROOT/proc/cpuinfo, written for the emulated core (the
kernels see its features through HWCAP either way).

Example::

    emulator = Emulator.for_profile(load_profile("raspberry-pi-4"))
    emulator.prepare(["audio"])               # downloads once (~60 MB of .debs, the wheels)
    out = emulator.run(["-m", "edge_sdk.cli", "devices", "detect"])
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from edge_sdk.errors import EdgeSDKError, InvalidInputError

DEBIAN = "https://deb.debian.org/debian/"
DEBS = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1", "zlib1g", "libssl3",
        "libffi8", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8", "libuuid1",
        "libstdc++6", "libgcc-s1", "libgomp1", "libcrypt1", "libdb5.3", "libnsl2", "libtirpc3", "libgssapi-krb5-2",
        "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2", "libkeyutils1"]
# qemu -cpu model -> (CPU part in /proc/cpuinfo, its Features line, a board name)
CORES = {
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid", "Raspberry Pi 4 Model B Rev 1.4"),
    "cortex-a76": ("0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
                   "Raspberry Pi 5 Model B Rev 1.0"),
}
RUNTIME_DISTRIBUTIONS = ["numpy", "onnxruntime", "tokenizers", "jinja2", "markupsafe", "click", "rich", "markdown-it-py",
                         "mdurl", "pygments"]
EXTRA_DISTRIBUTIONS = {"openvino": ["openvino", "openvino-telemetry", "packaging"],
                       "audio": ["soundfile", "cffi", "pycparser", "soxr", "jiwer", "rapidfuzz"]}
# edge_sdk and the subpackages an editable install maps from other folders (a wheel has them inside)
SUBPACKAGES = ["converters", "devices", "distillation", "runtimes", "serving"]
PLATFORMS = [f"manylinux_2_{v}_aarch64" for v in (36, 35, 34, 31, 28, 27, 26, 17)] + ["manylinux2014_aarch64"]


class EmulationError(EdgeSDKError):
    """The emulated environment could not be built or run."""


def cache_root() -> Path:
    """Where emulated environments are kept: ``$EDGE_SDK_CACHE`` or ``~/.cache/edge-sdk``."""
    return Path(os.environ.get("EDGE_SDK_CACHE") or Path.home() / ".cache" / "edge-sdk").expanduser()


class Emulator:
    """An arm64 Python under ``qemu-aarch64 -cpu MODEL`` with this edge-sdk importable."""

    def __init__(self, cpu: str, work: Path | None = None):
        if cpu not in CORES:
            raise InvalidInputError(f"cannot emulate CPU {cpu!r}; known: {', '.join(CORES)}")
        qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
        if qemu is None:
            raise EmulationError("emulating an arm64 device needs qemu-user: apt-get install -y qemu-user-static "
                                 "(or measure on the board with --remote USER@HOST)")
        self.cpu, self.qemu = cpu, qemu
        self.work = Path(work) if work else cache_root() / "arm64"
        self.root = self.work / "sysroot"
        self.site: Path | None = None  # after prepare(): the wheels' folder,
        self.code: Path | None = None  # ... this edge-sdk's code,
        self.view: Path | None = None  # ... and the sysroot as this core sees it

    @classmethod
    def for_profile(cls, profile, work: Path | None = None) -> "Emulator":
        """The emulator of a device profile's CPU (its ``[cpu] model``, e.g. cortex-a72)."""
        if profile.cpu.architecture != "aarch64":
            raise InvalidInputError(f"{profile.name} is a {profile.cpu.architecture} device; only arm64 devices are emulated "
                                    "here: measure on it with --remote USER@HOST")
        if not profile.cpu.model:
            raise InvalidInputError(f"profile {profile.name} names no CPU model to emulate; add model = \"cortex-a72\" (or "
                                    f"{', '.join(c for c in CORES if c != 'cortex-a72')}) under [cpu], or use --remote")
        return cls(profile.cpu.model, work)

    # ------------------------------------------------------------------ building
    def prepare(self, extras: list[str] = (), say=lambda line: None) -> None:
        """Build (or reuse) the sysroot and the wheels' site for ``extras``, and this edge-sdk's code;
        each is built beside its final place and renamed into it, so an interrupted build leaves
        nothing half-made that a later run would trust."""
        try:
            if not (self.root / "usr" / "bin" / "python3.11").exists():
                say("building the arm64 sysroot (Debian's python3.11, once)")
                self._sysroot()
            requirements = pinned_requirements(extras)
            key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
            self.site = self.work / f"site-{key}"
            if not (self.site / ".complete").exists():
                say(f"installing the aarch64 wheels ({len(requirements)} distributions, once)")
                self._wheels(requirements)
            self.code = copy_edge_sdk(self.work)
            self.view = self._core_view()
        except EmulationError:
            raise
        except Exception as e:  # network, a package missing from the index, a bad archive, a full disk
            detail = (getattr(e, "stderr", None) or "").strip().splitlines()[-1:] or [str(e)[:200]]
            raise EmulationError(f"building the emulated arm64 environment in {self.work} failed ({type(e).__name__}: "
                                 f"{detail[0]}); it needs deb.debian.org and PyPI once") from e

    def _core_view(self) -> Path:
        """The sysroot as this core sees it: links to the shared sysroot's folders and a /proc/cpuinfo
        of its own (ONNX Runtime reads it at import), so emulations of two cores can run at once."""
        view = self.work / "cores" / self.cpu
        if not (view / "proc" / "cpuinfo").exists():
            partial = Path(tempfile.mkdtemp(dir=self.work, prefix=f".{self.cpu}-"))
            for entry in self.root.iterdir():
                if entry.name != "proc":
                    (partial / entry.name).symlink_to(entry.resolve())
            (partial / "proc").mkdir()
            part, features, model = CORES[self.cpu]
            (partial / "proc" / "cpuinfo").write_text(cpuinfo(part, features, model))
            view.parent.mkdir(exist_ok=True)
            shutil.rmtree(view, ignore_errors=True)
            os.replace(partial, view)
        return view

    def _sysroot(self) -> None:
        index = lzma.decompress(urllib.request.urlopen(DEBIAN + "dists/bookworm/main/binary-arm64/Packages.xz", timeout=120).read())
        files = {}
        for block in index.decode().split("\n\n"):
            name, path = re.search(r"^Package: (.+)$", block, re.M), re.search(r"^Filename: (.+)$", block, re.M)
            digest = re.search(r"^SHA256: ([0-9a-f]{64})$", block, re.M)
            if name and path and digest:
                files[name.group(1)] = (path.group(1), digest.group(1))
        missing = [package for package in DEBS if package not in files]
        if missing:
            raise EmulationError(f"Debian's arm64 index has no {', '.join(missing)}; this edge-sdk expects bookworm's packages")
        debs = self.work / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=self.work, prefix=".sysroot-"))
        for package in DEBS:
            path, digest = files[package]
            target = debs / Path(path).name
            if not target.exists() or _sha256(target) != digest:  # a download is checked against the index
                handle, name = tempfile.mkstemp(dir=debs, prefix=f".{target.name}.", suffix=".partial")
                os.close(handle)
                download = Path(name)
                urllib.request.urlretrieve(DEBIAN + path, download)
                if _sha256(download) != digest:
                    download.unlink()
                    raise EmulationError(f"{target.name} from {DEBIAN} does not match the index's SHA256; try again")
                os.replace(download, target)
            subprocess.run(["dpkg-deb", "-x", str(target), str(partial)], check=True, capture_output=True, text=True)
        shutil.rmtree(self.root, ignore_errors=True)
        os.replace(partial, self.root)

    def _wheels(self, requirements: list[str]) -> None:
        partial = Path(tempfile.mkdtemp(dir=self.work, prefix=".site-"))
        platforms = [flag for p in PLATFORMS for flag in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-warn-script-location", "--target", str(partial),
                        "--only-binary=:all:", *platforms, "--python-version", "3.11", "--implementation", "cp",
                        *requirements], check=True, capture_output=True, text=True)
        (partial / ".complete").write_text("\n".join(requirements))
        shutil.rmtree(self.site, ignore_errors=True)
        os.replace(partial, self.site)

    # ------------------------------------------------------------------ running
    def command(self) -> list[str]:
        if self.site is None:
            raise EmulationError("prepare() the emulator first")
        return [self.qemu, "-L", str(self.view), "-cpu", self.cpu, str(self.view / "usr" / "bin" / "python3.11")]

    def environment(self) -> dict[str, str]:
        """The host's environment without what would reach into the emulated process wrongly (host
        libraries, Python paths, an OpenVINO device), and the emulated Python's paths."""
        if self.site is None:
            raise EmulationError("prepare() the emulator first")
        dropped = ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME", "EDGE_SDK_OPENVINO_DEVICE")
        return {**{k: v for k, v in os.environ.items() if k not in dropped},
                "PYTHONPATH": f"{self.code}{os.pathsep}{self.site}", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}

    def run(self, arguments: list[str], timeout: float = 7200.0, cwd: Path | None = None) -> str:
        """Run the emulated Python with ``arguments``; its stdout, or an error with its last words."""
        try:
            done = subprocess.run(self.command() + list(arguments), capture_output=True, text=True, env=self.environment(),
                                  timeout=timeout, cwd=str(cwd or self.work))
        except subprocess.TimeoutExpired:
            raise EmulationError(f"the emulated {self.cpu} run took longer than {timeout:.0f} s") from None
        if done.returncode != 0:
            last = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise EmulationError(f"the emulated {self.cpu} run failed: {last[-1] if last else f'exit {done.returncode}'}")
        return done.stdout


def cpuinfo(part: str, features: str, model: str, cores: int = 4) -> str:
    text = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                   f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 3\n\n" for i in range(cores))
    return text + f"Model\t\t: {model}\n"


def pinned_requirements(extras: list[str] = ()) -> list[str]:
    """The runtime's distributions (and ``extras``') at the versions installed here, so the emulated
    engine is this machine's; one not installed here is left to pip's choice."""
    names = RUNTIME_DISTRIBUTIONS + [d for extra in extras for d in EXTRA_DISTRIBUTIONS.get(extra, [])]
    requirements = []
    for name in dict.fromkeys(names):
        try:
            requirements.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            requirements.append(name)
    return requirements


def copy_edge_sdk(work: Path) -> Path:
    """This edge-sdk's Python code (pure Python) as ``work/code-HASH/edge_sdk``, from wherever it is
    installed (a wheel's one folder, or an editable install's mapped folders); returns the folder to
    put on PYTHONPATH. The hash is of the files' names, sizes and times: a copy in use is never
    replaced underneath a running emulation, and an unchanged install is not copied again."""
    import edge_sdk

    top = Path(edge_sdk.__path__[0])
    sources = [(top, Path("edge_sdk"))]
    for name in SUBPACKAGES:
        spec = importlib.util.find_spec(f"edge_sdk.{name}")
        if spec is not None and spec.submodule_search_locations:
            source = Path(list(spec.submodule_search_locations)[0])
            if source.parent != top:  # mapped from elsewhere (editable install)
                sources.append((source, Path("edge_sdk") / name))
    digest = hashlib.sha256()
    for source, _ in sources:
        for file in sorted(source.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                stat = file.stat()
                digest.update(f"{file.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = work / f"code-{digest.hexdigest()[:12]}"
    if not target.exists():
        partial = Path(tempfile.mkdtemp(dir=work, prefix=".code-"))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for source, relative in sources:
            shutil.copytree(source, partial / relative, ignore=ignore, dirs_exist_ok=True)
        os.replace(partial, target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["Emulator", "EmulationError", "CORES", "cache_root", "pinned_requirements", "copy_edge_sdk"]
