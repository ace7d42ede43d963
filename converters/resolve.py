"""Which source a model argument is: every registered resolver asked in turn, the Hugging Face one last."""

from __future__ import annotations

from pathlib import Path

from edge_sdk.converters.sources import FALLBACK, RESOLVERS, Source
from edge_sdk.errors import ModelLoadError


def resolve_source(model: str) -> Source:
    """The registered resolvers' reading of ``model`` (a path or a hub id).

    Example::

        source = resolve_source("models/whisper-tiny.pt")   # Source(path, spec Whisper, extra {"kind": "openai"})
    """
    import edge_sdk.converters.text_to_image  # noqa: F401  (modules that register resolvers, in the order they are asked)
    import edge_sdk.converters.diffusion  # noqa: F401
    import edge_sdk.converters.gguf  # noqa: F401
    import edge_sdk.converters.whisper_sources  # noqa: F401

    path = Path(str(model)).expanduser()
    for name in sorted(RESOLVERS, key=lambda n: n == FALLBACK):
        found = RESOLVERS[name](str(model), path)
        if found is not None:
            return found
    raise ModelLoadError(f"edge-sdk does not recognise {model} as a model source")
