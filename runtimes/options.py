"""What the three runtimes share about options: frozen dataclasses, overridden by keyword, validated."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from edge_sdk.errors import InvalidInputError

Options = TypeVar("Options")


def with_overrides(options: Options, overrides: dict, kind: str) -> Options:
    """``options`` (a frozen options dataclass) with the ``overrides`` that are not None applied,
    validated again by its ``__post_init__``; an unknown name is refused with the valid ones.

    >>> from edge_sdk.runtimes.text_generation import GenerationOptions
    >>> with_overrides(GenerationOptions(), {"max_new_tokens": 8, "seed": None}, "generation").max_new_tokens
    8
    """
    names = [f.name for f in dataclasses.fields(options)]
    unknown = set(overrides) - set(names)
    if unknown:
        raise InvalidInputError(f"unknown {kind} option(s) {', '.join(sorted(unknown))}; valid: {', '.join(names)}")
    return dataclasses.replace(options, **{k: v for k, v in overrides.items() if v is not None})
