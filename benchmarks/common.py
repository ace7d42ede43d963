"""What every benchmark shares: the machine it ran on, the harness's measuring functions, and one
way to run a worker in a fresh process (``edge_sdk.worker``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next((l for l in info.splitlines() if l.startswith("flags")), "")
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f" {f}" in flags]
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa, "python": platform.python_version()}


def _by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


try:  # the bench harness's own primitives (VmHWM peak memory, warm-up + min runs/seconds, percentiles)
    from edge_sdk.devices.measure import peak_rss_mb, repeat, summarize
except ImportError:  # a peer's venv (faster-whisper, optimum-intel) without edge-sdk: the same file, by path
    _measure = _by_path("edge_sdk_measure", ROOT / "devices" / "measure.py")
    peak_rss_mb, repeat, summarize = _measure.peak_rss_mb, _measure.repeat, _measure.summarize


class _Paragraphs(HTMLParser):
    """The text of each <p> of an HTML page (prose; code listings, tables and navigation left out)."""

    def __init__(self):
        super().__init__()
        self.paragraphs, self._open = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "p":
            self._open = []

    def handle_endtag(self, tag):
        if tag == "p" and self._open is not None:
            text = " ".join("".join(self._open).split())
            if len(text.split()) >= 8:  # sentences, not labels
                self.paragraphs.append(text)
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open.append(data)


def prose_from_html(paths: list[Path]) -> str:
    """Real English prose from HTML pages (Debian's documentation packages, e.g. debian-reference-en's
    /usr/share/debian-reference/ch*.en.html): their paragraphs, one per line."""
    paragraphs = []
    for path in paths:
        parser = _Paragraphs()
        parser.feed(Path(path).read_text(encoding="utf-8", errors="replace"))
        paragraphs += parser.paragraphs
    return "\n".join(paragraphs) + "\n"


def run_worker(script: str, kind: str, threads: int, fields: dict, python: str | None = None) -> dict:
    """Run worker ``kind`` of ``script`` (its ``WORKERS[kind](args)``) in a fresh process (its own
    engine, its own peak memory), under ``python`` if given, and return its result."""
    try:
        from edge_sdk import worker
    except ImportError:  # not installed in this Python either: the module is stdlib-only at the top
        worker = _by_path("edge_sdk_worker", ROOT / "edge_sdk" / "worker.py")
    request = {"kind": kind, "threads": threads, **{k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items()}}
    try:
        return worker.run(f"{Path(script).resolve()}:worker_entry", request, threads=threads, python=python,
                          what=f"the {kind} worker")
    except Exception as e:
        raise SystemExit(f"{kind} worker failed: {e}") from None


def dispatch(workers: dict, request: dict) -> dict:
    """A script's ``worker_entry``: the worker ``request["kind"]`` on the request as argparse-style args."""
    return workers[request["kind"]](argparse.Namespace(**request))


__all__ = ["prose_from_html", "machine", "peak_rss_mb", "repeat", "summarize", "run_worker", "dispatch"]
