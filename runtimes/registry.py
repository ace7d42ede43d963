"""A registry of classes by name whose modules are imported on first lookup.

Backends and task runtimes register with a decorator; a package names what it needs in its
manifest, and only that module is imported (loading an ONNX Runtime text package never imports
openvino or the speech code).
"""

from __future__ import annotations

import importlib

from edge_sdk.errors import PackageError


class LazyRegistry:
    """``name -> class``; ``modules`` says which module registers each name.

    ``unknown`` is the error message for a name that is not available; it is formatted with
    ``name`` and ``available`` (comma-separated names).
    """

    def __init__(self, modules: dict[str, str], unknown: str):
        self._modules = dict(modules)
        self._classes: dict[str, type] = {}
        self._unknown = unknown

    def register(self, name: str):
        """Class decorator: make the class available under ``name``."""

        def decorate(cls):
            self._classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._modules)

    def get(self, name: str) -> type:
        if name not in self._modules:
            raise PackageError(self._unknown.format(name=name, available=", ".join(self.names())))
        if name not in self._classes:
            importlib.import_module(self._modules[name])
        return self._classes[name]
