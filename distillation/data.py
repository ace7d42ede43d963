"""Training text for distillation: tokenized once, cut into fixed windows, drawn in a seeded order
that depends only on (seed, step) (a resumed or multi-process run sees the same batches), plus the
teacher's top-k cache over those windows.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdk.errors import InvalidInputError
from edge_sdk.texts import read_text_files

log = logging.getLogger("edge_sdk")


@dataclass
class TextWindows:
    """Training windows (n, L) and held-out windows (m, L) of token ids, and where they came from."""

    train: np.ndarray
    heldout: np.ndarray
    sources: list[dict]  # {"path", "sha256", "characters"} per file read

    def rows(self, step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
        """Indices of the training windows in step ``step``'s global batch that process ``rank`` of ``world`` trains on."""
        return batch_rows(len(self.train), step, batch_size, seed, rank, world)

    def windows_used(self, steps: int, batch_size: int, seed: int) -> np.ndarray:
        """Indices of every training window the run draws (what the teacher cache must cover)."""
        used = {i for step in range(steps) for i in self.rows(step, batch_size, seed)}
        return np.array(sorted(used), dtype=np.int64)


class Items:
    """``count`` training items (utterances, images) drawn as text windows are: see ``batch_rows``."""

    def __init__(self, count: int):
        self.count = count

    def rows(self, step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
        return batch_rows(self.count, step, batch_size, seed, rank, world)


def batch_rows(count: int, step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Of ``count`` training items, the ones in step ``step``'s global batch that process ``rank`` of
    ``world`` trains on: epochs of seeded permutations, a function of (seed, step) only."""
    rows = [int(_order(seed, i // count, count)[i % count]) for i in range(step * batch_size, (step + 1) * batch_size)]
    share = batch_size // world
    return rows[rank * share:(rank + 1) * share]


@functools.lru_cache(maxsize=4)
def _order(seed: int, epoch: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


def _tokens(path: Path, tokenizer) -> tuple[np.ndarray, list[dict]]:
    from edge_sdk.package import sha256_file

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    sources = []
    for file, text in read_text_files(path):  # the errors for missing, empty and non-UTF-8 data
        ids += tokenizer(text)["input_ids"] + ([eos] if eos is not None else [])
        sources.append({"path": str(file.absolute()), "sha256": sha256_file(file), "characters": len(text)})
    return np.asarray(ids, dtype=np.int64), sources


def load_windows(data: Path, tokenizer, length: int, heldout_fraction: float, eval_data: Path | None,
                 eval_windows: int) -> TextWindows:
    """Tokenize ``data`` into windows of ``length`` tokens; hold back its tail (or use ``eval_data``)."""
    tokens, sources = _tokens(Path(data).expanduser(), tokenizer)
    if eval_data is not None:
        heldout_tokens, eval_sources = _tokens(Path(eval_data).expanduser(), tokenizer)
        sources += [{**s, "heldout": True} for s in eval_sources]
    else:
        cut = int(len(tokens) * (1 - heldout_fraction)) // length * length
        tokens, heldout_tokens = tokens[:cut], tokens[cut:]
    count = len(tokens) // length
    if count < 1:
        raise InvalidInputError(
            f"{data} gives {len(tokens)} training tokens, fewer than one sequence of {length}; give more text or "
            "lower --sequence-length")
    heldout_count = min(eval_windows, len(heldout_tokens) // length)
    if heldout_count < 1:
        raise InvalidInputError(
            f"the held-back text has {len(heldout_tokens)} tokens, fewer than one sequence of {length}; give more "
            "text, raise --heldout-fraction, or pass --eval-data")
    return TextWindows(train=tokens[:count * length].reshape(count, length),
                       heldout=heldout_tokens[:heldout_count * length].reshape(heldout_count, length), sources=sources)


class TeacherCache:
    """The teacher's top-k next-token log-probabilities at the run's temperature (float16) and ids (int32) for training
    windows, in two .npy memmaps under a directory, computed once and reused while the teacher,
    the data and k are the same (``meta.json`` records them)."""

    def __init__(self, directory: Path, key: dict, shape: tuple[int, int, int]):
        self.directory = Path(directory).expanduser()
        self.key, self.shape = key, shape

    @property
    def ready(self) -> bool:
        try:
            return json.loads((self.directory / "meta.json").read_text()) == {**self.key, "complete": True}
        except (OSError, ValueError):  # none yet, or unreadable: build it again
            return False

    def build(self, teacher_log_probs, windows: np.ndarray, needed: np.ndarray, batch: int, on_batch=None) -> None:
        """Fill the cache for the windows ``needed`` with ``teacher_log_probs(ids) -> (values, ids)``."""
        from edge_sdk.package import write_atomically

        if self.directory.exists() and not self.directory.is_dir():
            raise InvalidInputError(f"--teacher-cache {self.directory} is a file; pass a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "meta.json").unlink(missing_ok=True)
        values = np.lib.format.open_memmap(self.directory / "values.npy", mode="w+", dtype=np.float16, shape=self.shape)
        ids = np.lib.format.open_memmap(self.directory / "ids.npy", mode="w+", dtype=np.int32, shape=self.shape)
        for start in range(0, len(needed), batch):
            chosen = needed[start:start + batch]
            top_values, top_ids = teacher_log_probs(windows[chosen])
            values[chosen], ids[chosen] = top_values, top_ids
            if on_batch:
                on_batch(min(start + batch, len(needed)), len(needed))
        values.flush()
        ids.flush()
        del values, ids
        meta = json.dumps({**self.key, "complete": True})
        write_atomically(self.directory / "meta.json", lambda tmp: tmp.write_text(meta))

    def open(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.load(self.directory / "values.npy", mmap_mode="r"), np.load(self.directory / "ids.npy", mmap_mode="r"))
