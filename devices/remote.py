"""Running the bench harness on another machine (a Raspberry Pi) over SSH, with the system's OpenSSH.

Why the system's ``ssh`` rather than paramiko or asyncssh: it is what the user already trusts and
configured — ``~/.ssh/config`` host aliases, jump hosts, agents and hardware keys, and above all
``known_hosts``: a host whose key is unknown or changed is refused by the same rules as everywhere
else (we pass ``BatchMode=yes``, so nothing ever prompts). It needs no Python dependency on either
side, and a Raspberry Pi OS image ships both ``sshd`` and ``tar``. Packages travel as one ``tar``
stream over the connection (no rsync needed on the board).

The board runs ``edge-sdk bench`` itself (the lean runtime: ``--remote-setup`` creates a venv in
``~/.cache/edge-sdk/venv`` there and installs it from PyPI, with the extras the packages need), and
the JSON report comes back over the same connection.

Example::

    remote = Remote("pi@raspberrypi.local", identity="~/.ssh/id_ed25519")
    report = remote.bench(["out/smollm-pi5"], BenchOptions(min_runs=5))
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_sdk.errors import EdgeSDKError, InvalidInputError

REMOTE_ROOT = "~/.cache/edge-sdk"  # on the board: copied packages and the venv
VENV = f"{REMOTE_ROOT}/venv"


class RemoteError(EdgeSDKError):
    """The remote machine could not be reached, refused us, or failed a step; one line says which."""


def extras_for(packages: list[Path]) -> list[str]:
    """The extras a board needs to run ``packages`` (from their manifests)."""
    from edge_sdk.package import read_manifest

    extras = set()
    for package in packages:
        manifest = read_manifest(Path(package))
        if manifest["runtime"]["name"] == "openvino":
            extras.add("openvino")
        if manifest["task"] in ("automatic-speech-recognition", "speech-recognition"):
            extras.add("audio")
        if manifest["task"] in ("unconditional-image-generation", "image-generation"):
            extras.add("image")
    return sorted(extras)


class Remote:
    """``USER@HOST[:PORT]`` (or an alias of ``~/.ssh/config`` / ``ssh_config``) reached with OpenSSH."""

    def __init__(self, target: str, identity: str | None = None, ssh_config: str | None = None, python: str | None = None,
                 timeout: float = 1800.0, root: str | None = None):
        if shutil.which("ssh") is None:
            raise RemoteError("--remote needs OpenSSH's ssh client, which is not installed (apt-get install openssh-client)")
        match = re.fullmatch(r"(?:([^@\s]+)@)?([^@:\s]+|\[[0-9a-fA-F:]+\])(?::(\d+))?", target or "")
        if not match:
            raise InvalidInputError(f"--remote takes USER@HOST[:PORT] (or a host alias of your ssh config), got {target!r}")
        user, host, port = match.groups()
        self.target = target
        self.destination = f"{user}@{host.strip('[]')}" if user else host.strip("[]")
        self.port = int(port) if port else None
        self.identity = str(Path(identity).expanduser()) if identity else None
        if self.identity and not Path(self.identity).is_file():
            raise InvalidInputError(f"--identity {identity}: no such key file")
        self.ssh_config = str(Path(ssh_config).expanduser()) if ssh_config else None
        self.python = python
        self.timeout = timeout
        self.root = (root or REMOTE_ROOT).rstrip("/")  # on the board: copied packages (and the venv by default)

    # ------------------------------------------------------------------ ssh
    def _ssh(self) -> list[str]:
        command = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=30"]
        if self.ssh_config:
            command += ["-F", self.ssh_config]
        if self.identity:
            command += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        if self.port:
            command += ["-p", str(self.port)]
        return command + [self.destination]

    def run(self, command: str, what: str = "the remote command") -> str:
        """Run ``command`` (a shell line) on the remote machine; its stdout, or a one-line RemoteError."""
        try:
            done = subprocess.run(self._ssh() + [command], capture_output=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{what} on {self.target} took longer than {self.timeout:.0f} s") from None
        if done.returncode != 0:
            raise RemoteError(self._explain(done.returncode, done.stderr.decode("utf-8", "replace"), what))
        return done.stdout.decode("utf-8", "replace")

    def _explain(self, code: int, stderr: str, what: str) -> str:
        text = " ".join(stderr.split())
        if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
            return (f"{self.target}: host key verification failed (its key is not the one in known_hosts, or not known); "
                    f"check the key, then connect once with 'ssh {self.destination}' to accept it")
        if "Permission denied" in text:
            return f"{self.target} refused the login ({text[text.find('Permission denied'):][:80]}); pass the right --identity KEY"
        if code == 255:
            detail = text[-200:] if text else "no answer"
            return f"cannot reach {self.target} over ssh: {detail}"
        return f"{what} failed on {self.target} (exit {code}): {text[-300:] or 'no message'}"

    # ------------------------------------------------------------------ steps
    def check(self) -> None:
        """Connect once (before any long work): a refused host key or login fails here, in one line."""
        self.run("true", what="connecting")

    def copy(self, packages: list[Path], directory: str) -> list[str]:
        """Copy package directories into ``directory`` on the board (one tar stream); their remote paths."""
        names = [Path(p).resolve().name for p in packages]
        if len(set(names)) != len(names):
            raise InvalidInputError("two packages share a directory name; rename one to bench them remotely")
        import tarfile
        import tempfile

        quoted = remote_path(directory)
        command = f"mkdir -p {quoted} && cd {quoted} && rm -rf {' '.join(shlex.quote(n) for n in names)} && tar -xf -"
        # streamed: a package (or an evaluation's reference, hundreds of MB) is never held in memory;
        # ssh's messages go to a file, so a full stderr pipe cannot stall the stream
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(self._ssh() + [command], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
            try:
                with tarfile.open(fileobj=process.stdin, mode="w|") as tar:
                    for package in packages:
                        tar.add(str(Path(package).resolve()), arcname=Path(package).resolve().name)
                process.stdin.close()
            except BrokenPipeError:
                pass  # ssh ended early: its exit status and messages say why
            try:
                code = process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                raise RemoteError(f"copying the packages to {self.target} took longer than {self.timeout:.0f} s") from None
            if code != 0:
                errors.seek(0)
                raise RemoteError(self._explain(code, errors.read().decode("utf-8", "replace"), "copying the packages"))
        return [f"{directory}/{name}" for name in names]

    def setup(self, extras: list[str]) -> str:
        """Create the venv on the board and install the lean runtime (and ``extras``) from PyPI."""
        requirement = "edge-sdk" + (f"[{','.join(extras)}]" if extras else "")
        self.run(f"python3 -m venv {remote_path(VENV)} && {remote_path(VENV)}/bin/pip install -q --upgrade "
                 f"{shlex.quote(requirement)}", what=f"installing {requirement} in {VENV}")
        return f"{VENV}/bin/python"

    def interpreter(self, setup: bool, packages: list[Path]) -> str:
        if setup:
            return self.setup(extras_for(packages))
        return self.python or f"{VENV}/bin/python"

    def edge_sdk(self, python: str, arguments: list[str], what: str) -> str:
        line = " ".join([remote_path(python), "-m", "edge_sdk.cli", *(remote_path(a) if a.startswith("~/") else shlex.quote(a)
                                                                     for a in arguments)])
        try:
            return self.run(line, what=what)
        except RemoteError as e:
            if "No module named" in str(e) or "not found" in str(e):
                raise RemoteError(f"{e}; install the runtime there with --remote-setup (or give --remote-python)") from None
            if "No such command" in str(e):
                raise RemoteError(f"the edge-sdk on {self.target} is older than this one ({e}); upgrade it there "
                                  "(pip install -U edge-sdk, or --remote-setup)") from None
            raise

    def bench(self, packages: list[Path], options, device: str | None = None, setup: bool = False) -> dict[str, Any]:
        """Copy ``packages``, run ``edge-sdk bench`` on the board, return its JSON report labelled as measured there."""
        python = self.interpreter(setup, packages)
        remote_packages = self.copy(packages, f"{self.root}/bench")
        result = f"{self.root}/bench/result.json"
        arguments = ["bench", *remote_packages, "--json", result, "-q", *_bench_flags(options)]
        if device and not (device.endswith(".toml") or "/" in device):  # a shipped profile (a local file is not there)
            arguments += ["--device", device]
        self.edge_sdk(python, arguments, "edge-sdk bench")
        report = json.loads(self.run(f"cat {remote_path(result)}", what="reading the bench report"))
        report["measured_on"] = {"remote": self.target, "host": report["host"].get("description")}
        for row, local in zip(report["packages"], packages):
            row["package"] = str(local)  # the package as the user named it here
            row["measured_on"] = self.target
        return report

    def detect(self, name: str, setup: bool = False):
        """The board's ``DeviceProfile`` (``edge-sdk devices detect`` run there, its TOML read back here)."""
        import sys

        from edge_sdk.devices.profiles import parse_profile

        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        python = self.interpreter(setup, [])
        text = self.edge_sdk(python, ["devices", "detect", "--name", name], "edge-sdk devices detect")
        try:
            return parse_profile(tomllib.loads(text), source=f"{self.target} (devices detect)")
        except tomllib.TOMLDecodeError as e:
            raise RemoteError(f"{self.target} answered devices detect with something that is not a profile ({e})") from None


def remote_path(path: str) -> str:
    """A path for the remote shell: ``~/`` stays expandable, the rest is quoted."""
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def _bench_flags(options) -> list[str]:
    values = asdict(options)
    flags = []
    for name in ("threads", "warmup", "min_runs", "min_seconds", "prompt_tokens", "new_tokens", "steps"):
        if values.get(name) is not None:
            flags += [f"--{name.replace('_', '-')}", str(values[name])]
    return flags


def with_remote(report: dict[str, Any], remote: dict[str, Any]) -> dict[str, Any]:
    """The local report with the remote measurements beside it, and, where the local report projects
    to a profile, the projection's error against what the board measured (same package, p50)."""
    merged = dict(report)
    merged["remote"] = remote
    errors = []
    for local, measured in zip(report["packages"], remote["packages"]):
        if local.get("projection"):
            projected = local["projection"]["latency_ms"]["p50"]
            actual = measured["latency_ms"]["p50"]
            errors.append({"package": local["package"], "projected_p50_ms": projected, "measured_p50_ms": actual,
                           "error": (projected - actual) / actual if actual else None})
    if errors:
        merged["projection_error"] = errors
    return merged
