"""Run the PyTorch part of an export in a child process (through ``edge_sdk.worker``).

torch.export keeps memory it never gives back (libraries' caches, the process heap), so a process
that exported a model is a poor place to quantize it and measure it. The child loads the model,
exports and validates the FP32 graph, writes it to a work directory and exits, returning all of
that memory; the parent, which never imports torch, builds the package from the files.

The child runs ``FUNCTION(request, step)``; ``step(description)`` moves the parent's progress bar.

Export cache (opt-in): with ``$EDGE_SDK_EXPORT_CACHE`` set to a directory, a stage's work files and
result are kept there under a key of everything that decides them: the target, the request (less
its work path), the bytes of the source files, the versions of edge-sdk, torch, transformers,
onnx and onnxscript, and the converters' own code. Exporting the same model again (another
runtime, another precision, another device) then copies the validated FP32 graph from the cache
instead of running torch.export again, as a build cache would. Entries are written whole or not
at all (a temporary directory renamed into place); a failed stage is never kept. Two processes
exporting the same model at once (two test workers, two exports at different precisions) take
turns on the entry: the second reuses what the first stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from edge_sdk import errors, worker

log = logging.getLogger("edge_sdk")
CACHE_VARIABLE = "EDGE_SDK_EXPORT_CACHE"
_RESULT, _STEPS = "stage-result.json", "stage-steps.json"
_VERSIONED = ("edge-sdk", "torch", "transformers", "onnx", "onnxscript", "diffusers")


def run_stage(target: str, request: dict[str, Any], work: Path, steps, inputs: Sequence[Path] = ()) -> dict[str, Any]:
    """Run ``target`` ("module:function") on ``request`` in a child process; return its result.

    ``inputs``: the files or directories the stage reads (the source model); with the export cache
    on (``$EDGE_SDK_EXPORT_CACHE``) their bytes are part of the cache key. An edge-sdk error raised
    in the child is raised again here, same class and message; a crash becomes an ``ExportError``.
    """
    current = None
    seen: list[str] = []

    def on_step(description: str) -> None:
        nonlocal current
        if current is not None:
            current.__exit__(None, None, None)
        seen.append(description)
        current = steps.step(description)
        current.__enter__()

    cache = _cache_dir()
    entry = cache / _key(target, request, inputs) if cache is not None and inputs else None
    with _exclusive(entry):  # another process exporting the same model: wait for its entry, then reuse it
        if entry is not None and (entry / _RESULT).is_file():
            result = _restore(entry, work, on_step)
        else:
            result = worker.run(target, request, work=work, on_step=on_step, failure=errors.ExportError,
                                what="the export process")
            if entry is not None:
                _store(entry, work, result, seen)
    if current is not None:  # a failed step is not shown as done
        current.__exit__(None, None, None)
    return result


@contextlib.contextmanager
def _exclusive(entry: Path | None):
    """Hold ``entry``'s lock file (``.locks/<key>`` in the cache, an advisory ``flock``; kept, as
    removing a lock file others may wait on would let two holders in) while the block runs: one
    process at a time computes or reads a cache entry. Without a cache, or where the lock cannot be
    taken (no ``fcntl``, a read-only cache), the block runs unlocked."""
    if entry is None:
        yield
        return
    try:
        import fcntl

        locks = entry.parent / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        handle = open(locks / entry.name, "a")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def export_cache(directory: Path | None = None):
    """The export cache on for the block: ``$EDGE_SDK_EXPORT_CACHE`` if it is set already, else
    ``directory``, else a temporary directory removed afterwards. For a run that exports one model
    several times (``edge-sdk quickstart``: FP32 then INT8), so torch.export runs once."""
    if _cache_dir() is not None:
        yield _cache_dir()
        return
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-sdk-export-cache-")))
        os.environ[CACHE_VARIABLE] = str(directory)
        try:
            yield Path(directory)
        finally:
            os.environ.pop(CACHE_VARIABLE, None)


def _cache_dir() -> Path | None:
    value = os.environ.get(CACHE_VARIABLE, "").strip()
    return Path(value).expanduser() if value else None


def _key(target: str, request: dict[str, Any], inputs: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    paths = [str(path) for path in inputs]  # the source is named by its bytes, not its path
    settings = {k: v for k, v in request.items() if k != "work" and v not in paths}
    digest.update(json.dumps([target, settings], sort_keys=True, default=str).encode())
    for name in _VERSIONED:
        try:
            digest.update(f"{name}={metadata.version(name)}\n".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=absent\n".encode())
    _hash_tree(digest, Path(__file__).resolve().parent, suffix=".py")  # the converters' code decides the graph
    for path in inputs:
        _hash_tree(digest, Path(path))
    return digest.hexdigest()[:32]


def _hash_tree(digest, root: Path, suffix: str = "") -> None:
    """Every file under ``root`` (or ``root`` itself): its relative name and its bytes."""
    if not root.exists():
        digest.update(f"absent:{root.name}\n".encode())
        return
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffix))
    for file in files:
        digest.update(f"{file.relative_to(root) if file != root else file.name}\n".encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)


def _restore(entry: Path, work: Path, on_step) -> dict[str, Any]:
    """Copy a cached stage's files into ``work``; replay its steps (marked as reused)."""
    for description in json.loads((entry / _STEPS).read_text(encoding="utf-8")):
        on_step(f"{description} (cached)")
    work.mkdir(parents=True, exist_ok=True)
    _copy_files(entry, work, leave=(_RESULT, _STEPS))
    log.info("reused the exported FP32 graph from %s", entry)
    return json.loads((entry / _RESULT).read_text(encoding="utf-8"))


def _store(entry: Path, work: Path, result: dict[str, Any], steps: list[str]) -> None:
    """Keep a finished stage's work files and result; a cache that cannot be written only logs."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        _copy_files(work, staging, leave=(worker.REQUEST_NAME, worker.RESULT_NAME))
        (staging / _STEPS).write_text(json.dumps(steps), encoding="utf-8")
        (staging / _RESULT).write_text(json.dumps(result), encoding="utf-8")  # last: an entry without it is unused
        try:
            os.replace(staging, entry)
        except OSError:  # another export of the same model stored it first
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        log.warning("could not keep the export in the cache %s: %s", entry.parent, e)


def _copy_files(source: Path, destination: Path, leave: tuple[str, ...]) -> None:
    """Copy what ``source`` holds (files and directories) into ``destination``, but the names in ``leave``."""
    for file in source.iterdir():
        if file.name not in leave:
            (shutil.copytree if file.is_dir() else shutil.copy2)(file, destination / file.name)
