"""The package: a directory with ``manifest.json``, graph files, and what the runtime needs beside them.

Reading and writing live together here so the format has one definition. Nothing in this module
imports torch: converters write packages through it, runtimes read them through it.

Layout of ``manifest.json`` (format version 1)::

    format_version   int, FORMAT_VERSION of the writer; a reader refuses a newer one
    edge_sdk_version the writer's version
    created          UTC timestamp (ISO 8601)
    task             "text-generation", "automatic-speech-recognition", "unconditional-image-generation"
                     (edge_sdk.tasks; older names "speech-recognition", "image-generation" still read)
    source           {"model": path or hub id, "architecture", "model_type", "weights_sha256"}
    runtime          {"name": "onnxruntime", "min_version": "..."}
    precision        {"weights": "fp32", "recipe": {...}}
    graphs           [{"role", "path", "inputs": [...], "outputs": [...], "external_data": [paths]}]
    tokenizer        {"path": "tokenizer.json"}            (text tasks)
    model            task-specific shapes the runtime needs (layers, kv heads, head dim, ...)
    generation       token ids and generation defaults      (text tasks)
    accuracy         measured at export against the FP32 reference
    files            [{"path", "sha256", "size"}] for every file; verified on load
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Iterator

from edge_sdk._version import __version__
from edge_sdk.errors import (
    ChecksumError,
    OutputExistsError,
    PackageError,
    PackageVersionError,
    UnsafePathError,
)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_HASH_CHUNK = 1 << 20  # 1 MiB reads keep hashing a multi-GB graph at constant memory
_REQUIRED_KEYS = ("format_version", "task", "runtime", "graphs", "files")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_join(root: Path, relative: str) -> Path:
    """Resolve ``relative`` inside ``root``; refuse anything that escapes it.

    Absolute paths, ``..`` components and symlinks that lead outside the package are refused, so
    a crafted manifest cannot make a runtime read (or a checksum pass over) an arbitrary file.
    """
    if not isinstance(relative, str) or not relative:
        raise UnsafePathError(f"manifest has an empty or non-string path ({relative!r}); re-export the package")
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise UnsafePathError(
            f"manifest path {relative!r} points outside the package directory; refusing to load it"
        )
    root_resolved = root.resolve()
    resolved = (root_resolved / candidate).resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise UnsafePathError(
            f"manifest path {relative!r} resolves outside the package directory (symlink?); refusing to load it"
        )
    return resolved


@dataclass(frozen=True)
class Package:
    """A package directory whose manifest has been read and whose files have been verified.

    Example::

        pkg = Package.open("out/smollm-int4")
        decoder_path = pkg.graph_path("decoder")
    """

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "Package":
        """Read ``manifest.json`` under ``path``; with ``verify``, check every file's sha256."""
        root = Path(path).expanduser()
        if not root.exists():
            raise PackageError(f"package {root} does not exist; export one with: edge-sdk export MODEL -o {root}")
        if not root.is_dir():
            raise PackageError(f"package {root} is not a directory; a package is the directory edge-sdk export wrote")
        manifest = read_manifest(root)
        pkg = cls(root=root, manifest=manifest)
        if verify:
            pkg.verify()
        return pkg

    @property
    def task(self) -> str:
        """The task's registered name (a manifest written with an older name reads as today's)."""
        from edge_sdk.tasks import canonical_name

        return canonical_name(self.manifest["task"])

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]["name"]

    @property
    def size_bytes(self) -> int:
        return sum(int(entry["size"]) for entry in self.manifest["files"])

    def verify(self) -> None:
        """Check size and sha256 of every file in the manifest; raise ChecksumError naming the first bad one."""
        for entry in self.manifest["files"]:
            path = safe_join(self.root, entry["path"])
            if not path.is_file():
                raise ChecksumError(
                    f"package file {entry['path']} is missing from {self.root}; copy the whole package directory again"
                )
            size = path.stat().st_size
            if size != int(entry["size"]):
                raise ChecksumError(
                    f"package file {entry['path']} is {size} bytes, the manifest says {entry['size']} "
                    f"(truncated or modified); copy the package again or re-export it"
                )
            if sha256_file(path) != entry["sha256"]:
                raise ChecksumError(
                    f"package file {entry['path']} does not match its sha256 in the manifest "
                    f"(tampered with or corrupted); copy the package again or re-export it"
                )

    def path(self, relative: str) -> Path:
        """Absolute path of a file the manifest lists (and therefore checksums)."""
        listed = {entry["path"] for entry in self.manifest["files"]}
        if relative not in listed:
            raise PackageError(
                f"manifest refers to {relative!r}, which is not in its checksummed file list; re-export the package"
            )
        return safe_join(self.root, relative)

    def graph(self, role: str) -> dict[str, Any]:
        """The manifest entry of the graph with this role (``decoder``, ``encoder``, ``unet`` ...)."""
        for graph in self.manifest["graphs"]:
            if graph.get("role") == role:
                return graph
        roles = ", ".join(g.get("role", "?") for g in self.manifest["graphs"]) or "none"
        raise PackageError(f"package {self.root} has no '{role}' graph (it has: {roles}); re-export it")

    def graph_path(self, role: str) -> Path:
        graph = self.graph(role)
        for data_file in graph.get("external_data", []):
            self.path(data_file)  # refuse unlisted / escaping external data files too
        return self.path(graph["path"])


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse and structurally check ``root/manifest.json`` (no checksums)."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PackageError(
            f"{root} has no {MANIFEST_NAME}, so it is not an edge-sdk package; "
            f"export one with: edge-sdk export MODEL -o {root}"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{manifest_path} is not valid JSON ({e}); re-export the package") from e
    if not isinstance(manifest, dict):
        raise PackageError(f"{manifest_path} is not a JSON object; re-export the package")
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if missing:
        raise PackageError(f"{manifest_path} lacks {', '.join(missing)}; re-export the package")
    version = manifest["format_version"]
    if not isinstance(version, int):
        raise PackageError(f"{manifest_path} has a non-integer format_version {version!r}; re-export the package")
    if version > FORMAT_VERSION:
        raise PackageVersionError(
            f"package format version {version} is newer than this edge-sdk ({__version__}) reads "
            f"(up to {FORMAT_VERSION}); upgrade with: pip install -U edge-sdk"
        )
    return manifest


