"""Text tokenization with the ``tokenizers`` library, and incremental decoding for streaming."""

from __future__ import annotations

from pathlib import Path

from edge_sdk.errors import PackageError


class TextTokenizer:
    """A ``tokenizer.json`` loaded with ``tokenizers``: the same ids transformers' fast tokenizer gives.

    Example::

        tok = TextTokenizer.from_file("pkg/tokenizer.json")
        ids = tok.encode("Hello")
        text = tok.decode(ids)
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: Path) -> "TextTokenizer":
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise PackageError(f"cannot read tokenizer {path.name}: {e}; re-export the package") from e

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``, with the special tokens the model expects (e.g. BOS) added unless
        ``add_special_tokens`` is False (a rendered chat template already has them)."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        """The id of one vocabulary entry (e.g. a special token), or None when there is none."""
        return self._tokenizer.token_to_id(token)


class StreamDecoder:
    """Turns a growing list of token ids into text pieces whose concatenation is the full text.

    A token can end in the middle of a UTF-8 character (byte-level BPE) or change how the previous
    token renders; so each step decodes a small window before and after the new token and emits only
    the stable difference, holding back text that ends in an incomplete character.
    """

    def __init__(self, tokenizer: TextTokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the window decoded for context
        self._read_offset = 0  # ids before this have been emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (possibly empty)."""
        self._ids.append(int(token_id))
        before = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._tokenizer.decode(self._ids[self._prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Text still held back at the end (an incomplete character, rendered as the decoder does)."""
        before = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._tokenizer.decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""
