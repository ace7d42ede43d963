"""Torch-free runtimes (``edge_sdk.runtimes``): engine sessions and the loops that drive them.

Layering rule: nothing here imports torch, transformers, diffusers or nncf, at import or lazily.
"""

from __future__ import annotations

import os

from edge_sdk.package import Package
from edge_sdk.runtimes.backend import usable_cpus
from edge_sdk.tasks import available_tasks, get_task


def load(path: str | os.PathLike, threads: int | None = None, verify: bool = True):
    """Open a package and return the runtime object for its task (e.g. a ``TextGenerator``).

    ``threads`` sets the engine's intra-op threads (None: the device profile's count if the package
    was exported for one, else one per physical core). ``verify`` checks every file's sha256
    against the manifest first.

    Example::

        lm = load("out/smollm", threads=2)
        print(lm.generate("Hello", max_new_tokens=8).text)
    """
    package = Package.open(path, verify=verify)
    task = get_task(package.task)
    device = package.manifest.get("device") or {}
    if threads is None and device.get("threads"):
        # the profile's count, but never more than this machine can run at once
        threads = min(int(device["threads"]), usable_cpus())
    return task.runtime_class()(package, threads=threads)


__all__ = ["load", "available_tasks"]
