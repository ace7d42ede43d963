"""One error hierarchy for everything a user can get wrong.

Every message says what was wrong and what to do about it; the CLI prints the message as one
line and exits non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations


class EdgeSDKError(Exception):
    """Base class of every error edge-sdk raises on purpose."""


class InvalidInputError(EdgeSDKError, ValueError):
    """An argument or option has a value that cannot work (empty prompt, max_new_tokens < 1, ...)."""


class MissingDependencyError(EdgeSDKError, ImportError):
    """An optional package is needed for this operation; the message names the extra to install."""


class ModelLoadError(EdgeSDKError):
    """The model source could not be found or read (missing path, not a model directory, hub failure)."""


class UnsupportedArchitectureError(EdgeSDKError):
    """The model's architecture has no exporter; the message lists the supported ones."""


class ExportError(EdgeSDKError):
    """Conversion to ONNX failed; nothing was written to the output directory."""


class ValidationError(ExportError):
    """The exported graph does not reproduce the reference model; lists every mismatch found."""


class OutputExistsError(EdgeSDKError):
    """The output path exists and would be overwritten."""


class PackageError(EdgeSDKError):
    """A package cannot be loaded: missing or malformed manifest, unknown task or runtime."""


class ChecksumError(PackageError):
    """A file of the package is missing, truncated or tampered with (its sha256 does not match)."""


class PackageVersionError(PackageError):
    """The package was written by a newer edge-sdk (a format version this one does not read)."""


class UnsafePathError(PackageError):
    """A path in the manifest points outside the package directory."""


def missing_extra(package: str, extra: str, purpose: str) -> MissingDependencyError:
    """Build the error for an optional dependency that is not installed.

    Example::

        try:
            import torch
        except ImportError as e:
            raise missing_extra("torch", "convert", "exporting a model") from e
    """
    return MissingDependencyError(
        f"{purpose} needs the '{package}' package, which is not installed; "
        f"install it with: pip install 'edge-sdk[{extra}]'"
    )


def optional_import(module: str, extra: str, purpose: str):
    """Import ``module`` from an optional extra, or raise the error naming the ``pip install`` to run.

    Example::

        soundfile = optional_import("soundfile", "audio", "reading audio files")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = {"PIL": "pillow"}.get(module.split(".")[0], module.split(".")[0])
        raise missing_extra(package, extra, purpose) from e
