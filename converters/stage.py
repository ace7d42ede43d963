"""Run the PyTorch part of an export in a child process (through ``edge_sdk.worker``).

torch.export keeps memory it never gives back (libraries' caches, the process heap), so a process
that exported a model is a poor place to quantize it and measure it. The child loads the model,
exports and validates the FP32 graph, writes it to a work directory and exits, returning all of
that memory; the parent, which never imports torch, builds the package from the files.

The child runs ``FUNCTION(request, step)``; ``step(description)`` moves the parent's progress bar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_sdk import errors, worker


def run_stage(target: str, request: dict[str, Any], work: Path, steps) -> dict[str, Any]:
    """Run ``target`` ("module:function") on ``request`` in a child process; return its result.

    An edge-sdk error raised in the child is raised again here, same class and message; a crash
    becomes an ``ExportError``.
    """
    current = None

    def on_step(description: str) -> None:
        nonlocal current
        if current is not None:
            current.__exit__(None, None, None)
        current = steps.step(description)
        current.__enter__()

    result = worker.run(target, request, work=work, on_step=on_step, failure=errors.ExportError, what="the export process")
    if current is not None:  # a failed step is not shown as done
        current.__exit__(None, None, None)
    return result
