"""`bench --remote` and `devices detect --remote` against a real OpenSSH server that the test starts
on a free loopback port with generated keys; the "board" is this machine, logged into as this user."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        pytest.fail("openssh-server is not installed: apt-get install -y openssh-server (.ci/run does this)")
    root = tmp_path_factory.mktemp("sshd")
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
    deadline = time.time() + 20
    while True:
        assert process.poll() is None, (root / "sshd.log").read_text()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.time() < deadline, "sshd did not start"
        time.sleep(0.05)
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


def _remote_flags(board, config: Path | None = None) -> list[str]:
    return ["--remote", "board", "--ssh-config", str(config or board["config"]), "--remote-python", sys.executable]


def test_remote_bench_is_labelled_measured_there_beside_local_and_projected(board, tiny_package_dir, tmp_path):
    package = tiny_package_dir("LlamaForCausalLM")
    out = tmp_path / "bench.json"
    done = CliRunner().invoke(main, ["bench", str(package), "--device", "raspberry-pi-5", "--min-runs", "2", "--min-seconds", "0",
                                     "--new-tokens", "2", "--json", str(out), "-q", *_remote_flags(board),
                                     "--remote-dir", str(board["root"] / "remote")])
    assert done.exit_code == 0, done.output
    report = json.loads(out.read_text())
    assert report["device"]["projected"] and report["packages"][0]["projection"]  # local, and projected to the Pi
    remote = report["remote"]
    assert remote["measured_on"]["remote"] == "board" and remote["packages"][0]["measured_on"] == "board"
    assert remote["packages"][0]["runs"] >= 2 and remote["packages"][0]["latency_ms"]["p50"] > 0
    assert (board["root"] / "remote" / "bench" / package.name / "manifest.json").is_file()  # copied there
    error = report["projection_error"][0]
    assert error["measured_p50_ms"] == remote["packages"][0]["latency_ms"]["p50"] and error["error"] is not None
    assert "Measured on **board**" in done.output and "(measured on board)" in done.output and "projection error" in done.output


def test_devices_detect_remote_round_trips_to_a_profile(board, tmp_path):
    from edge_sdk.devices.profiles import detect, load_profile

    saved = tmp_path / "board.toml"
    done = CliRunner().invoke(main, ["devices", "detect", "--name", "my-board", "--save", str(saved), *_remote_flags(board)])
    assert done.exit_code == 0, done.output
    profile = load_profile(saved)
    here = detect(bandwidth_seconds=0.1)
    assert profile.name == "my-board" and profile.cpu.cores == here.cpu.cores and profile.cpu.isa == here.cpu.isa


@pytest.mark.parametrize("case, words", [("wrong_host", "host key verification failed"), ("wrong_key", "refused the login")])
def test_a_refused_host_key_or_a_wrong_key_is_one_line(board, tiny_package_dir, case, words):
    done = CliRunner().invoke(main, ["bench", str(tiny_package_dir("LlamaForCausalLM")), "--min-runs", "1", "--min-seconds", "0",
                                     "--new-tokens", "2", "-q", *_remote_flags(board, board[case])])
    assert done.exit_code != 0
    lines = [line for line in done.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and words in lines[0], done.output
