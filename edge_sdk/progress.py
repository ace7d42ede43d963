"""Progress over the named steps of a long operation (export), shown with rich on stderr."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("edge_sdk")


def _peak_rss() -> str:
    try:
        import resource
    except ImportError:  # not on Windows
        return "unknown"
    # this process or an export child process, whichever peaked higher (Linux reports KiB)
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return f"{peak * 1024 / 1e6:.0f} MB"


class Steps:
    """A progress bar whose units are named steps, with the elapsed time of the whole operation.

    Example::

        with Steps(total=3, enabled=True) as steps:
            with steps.step("Loading model"):
                ...
    """

    def __init__(self, total: int, enabled: bool = True, title: str = "Exporting"):
        self._enabled = enabled
        self._title = title
        self._total = total
        self._progress = None
        self._task = None

    def __enter__(self) -> "Steps":
        if self._enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task(self._title, total=self._total)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def expect(self, steps: int) -> None:
        """Announce ``steps`` more steps (an exporter knows how many it runs)."""
        self._total += steps
        if self._progress is not None:
            self._progress.update(self._task, total=self._total)

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self._title}: {description}")
        start = time.perf_counter()
        yield
        log.info("%s: %.1f s, peak RSS so far %s", description, time.perf_counter() - start, _peak_rss())
        if self._progress is not None:
            self._progress.advance(self._task)
