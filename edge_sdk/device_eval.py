"""Accuracy on a device's numerics: ``edge-sdk eval PKG --device PROFILE [--remote USER@HOST]``.

An INT8 package computes with other kernels on another CPU (x86 VNNI, ARM with or without the
dot-product instructions), so the accuracy export measured describes the export host. This measures
it where the device's integer kernels run:

- ``--remote USER@HOST``: on the board itself, over SSH (``devices.remote``);
- an arm64 profile without ``--remote``: here, under qemu-user emulation of the profile's core
  (``devices.emulation``), with this machine's engine versions;
- a profile whose int8 path is this machine's: here, directly.

Text: the token windows and the reference's log-probabilities are computed here (the FP32
reference gives the same figures everywhere, and the device needs no PyTorch); only the package
runs on the device. Speech: the device transcribes ``--data`` and scores WER itself. The figures,
with the numerics they were measured on (CPU, int8 path, engine and version, and how: emulated or
on which host), are recorded in the manifest under ``accuracy.on_devices[profile]``.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edge_sdk.devices.remote import Remote, extras_for, remote_path
from edge_sdk.errors import InvalidInputError
from edge_sdk.package import MANIFEST_NAME, Package, read_manifest, write_atomically


def measure_here(package: str, prepared: str | None = None, data: str | None = None, threads: int | None = None,
                 verify: bool = True) -> dict:
    """The figures of ``package`` measured on this machine, with its numerics: what the device runs
    (``edge-sdk _measure``). ``prepared``: a text evaluation ``prepare_device_eval`` wrote; ``data``:
    a speech directory."""
    import edge_sdk
    from edge_sdk.devices.numerics import this_machine
    from edge_sdk.evaluation import evaluate_prepared, evaluate_speech

    runtime = Package.open(package, verify=False).runtime
    if prepared is not None:
        figures = evaluate_prepared(package, prepared, threads, verify=verify).as_dict()
    elif data is not None:
        figures = evaluate_speech(edge_sdk.load(package, threads=threads, verify=verify), data).as_dict()
    else:
        raise InvalidInputError("measuring needs a prepared text evaluation or a speech --data directory")
    return {"eval": figures, "measured_on": this_machine(runtime)}


def evaluate_on_device(package: str, profile, *, data: str | None = None, reference: str | None = None,
                       windows: int = 16, threads: int | None = None, remote: dict[str, Any] | None = None,
                       save: bool = True, say: Callable[[str], None] = lambda line: None) -> dict:
    """Measure ``package`` with ``profile``'s numerics (see the module); return the record and, with
    ``save``, add it to the manifest. ``remote``: ``target``, ``identity``, ``ssh_config``,
    ``python``, ``setup`` for ``devices.remote.Remote``."""
    from edge_sdk.devices.numerics import int8_path, this_machine
    from edge_sdk.evaluation import prepare_device_eval
    from edge_sdk.tasks import get_task

    opened = Package.open(package)  # checksums verified before anything is measured
    task = get_task(opened.task)
    if task.command not in ("generate", "transcribe"):
        raise InvalidInputError(f"eval --device measures text and speech packages; {package} is {task.name}")
    if task.command == "transcribe":
        if data is None:
            raise InvalidInputError("speech packages need --data DIR: audio files and a transcripts.tsv (file<TAB>text)")
        if not Path(data).is_dir():
            raise InvalidInputError(f"--data {data} is not a directory")
    threads = threads or profile.cpu.threads
    expected = int8_path(profile.cpu.architecture, profile.cpu.isa)  # the profile's int8 kernels
    here = this_machine()
    emulator = None  # where it runs, decided (and refused) before any work
    if remote:
        how = {"remote": remote["target"]}
    elif profile.cpu.architecture == here["architecture"]:
        if expected != here["int8_path"]:
            raise InvalidInputError(f"{profile.name}'s int8 path ({expected}) is not this machine's ({here['int8_path']}) and "
                                    "cannot be emulated here: measure on the device with --remote USER@HOST")
        how = {"local": True}
    else:
        from edge_sdk.devices.emulation import Emulator

        emulator = Emulator.for_profile(profile)
        how = {"emulated": f"qemu-user -cpu {emulator.cpu}"}
    with tempfile.TemporaryDirectory(prefix="edge-sdk-device-eval-") as work:
        prepared, reference_name = None, None
        if task.command == "generate":
            prepared = Path(work) / "prepared"
            prepared.mkdir()
            say("computing the evaluation windows and the reference here")
            reference_name = prepare_device_eval(package, prepared, data, reference, windows, threads, verify=False)
        if remote:
            result = _on_remote(package, prepared, data, threads, remote, say)
        elif emulator is None:
            say(f"measuring here: this CPU takes {profile.name}'s int8 path")
            result = measure_here(package, str(prepared) if prepared else None, data, threads, verify=False)
        else:
            emulator.prepare(extras_for([Path(package)]), say)
            say(f"measuring under emulation of {emulator.cpu} (slow: every instruction is translated)")
            # the files are the ones verified above: no second pass of sha256 under emulation
            arguments = ["-m", "edge_sdk.cli", "_measure", str(Path(package).resolve()), "--threads", str(threads), "--no-verify"]
            arguments += ["--prepared", str(prepared)] if prepared else ["--data", str(Path(data).resolve())]
            result = _json(emulator.run(arguments), f"the emulated {emulator.cpu}")
    record = {
        "profile": profile.name,
        "eval": result["eval"],
        "measured_on": {**result["measured_on"], **how},
        "data": str(data) if data else "bundled text",
        "reference": reference_name,
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    if record["measured_on"].get("int8_path") != expected:  # a board that is not what the profile describes
        say(f"warning: {remote['target'] if remote else 'this machine'} takes the {record['measured_on'].get('int8_path')} "
            f"int8 path, not {profile.name}'s ({expected}): the figures are not recorded under {profile.name}; "
            f"record them under the board's own profile (edge-sdk devices detect --remote ... --save board.toml)")
        save = False
    record["recorded"] = bool(save)
    if save:
        try:
            record_in_manifest(Path(package), record)
        except OSError as e:
            from edge_sdk.errors import EdgeSDKError

            raise EdgeSDKError(f"measured ({json.dumps(record['eval'])}), but {Path(package) / MANIFEST_NAME} could not be "
                               f"written ({e.strerror or e}); rerun with --no-save to print the figures only") from e
    return record


def record_in_manifest(root: Path, record: dict) -> None:
    """Add ``record`` under ``accuracy.on_devices[profile]`` (replacing that profile's last one). The
    manifest is the only file that changes; its file checksums stay as they were."""
    manifest = read_manifest(root)
    manifest.setdefault("accuracy", {}).setdefault("on_devices", {})[record["profile"]] = record
    write_atomically(root / MANIFEST_NAME, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8"))


def _on_remote(package: str, prepared: Path | None, data: str | None, threads: int, remote: dict, say) -> dict:
    board = Remote(remote["target"], remote.get("identity"), remote.get("ssh_config"), remote.get("python"), root=remote.get("root"))
    board.check()
    python = board.interpreter(bool(remote.get("setup")), [Path(package)])
    say(f"copying {Path(package).name} to {remote['target']}")
    [there] = board.copy([Path(package)], f"{board.root}/eval")
    extra = board.copy([prepared if prepared else Path(data)], f"{board.root}/eval-data")[0]
    say(f"measuring on {remote['target']}")
    try:
        output = board.edge_sdk(python, ["_measure", there, "--threads", str(threads), "--prepared" if prepared else "--data",
                                         extra], "edge-sdk eval")
    finally:  # the reference's log-probabilities can be hundreds of MB: leave nothing on the board's card
        board.run(f"rm -rf {remote_path(f'{board.root}/eval-data')}", what="cleaning up")
    return _json(output, remote["target"])


def _json(output: str, where: str) -> dict:
    try:
        result = json.loads(output.strip().splitlines()[-1])
        return {"eval": dict(result["eval"]), "measured_on": dict(result["measured_on"])}
    except (ValueError, KeyError, IndexError, TypeError):
        from edge_sdk.errors import EdgeSDKError

        raise EdgeSDKError(f"{where} answered the measurement with something that is not its figures: "
                           f"{output.strip()[-200:]!r}") from None


__all__ = ["evaluate_on_device", "measure_here", "record_in_manifest"]
