"""Text data: the evaluation text bundled with edge-sdk, and text files or directories of ``.txt`` files read as UTF-8."""

from __future__ import annotations

import os
from pathlib import Path

from edge_sdk.errors import InvalidInputError

# The text evaluation uses by default: real English prose, the GNU GPL version 3 verbatim (its terms
# let anyone copy and distribute verbatim copies; it is data here, not edge-sdk's licence). The
# evaluation reads its first 16 windows of 128 tokens. Pass --eval-data / --data for text of your domain.
BUNDLED_EVAL_TEXT = Path(__file__).with_name("data") / "gpl-3.0.txt"


def read_texts(path: str | os.PathLike) -> list[str]:
    """The text of a file, or of every ``.txt`` file under a directory (sorted by path)."""
    return [text for _, text in read_text_files(path)]


def read_text_files(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """(file, text) of a file, or of every ``.txt`` file under a directory (sorted by path); files
    holding only whitespace are left out, and no text at all is an error."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InvalidInputError(f"text data {path} does not exist; pass a text file or a directory of .txt files")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise InvalidInputError(f"{path} holds no .txt files; pass a text file or a directory of .txt files")
    texts = []
    for file in files:
        try:
            texts.append((file, file.read_text(encoding="utf-8")))
        except UnicodeDecodeError as e:
            raise InvalidInputError(f"{file} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from e
    texts = [(file, text) for file, text in texts if text.strip()]
    if not texts:
        raise InvalidInputError(f"{path} contains no text")
    return texts
