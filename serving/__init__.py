"""Serving (``edge_sdk.serving``): the OpenAI-compatible server, continuous batching of text
requests, and the student -> teacher cascade. Torch-free, like the runtimes.

The server needs the ``[serve]`` extra (starlette, uvicorn, python-multipart, prometheus_client);
``Cascade`` and the batching engine need only the runtime.
"""

from __future__ import annotations

from edge_sdk.serving.cascade import Cascade, CascadeResult

__all__ = ["Cascade", "CascadeResult"]
