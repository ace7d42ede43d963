"""What every ``edge-sdk`` command shares: one-line errors, loading a package for a command, warnings, options and progress.

Every failure the user can cause prints one line (``Error: ...``) and exits non-zero; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edge_sdk.errors import EdgeSDKError
from edge_sdk.tasks import get_task

DEBUG_KEY = "edge_sdk.debug"  # ctx.meta: --debug was given (tracebacks instead of one-line errors)


class Group(click.Group):
    """Turns edge-sdk errors (and unexpected ones) into click's one-line error and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except EdgeSDKError as e:
            if ctx.meta.get(DEBUG_KEY):
                raise
            raise click.ClickException(one_line(str(e))) from None
        except Exception as e:
            if ctx.meta.get(DEBUG_KEY):
                raise
            raise click.ClickException(
                one_line(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback and report it)")
            ) from None


def load_for(command: str, package: str, threads: int | None, role: str = ""):
    """Load ``package`` for ``command``; a package of a task another command runs gets a clear error."""
    import edge_sdk
    from edge_sdk.errors import InvalidInputError
    from edge_sdk.package import Package
    from edge_sdk.tasks import tasks

    task = get_task(Package.open(package, verify=False).task)
    if task.command != command:
        wanted = " or ".join(t.name for t in tasks() if t.command == command)
        raise InvalidInputError(f"{role + ' ' if role else ''}{package} is a {task.name} package; {command} needs a {wanted} "
                                f"package (run this one with: edge-sdk {task.command})")
    return edge_sdk.load(package, threads=threads)


def warn_numerics(package) -> None:
    """Warn (stderr) when a quantized package's accuracy was measured on another int8 path than this CPU's."""
    from edge_sdk.devices.numerics import numerics_warning
    from edge_sdk.package import read_manifest

    try:
        warning = numerics_warning(read_manifest(Path(package)))
    except EdgeSDKError:
        return  # the command itself reports a package it cannot read
    if warning:
        click.echo(f"warning: {Path(package).name}: {warning}", err=True)


def remote_options(purpose: str, setup: bool = True, directory: bool = True):
    """--remote USER@HOST[:PORT] and the options that reach it (bench, eval, devices detect)."""
    options = [
        click.option("--remote", default=None, metavar="USER@HOST[:PORT]", help=purpose),
        click.option("--identity", type=click.Path(dir_okay=False), default=None, help="--remote: the ssh private key."),
        click.option("--ssh-config", type=click.Path(dir_okay=False), default=None, help="--remote: an ssh config file (ssh -F)."),
        click.option("--remote-python", default=None,
                     help="--remote: the Python with edge-sdk there [~/.cache/edge-sdk/venv/bin/python]."),
    ]
    if setup:
        options.append(click.option("--remote-setup", is_flag=True,
                                    help="--remote: create that venv and pip install the lean runtime (and extras) from PyPI."))
    if directory:
        options.append(click.option("--remote-dir", default=None, help="--remote: where the packages go there [~/.cache/edge-sdk]."))

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def one_line(message: str) -> str:
    return " ".join(message.split())


class progress_bar:
    """A rich progress bar on stderr; ``advance(done, total)`` moves it."""

    def __init__(self, title: str, unit: str, enabled: bool = True):
        self.title, self.unit = title, unit
        self.enabled = enabled and sys.stderr.isatty()  # a log file gets no bar
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda done, total: None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn(self.title), BarColumn(), TextColumn("{task.fields[label]}"),
                                  TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._progress.__enter__()
        task = self._progress.add_task(self.title, total=None, label="")

        def advance(done, total):
            self._progress.update(task, completed=done, total=total, label=f"{done:.0f}/{total:.0f} {self.unit}")

        return advance

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