def file_entries(root: Path, exclude: Collection[str] = ()) -> list[dict[str, Any]]:
    """Checksum entries for every file under ``root`` except the manifest (and the top-level
    entries named in ``exclude``), sorted by path."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative == MANIFEST_NAME or relative.split("/")[0] in exclude:
            continue
        entries.append({"path": relative, "sha256": sha256_file(path), "size": path.stat().st_size})
    return entries


def write_manifest(root: Path, manifest: dict[str, Any], exclude: Collection[str] = ()) -> dict[str, Any]:
    """Complete ``manifest`` (version, timestamps, checksums of all files but the top-level entries
    in ``exclude``, e.g. an exporter's work directories) and write it atomically."""
    full = {
        "format_version": FORMAT_VERSION,
        "edge_sdk_version": __version__,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        **manifest,
        "files": file_entries(root, exclude),
    }
    write_atomically(root / MANIFEST_NAME, lambda tmp: tmp.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8"))
    return full


def write_atomically(path: str | os.PathLike, write) -> Path:
    """Call ``write(temporary_path)`` on a file beside ``path``, then rename it to ``path``: readers
    never see a half-written file, and on failure nothing is left behind. The file gets the
    ordinary permissions (0666 minus the umask), not mkstemp's private 0600."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(output: Path, overwrite: bool) -> None:
    """Refuse an output path whose contents we would lose; called before the long work starts."""
    if not output.exists():
        if not output.parent.exists():
            raise OutputExistsError(f"the parent directory of {output} does not exist; create it first")
        return
    if not output.is_dir():
        raise OutputExistsError(f"{output} exists and is a file; choose another output directory")
    if not any(output.iterdir()):
        return
    if not (output / MANIFEST_NAME).is_file():
        raise OutputExistsError(
            f"{output} exists and is not an edge-sdk package; refusing to replace it, choose another output directory"
        )
    if not overwrite:
        raise OutputExistsError(f"{output} already holds a package; pass --overwrite to replace it")


def staging_dir(output: Path) -> Path:
    """A new empty directory beside ``output`` to build it in, with the user's ordinary permissions."""
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes the directory private (0700)
    return staging


def readable_per_umask(directory: Path) -> None:
    """Give every file under ``directory`` the permissions the user's umask asks for (0666 minus
    it; 0644 by default) and every directory 0777 minus it, whatever the writers did: the engines'
    writers make some files private (ONNX Runtime's external-data ``.onnx.data`` is 0600), and a
    package copied to a device with ``cp -a`` / ``rsync -a`` / tar keeps its modes, so another user
    there could not read it."""
    mask = _umask()
    for root, directories, files in os.walk(directory):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def move_into_place(staging: Path, output: Path) -> None:
    """Rename the complete directory ``staging`` to ``output``, replacing what is there; if the last
    rename fails, the previous ``output`` is put back. Modes are made the umask's first
    (``readable_per_umask``)."""
    readable_per_umask(staging)
    if not output.exists():
        os.replace(staging, output)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
    os.replace(output, retired / "previous")
    try:
        os.replace(staging, output)
    except BaseException:
        os.replace(retired / "previous", output)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def staged_output(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside ``output``; move it into place only on success.

    On any exception the staging directory is removed and ``output`` is left as it was, so an
    export that fails never leaves a half-written package (and never destroys the previous one).
    """
    output = Path(output).expanduser().absolute()
    check_output_dir(output, overwrite)
    staging = staging_dir(output)
    try:
        yield staging
        check_output_dir(output, overwrite)  # something may have appeared while we worked
        move_into_place(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
