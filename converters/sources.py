"""Finding a model: a local Hugging Face directory, or a hub id downloaded to the local cache."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge_sdk.errors import ModelLoadError
from edge_sdk.package import sha256_file

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# what a text model needs from the hub: configs, weights, tokenizer files
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def resolve_model_dir(model: str) -> Path:
    """A local directory holding the model: ``model`` itself, or its hub snapshot.

    A path that exists must be a directory with ``config.json``. Anything else that looks like a
    hub id (``org/name``) is downloaded with huggingface_hub (or taken from its cache).
    """
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{model} is a file; pass the model directory (the one with config.json)")
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{model} has no config.json, so it is not a Hugging Face model directory; "
                "pass the directory that save_pretrained() wrote"
            )
        return path
    if path.is_absolute() or model.startswith((".", "~")) or not _HUB_ID.match(model):
        raise ModelLoadError(f"model path {model} does not exist; pass a model directory or a Hugging Face hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=model, allow_patterns=_HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated repo: all end the same way for the user
        raise ModelLoadError(
            f"{model} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}); check the id and your network, or pass a local model directory"
        ) from e


def read_config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"cannot read {model_dir / 'config.json'}: {e}") from e


def weights_sha256(model_dir: Path) -> str | None:
    """One sha256 over the model's weight files (name and content hash of each, sorted by name)."""
    if model_dir.is_file():  # a single-file checkpoint (OpenAI whisper .pt)
        return sha256_file(model_dir)
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in model_dir.glob(pattern) if p.is_file()})
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------ recognising a source, and what an exporter returns

@dataclass(frozen=True)
class Source:
    """A model source a resolver recognised: where its files are, its architecture (and task), and
    what else its exporter needs (``extra``: keyword arguments, e.g. the Whisper layout)."""

    path: Path
    spec: Any  # registry.CausalLMSpec or registry.ModelSpec: architecture and task
    extra: dict = field(default_factory=dict)


# (model argument, its path) -> Source, or None when the source is not of the resolver's kind
Resolver = Callable[[str, Path], "Source | None"]
RESOLVERS: dict[str, Resolver] = {}
FALLBACK = "huggingface"  # tried last: a directory with config.json, or a hub id


def resolver(name: str):
    """Register a source resolver under ``name``; the first that recognises a source wins, the
    Hugging Face resolver (which accepts any directory or hub id) last."""

    def decorate(function: Resolver) -> Resolver:
        RESOLVERS[name] = function
        return function

    return decorate


@resolver(FALLBACK)
def _huggingface(model: str, path: Path) -> Source:
    """A Hugging Face model directory (or hub id): the architecture named in config.json."""
    from edge_sdk.converters.registry import lookup

    model_dir = resolve_model_dir(model)
    config = read_config(model_dir)
    return Source(model_dir, lookup(config.get("architectures"), source=model, config=config))


@dataclass
class ExportResult:
    """What a task's exporter hands back to ``export()``, which writes the common manifest sections.

    The exporter leaves its work directory to ``export()``: the validated FP32 graphs
    (``<role>.onnx`` with their data files) are still there unless the package *is* the FP32 ONNX
    Runtime graph; ``export()`` measures the package's accuracy against them, then removes it.
    """

    graphs: list[dict]  # manifest entries of the package's graphs
    min_version: str  # oldest engine that runs them
    recipe: dict | None  # how the weights were quantized (None: FP32/FP16 as exported)
    sections: dict  # task-specific manifest sections: model, tokenizer, generation, features, decoding, scheduler
    validation: dict  # the FP32 graphs against the source framework: reference, max_abs_diff, atol, inputs
    work_dir: Path | None = None  # the exporter's work directory (inside the staging directory)

    def reference_graphs_kept(self) -> bool:
        """The FP32 graph of every role is still in ``work_dir`` (to measure the package against)."""
        return self.work_dir is not None and all((self.work_dir / f"{g['role']}.onnx").is_file() for g in self.graphs)
