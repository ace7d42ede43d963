"""`bench --remote` and `devices detect --remote` against a real OpenSSH server that the test starts
on a free loopback port with generated keys; the "board" is this machine, logged into as this user."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.cli import main


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from sshd import loopback_sshd

    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as started:  # fails the tests when sshd is missing
        yield started


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


def _json_of(output: str) -> dict:
    return json.loads(output[output.index("{\n"):])


def test_eval_on_a_device_over_ssh_records_its_numerics_in_the_manifest(board, package_of, tiny_package_dir, tmp_path):
    """`eval --device PROFILE --remote`: the windows and the FP32 reference's log-probabilities are
    computed here, the package runs on the board (this machine, profiled by `devices detect`); the
    figures and the numerics they came from land in the manifest, whose file checksums still verify.
    A board whose int8 path is not its profile's gets its figures printed, not recorded."""
    import dataclasses

    from edge_sdk.devices.numerics import numerics_warning, this_machine
    from edge_sdk.devices.profiles import detect
    from edge_sdk.evaluation import evaluate_package
    from edge_sdk.package import Package, read_manifest

    package = Path(shutil.copytree(package_of("LlamaForCausalLM", "onnxruntime", "int8"), tmp_path / "int8"))
    reference = tiny_package_dir("LlamaForCausalLM")
    profile = tmp_path / "board.toml"
    profile.write_text(dataclasses.replace(detect(bandwidth_seconds=0.05), name="board").to_toml())
    flags = ["--reference", str(reference), "--windows", "2", "--json", *_remote_flags(board),
             "--remote-dir", str(board["root"] / "remote")]
    done = CliRunner().invoke(main, ["eval", str(package), "--device", str(profile), *flags])
    assert done.exit_code == 0, done.output
    record = _json_of(done.output)
    here = this_machine("onnxruntime")
    assert record["profile"] == "board" and record["measured_on"]["remote"] == "board" and record["recorded"]
    assert {k: record["measured_on"][k] for k in here} == here
    local, _ = evaluate_package(package, reference=reference, max_windows=2)
    assert record["eval"]["tokens"] == local.tokens and record["eval"]["windows"] == 2
    for key in ("perplexity", "reference_perplexity", "kl_divergence", "top1_agreement"):
        assert record["eval"][key] == pytest.approx(getattr(local, key), rel=1e-6, abs=1e-9), key
    assert (board["root"] / "remote" / "eval" / "int8" / "manifest.json").is_file()  # the package was copied there
    assert not (board["root"] / "remote" / "eval-data").exists()  # the reference's log-probabilities were removed
    manifest = read_manifest(package)
    assert manifest["accuracy"]["on_devices"]["board"] == record
    Package.open(package, verify=True)  # only the manifest changed: every file's checksum still holds
    shown = CliRunner().invoke(main, ["inspect", str(package)])
    assert shown.exit_code == 0 and "on board" in shown.output, shown.output
    # a figure measured on this CPU's int8 path silences the warning an export elsewhere would give
    manifest["accuracy"]["measured_on"]["int8_path"] = "arm64 NEON (no dot product)"
    assert numerics_warning(manifest) is None
    del manifest["accuracy"]["on_devices"]
    assert "arm64 NEON" in numerics_warning(manifest)

    # this machine is not a Raspberry Pi 4: measured and printed, not recorded as the Pi's
    done = CliRunner().invoke(main, ["eval", str(package), "--device", "raspberry-pi-4", *flags])
    assert done.exit_code == 0 and "not recorded under raspberry-pi-4" in done.output, done.output
    assert not _json_of(done.output)["recorded"] and "raspberry-pi-4" not in read_manifest(package)["accuracy"]["on_devices"]


def test_eval_on_a_device_refuses_what_it_cannot_measure_in_one_line(tiny_package_dir, tmp_path, monkeypatch):
    import dataclasses

    from edge_sdk.devices import emulation
    from edge_sdk.devices.profiles import detect

    package = str(tiny_package_dir("LlamaForCausalLM"))
    here = detect(bandwidth_seconds=0.05)
    other_isa = (("sse4_2",) if here.cpu.architecture == "x86_64"
                 else ("neon",) if "asimddp" in here.cpu.isa or "i8mm" in here.cpu.isa else ("neon", "asimddp"))
    other = tmp_path / "other.toml"  # this machine's architecture, another int8 path
    other.write_text(dataclasses.replace(here, name="other", cpu=dataclasses.replace(here.cpu, isa=other_isa)).to_toml())
    monkeypatch.setattr(emulation.shutil, "which", lambda name: None)  # as on a machine without qemu-user
    cases = [
        (["--remote", "pi@localhost"], "goes with --device PROFILE"),
        (["--device", str(other)], "cannot be emulated here: measure on the device with --remote"),
        (["--device", "nowhere"], "unknown device profile 'nowhere'"),
    ]
    if here.cpu.architecture == "x86_64":
        cases.append((["--device", "raspberry-pi-4"], "apt-get install -y qemu-user-static"))
    for arguments, words in cases:
        done = CliRunner().invoke(main, ["eval", package, "--windows", "1", *arguments])
        lines = [line for line in done.output.strip().splitlines() if line.startswith("Error:")]
        assert done.exit_code != 0 and len(lines) == 1 and words in lines[0], (arguments, done.output)
