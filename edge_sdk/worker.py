"""One way to run work in a fresh process: export stages, ``bench`` workers, benchmark workers.

Why a fresh process: torch.export keeps memory it never gives back, and a measurement's load time
and peak RSS must be its own. The parent calls ``run("module:function", request)``; the child
imports the target, calls ``function(request, step)`` and writes its JSON-able result, or the
edge-sdk error it raised (class and message), to a result file. ``step(description)`` lines on
the child's stdout reach the parent's ``on_step`` (a progress bar). The parent raises the child's
error again with the same class; a crash becomes ``failure`` with the child's last stderr line.

A target is ``"package.module:function"`` or ``"path/to/script.py:function"``. This module imports
only the standard library at the top, so a peer's Python that lacks edge-sdk (a faster-whisper
venv in a benchmark) can run it as a script: ``python .../edge_sdk/worker.py TARGET REQUEST``.

Example::

    from edge_sdk.worker import run
    result = run("edge_sdk.converters.whisper_torch:export_fp32", {"source": "..."}, on_step=print)
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("edge_sdk")
STEP_PREFIX = "edge-sdk-step: "
REQUEST_NAME, RESULT_NAME = "request.json", "result.json"


def run(target: str, request: dict[str, Any], *, work: Path | None = None, threads: int | None = None,
        python: str | None = None, on_step: Callable[[str], None] | None = None, imports: list[str] | tuple = (),
        failure: type | None = None, what: str = "the worker process") -> Any:
    """Run ``target`` on ``request`` in a fresh Python; return its result.

    ``work``: directory for the request and result files (a temporary one if None); ``threads``
    sets OMP_NUM_THREADS in the child; ``python``: another interpreter; ``imports``: modules the
    child imports first (e.g. ones that register tasks); ``failure``: the error class for a
    child that died without reporting one (default ``EdgeSDKError``).
    """
    if work is None:
        with tempfile.TemporaryDirectory(prefix="edge-sdk-worker-") as tmp:
            return run(target, request, work=Path(tmp), threads=threads, python=python, on_step=on_step,
                       imports=imports, failure=failure, what=what)
    work.mkdir(parents=True, exist_ok=True)
    result_path = work / RESULT_NAME
    result_path.unlink(missing_ok=True)
    (work / REQUEST_NAME).write_text(json.dumps({"imports": list(imports), "request": request}))
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen([python or sys.executable, __file__, target, str(work / REQUEST_NAME)],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        try:
            for line in process.stdout:
                if line.startswith(STEP_PREFIX) and on_step is not None:
                    on_step(line[len(STEP_PREFIX):].strip())
            process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        stderr.seek(0)
        child_stderr = stderr.read()
    if child_stderr.strip():
        log.debug("%s output:\n%s", what, child_stderr)
    outcome = json.loads(result_path.read_text()) if result_path.is_file() else None
    from edge_sdk import errors

    if outcome and "error" in outcome:
        cls = getattr(errors, outcome["error"]["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, errors.EdgeSDKError)):
            cls = failure or errors.EdgeSDKError
        raise cls(outcome["error"]["message"])
    if process.returncode != 0 or outcome is None:
        lines = [line for line in child_stderr.strip().splitlines() if line.strip()]
        last = lines[-1][:300] if lines else f"exit code {process.returncode}"
        raise (failure or errors.EdgeSDKError)(f"{what} failed ({last}); run with --debug for its full output")
    return outcome["result"]


def _load(target: str) -> Callable:
    location, _, name = target.rpartition(":")
    if location.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(location).stem, location)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(Path(location).resolve().parent))  # a script's sibling modules (benchmarks/common.py)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    return getattr(module, name)


def _main(target: str, request_path: str) -> int:
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(here)]  # run as a script: edge_sdk/ is no root
    work = Path(request_path).parent
    envelope = json.loads(Path(request_path).read_text())
    for module in envelope["imports"]:
        importlib.import_module(module)
    function = _load(target)

    def step(description: str) -> None:
        print(STEP_PREFIX + description, flush=True)

    try:
        result = function(envelope["request"], step)
    except Exception as e:
        if not any(cls.__name__ == "EdgeSDKError" for cls in type(e).__mro__):
            raise  # a bug: the traceback goes to stderr and the parent reports its last line
        (work / RESULT_NAME).write_text(json.dumps({"error": {"type": type(e).__name__, "message": " ".join(str(e).split())}}))
        return 2
    (work / RESULT_NAME).write_text(json.dumps({"result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2]))
