"""Read a CTranslate2 ``model.bin`` into numpy arrays (no ctranslate2 needed).

Layout (little-endian, unpadded; CTranslate2's ``ModelSpec._serialize`` writes it):

    u32 binary_version                       # 1..6
    string spec_name ; u32 spec_revision     # version >= 2
    u32 count, then per variable:
        string name ; u8 rank ; u32 dims[rank]
        u8 dtype_id ; u32 num_bytes           # version >= 4 (older: u8 item_size ; u32 num_elements)
        bytes data                            # row-major
    u32 count, then per alias: string alias ; string target     # version >= 3
    string := u16 length including the trailing NUL ; bytes

int8 weights come with a float32 ``<name>_scale`` per output row (``w = q / scale``); int16 with
one scale per tensor. Aliased tensors (the tied output projection) share their target's scale.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdk.errors import ModelLoadError

MAX_BINARY_VERSION = 6
# CTranslate2's DataType order
_DTYPES = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "<u2"}  # 5 is bfloat16, read raw
_LEGACY_ITEM_SIZE = {4: 0, 2: 2, 1: 1}  # version < 4: item size -> dtype id


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # raw, as stored (bfloat16 already widened to float32)
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        """A variable as float32, dequantized when it is stored as int8/int16 with a scale."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            raise ModelLoadError(f"the CTranslate2 model has no variable {name}; is it a complete Whisper model?")
        value = self.variables[target]
        if value.dtype in (np.int8, np.int16) and f"{target}_scale" in self.variables:
            scale = self.variables[f"{target}_scale"].astype(np.float32)
            rows = value.reshape(value.shape[0], -1).astype(np.float32)
            rows = rows / (scale[:, None] if scale.ndim == 1 else scale)
            return rows.reshape(value.shape)
        return value.astype(np.float32)

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str, default=None):
        return self.variables[name].item() if name in self.variables else default


class _Cursor:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = memoryview(data), 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ModelLoadError(f"{self.path} is truncated (needed {n} bytes at offset {self.pos}); re-download or re-convert it")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.u16()))
        try:
            return raw.split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelLoadError(f"{self.path} is not a CTranslate2 model (bad name at offset {self.pos})") from e


def read_ct2(path: Path) -> CT2Model:
    """Parse ``path`` (a CTranslate2 model.bin); errors name the file and what is wrong."""
    data = Path(path).read_bytes()
    cursor = _Cursor(data, Path(path))
    version = cursor.u32()
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise ModelLoadError(
            f"{path} has CTranslate2 binary version {version}; edge-sdk reads versions 1 to {MAX_BINARY_VERSION}"
        )
    spec, revision = ("", 1) if version < 2 else (cursor.string(), cursor.u32())
    variables: dict[str, np.ndarray] = {}
    for _ in range(cursor.u32()):
        name = cursor.string()
        rank = cursor.u8()
        shape = struct.unpack(f"<{rank}I", cursor.take(4 * rank)) if rank else ()
        if version >= 4:
            type_id, num_bytes = cursor.u8(), cursor.u32()
        else:
            item_size = cursor.u8()
            type_id, num_bytes = _LEGACY_ITEM_SIZE.get(item_size, -1), cursor.u32() * item_size
        if type_id not in _DTYPES:
            raise ModelLoadError(f"{path}: variable {name} has an unknown data type id {type_id}")
        array = np.frombuffer(cursor.take(num_bytes), dtype=_DTYPES[type_id])
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise ModelLoadError(f"{path}: variable {name} holds {array.size} values for shape {list(shape)}")
        array = array.reshape(shape)
        if type_id == 5:  # bfloat16 -> float32: the 16 stored bits are the float32's high half
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(cursor.u32()):
            alias = cursor.string()
            aliases[alias] = cursor.string()
    for alias, target in list(aliases.items()):  # CTranslate2's loader shares the scale too
        if f"{target}_scale" in variables:
            aliases.setdefault(f"{alias}_scale", f"{target}_scale")
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)
