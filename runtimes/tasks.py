"""Task registry: which runtime class serves a package's ``task``."""

from __future__ import annotations

import importlib

from edge_sdk.errors import PackageError

_TASKS: dict[str, type] = {}
# Task modules are imported when a package of that task is loaded, not before.
_TASK_MODULES = {"text-generation": "edge_sdk.runtimes.text_generation"}


def register_task(task: str):
    """Class decorator: the runtime class that loads packages of ``task``."""

    def decorate(cls):
        _TASKS[task] = cls
        return cls

    return decorate


def available_tasks() -> list[str]:
    return sorted(_TASK_MODULES)


def runtime_class(task: str) -> type:
    if task not in _TASK_MODULES:
        raise PackageError(
            f"package task '{task}' is not supported by this edge-sdk (supported: {', '.join(available_tasks())}); "
            "upgrade edge-sdk"
        )
    if task not in _TASKS:
        importlib.import_module(_TASK_MODULES[task])
    return _TASKS[task]
