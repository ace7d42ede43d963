"""A real OpenSSH server on a free loopback port with generated keys, logged into as this user:
the "board" of the remote tests and of benchmarks/remote_overhead.py."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def _wait_for(process, port: int, log: Path, seconds: float = 20.0) -> None:
    deadline = time.time() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.time() > deadline:
            raise RuntimeError("sshd did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def loopback_sshd(root: Path):
    """Start sshd (its files under ``root``); yield {"config": ssh config of host alias "board",
    "wrong_key": one with a key the server refuses, "wrong_host": one whose known_hosts has another
    host key, "root": root}; stop it on exit."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        raise RuntimeError("openssh-server is not installed: apt-get install -y openssh-server (.ci/run does this)")
    host_key, client_key, other_key = _keygen(root / "host_key"), _keygen(root / "id"), _keygen(root / "other")
    (root / "authorized_keys").write_text((root / "id.pub").read_text())
    port = _free_port()
    (root / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    log = open(root / "sshd.log", "w")
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(process, port, root / "sshd.log")
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        log.close()
        raise
    host_public = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    (root / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} " + " ".join((root / "other.pub").read_text().split()[:2]) + "\n")

    def config(name: str, identity: Path = client_key, known_hosts: str = "known_hosts") -> Path:
        path = root / f"{name}.config"
        path.write_text(f"""Host board
  HostName 127.0.0.1
  Port {port}
  User {getpass.getuser()}
  IdentityFile {identity}
  IdentitiesOnly yes
  UserKnownHostsFile {root / known_hosts}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
""")
        return path

    try:
        yield {"config": config("good"), "wrong_key": config("wrong-key", identity=other_key),
               "wrong_host": config("wrong-host", known_hosts="wrong_known_hosts"), "root": root}
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
