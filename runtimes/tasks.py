"""Task registry: which runtime class serves a package's ``task``."""

from __future__ import annotations

from edge_sdk.runtimes.registry import LazyRegistry

TASKS = LazyRegistry(
    {"text-generation": "edge_sdk.runtimes.text_generation", "speech-recognition": "edge_sdk.runtimes.speech",
     "image-generation": "edge_sdk.runtimes.image_generation"},
    unknown="package task '{name}' is not supported by this edge-sdk (supported: {available}); upgrade edge-sdk",
)
register_task = TASKS.register


def available_tasks() -> list[str]:
    return TASKS.names()


def runtime_class(task: str) -> type:
    return TASKS.get(task)
