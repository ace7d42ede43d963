"""``edge-sdk devices`` (list, show, detect) and ``edge-sdk bench``: device profiles, and measuring packages against them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_sdk.cli_common import remote_options, warn_numerics
from edge_sdk.package import write_atomically


@click.group()
def devices() -> None:
    """Device profiles: the shipped ones, one in detail, or this machine.

    \b
    Examples:
      edge-sdk devices list
      edge-sdk devices show raspberry-pi-5
      edge-sdk devices detect --save my-laptop.toml
    """


@devices.command("list")
def devices_list() -> None:
    """List the shipped device profiles."""
    from edge_sdk.devices.profiles import load_profile, shipped_profiles

    for name in shipped_profiles():
        profile = load_profile(name)
        npu = f", NPU {profile.npu.device}" if profile.npu else ""
        click.echo(f"{name:22} {profile.cpu.cores} cores {profile.cpu.clock_ghz:g} GHz, {profile.memory.ram_gb:g} GB{npu} — "
                   f"{profile.description}")


@devices.command("show")
@click.argument("profile")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def devices_show(profile: str, as_json: bool) -> None:
    """Show PROFILE (a shipped name or a .toml file) as TOML, or JSON."""
    from edge_sdk.devices.profiles import load_profile

    loaded = load_profile(profile)
    click.echo(json.dumps(loaded.as_dict(), indent=2) if as_json else loaded.to_toml().rstrip())


@devices.command("detect")
@click.option("--save", type=click.Path(dir_okay=False), default=None, help="Write the profile to this TOML file (edit it freely).")
@click.option("--name", default="this-machine", show_default=True, help="Name of the saved profile.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@remote_options("Detect that machine over ssh instead.", setup=False, directory=False)
def devices_detect(save: str | None, name: str, as_json: bool, remote, identity, ssh_config, remote_python) -> None:
    """Detect this machine (or --remote USER@HOST): cores, ISA flags, RAM, clock and a measured
    memory bandwidth (~0.5 s).

    \b
    Examples:
      edge-sdk devices detect --save my-laptop.toml
      edge-sdk devices detect --remote pi@raspberrypi.local --name my-pi5 --save pi.toml
    """
    import dataclasses

    from edge_sdk.devices.profiles import detect
    from edge_sdk.errors import InvalidInputError

    if remote:
        from edge_sdk.devices.remote import Remote

        profile = Remote(remote, identity=identity, ssh_config=ssh_config, python=remote_python).detect(name)
    else:
        profile = dataclasses.replace(detect(), name=name)
    text = profile.to_toml()
    if save:
        target = Path(save).expanduser()
        if not target.parent.is_dir():
            raise InvalidInputError(f"cannot write {target}: directory {target.parent} does not exist")
        write_atomically(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        click.echo(f"wrote {target}", err=True)
    click.echo(json.dumps(profile.as_dict(), indent=2) if as_json else text.rstrip())


@click.command()
@click.argument("packages", nargs=-1, required=True, type=click.Path())
@click.option("--device", default=None, help="Device profile (name or .toml file) to judge against [this machine].")
@click.option("--threads", type=int, default=None, help="Engine threads [the profile's, at most this machine's cores].")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up runs before measuring.")
@click.option("--min-runs", type=int, default=10, show_default=True, help="Measure at least this many runs ...")
@click.option("--min-seconds", type=float, default=5.0, show_default=True, help="... and for at least this long.")
@click.option("--prompt-tokens", type=int, default=32, show_default=True, help="Text: prompt length.")
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Text: tokens generated per run.")
@click.option("--audio", type=click.Path(), default=None, help="Speech: audio file to transcribe [a bundled 7.8 s sentence].")
@click.option("--steps", type=int, default=10, show_default=True, help="Image generation: DDIM steps per run.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click.option("--report", type=click.Path(file_okay=False), default=None, help="Write bench.json, bench.md and bench.png here.")
@remote_options("Also measure on this machine over ssh (copies the packages, runs the harness there).")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def bench(packages, device, threads, warmup, min_runs, min_seconds, prompt_tokens, new_tokens, audio, steps, json_out,
          report, remote, identity, ssh_config, remote_python, remote_setup, remote_dir, quiet) -> None:
    """Measure PACKAGES: load time, latency p50/p90/p99, task figures, peak memory, size; and
    whether each fits a device profile (PASS/FAIL with the reason).

    Each package runs in a fresh process. With --device naming another machine, the figures are
    measured here and also projected to it (labelled "projected"; the model is printed).

    \b
    Examples:
      edge-sdk bench out/smollm-int8 out/smollm-int4
      edge-sdk bench out/whisper-int8 --device raspberry-pi-5 --report reports/pi5
      edge-sdk bench out/digits-static --steps 20 --min-runs 20 --json bench.json
      edge-sdk bench out/smollm-pi5 --device raspberry-pi-5 --remote pi@raspberrypi.local --remote-setup
    """
    from edge_sdk.devices.bench import BenchOptions, bench as run_bench
    from edge_sdk.devices.report import markdown, write_json, write_reports

    options = BenchOptions(threads=threads, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds,
                           prompt_tokens=prompt_tokens, new_tokens=new_tokens, audio=audio, steps=steps)
    from edge_sdk.devices.report import check_report_target
    from edge_sdk.errors import InvalidInputError

    if json_out and not Path(json_out).expanduser().parent.is_dir():
        raise InvalidInputError(f"cannot write {json_out}: its directory does not exist")
    if report:
        check_report_target(Path(report))  # before minutes of measuring, not after
    board = None
    if remote:
        from edge_sdk.devices.remote import Remote

        if audio:
            raise InvalidInputError("--audio is a file here; --remote benches speech with the bundled sentence")
        board = Remote(remote, identity=identity, ssh_config=ssh_config, python=remote_python, root=remote_dir)
        board.check()  # before minutes of measuring here
    for package in packages:
        warn_numerics(package)
    progress = None if quiet else (lambda package: click.echo(f"measuring {package} ...", err=True))
    result = run_bench(list(packages), options, device=device, progress=progress)
    if board is not None:
        from edge_sdk.devices.remote import with_remote

        if not quiet:
            click.echo(f"measuring on {remote} ...", err=True)
        result = with_remote(result, board.bench([Path(p) for p in packages], options, device=device, setup=remote_setup))
    click.echo(markdown(result), nl=False)
    if json_out:
        write_json(result, Path(json_out).expanduser())
    if report:
        for path in write_reports(result, Path(report)):
            click.echo(f"wrote {path}", err=True)
