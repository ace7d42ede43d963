"""Finding a model: a local Hugging Face directory, or a hub id downloaded to the local cache."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

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
