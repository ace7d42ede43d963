"""Run the PyTorch part of an export in a child process.

torch.export keeps memory it never gives back (libraries' caches, the process heap), so a process
that exported a model is a poor place to quantize it and measure it. The child loads the model,
exports and validates the FP32 graph, writes it to a work directory and exits, returning all of
that memory; the parent, which never imports torch, builds the package from the files.

Protocol: the child runs ``FUNCTION(request, step)`` from ``MODULE`` (``step(description)`` marks
progress, relayed to the parent's progress bar through stdout lines) and writes its JSON-able
result, or the edge-sdk error it raised, to ``result.json`` in the work directory.

    python -m edge_sdk.converters.stage MODULE:FUNCTION REQUEST.json
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from edge_sdk import errors

log = logging.getLogger("edge_sdk")
_STEP_PREFIX = "edge-sdk-step: "
REQUEST_NAME, RESULT_NAME = "request.json", "result.json"


def run_stage(target: str, request: dict[str, Any], work: Path, steps) -> dict[str, Any]:
    """Run ``target`` ("module:function") on ``request`` in a child process; return its result.

    An edge-sdk error raised in the child is raised again here, same class and message.
    """
    work.mkdir(parents=True, exist_ok=True)
    (work / REQUEST_NAME).write_text(json.dumps(request))
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_sdk.converters.stage", target, str(work / REQUEST_NAME)],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
        current = None
        try:
            for line in process.stdout:
                if line.startswith(_STEP_PREFIX):
                    if current is not None:
                        current.__exit__(None, None, None)
                    current = steps.step(line[len(_STEP_PREFIX):].strip())
                    current.__enter__()
            process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            if current is not None and process.returncode == 0:
                current.__exit__(None, None, None)
        stderr.seek(0)
        child_stderr = stderr.read()
    if child_stderr.strip():
        log.debug("export process output:\n%s", child_stderr)
    result_path = work / RESULT_NAME
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if result and "error" in result:
        error_class = getattr(errors, result["error"]["type"], errors.ExportError)
        if not (isinstance(error_class, type) and issubclass(error_class, errors.EdgeSDKError)):
            error_class = errors.ExportError
        raise error_class(result["error"]["message"])
    if process.returncode != 0 or result is None:
        lines = [l for l in child_stderr.strip().splitlines() if l.strip()]
        last = lines[-1] if lines else f"exit code {process.returncode}"
        raise errors.ExportError(f"the export process failed ({last}); run with --debug for its full output")
    return result["result"]


def _main(target: str, request_path: str) -> int:
    work = Path(request_path).parent
    module_name, function_name = target.split(":")
    function: Callable = getattr(importlib.import_module(module_name), function_name)

    def step(description: str) -> None:
        print(_STEP_PREFIX + description, flush=True)

    try:
        result = function(json.loads(Path(request_path).read_text()), step)
    except errors.EdgeSDKError as e:
        (work / RESULT_NAME).write_text(json.dumps({"error": {"type": type(e).__name__, "message": str(e)}}))
        return 2
    (work / RESULT_NAME).write_text(json.dumps({"result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2]))
