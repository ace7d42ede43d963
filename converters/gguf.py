"""GGUF (llama.cpp's format) as a model source: recognised and checked with the gguf package, loaded through transformers' GGUF reader, its quantized blocks carried into packages where the engine can hold them.

A source is a ``.gguf`` file, a directory holding one, or a split set (``NAME-00001-of-0000N.gguf``
and its other parts, merged into one file for the export). The export's torch process loads it
with transformers (``gguf_file=``: the weights dequantized to FP32, the tokenizer and chat template
rebuilt from the file) and exports the FP32 graph as for any model; it also records which GGUF
tensor each Hugging Face weight came from, and the row order transformers gave it (llama.cpp
stores the query and key projections of Llama-style models with their rows permuted).

Carrying the blocks over (``--weights int4/int8``, unless ``--requantize``): GGUF's Q4_0, Q4_1 and
Q8_0 quantize rows in blocks of 32 weights with a float16 scale, which is ONNX Runtime's
MatMulNBits with ``block_size`` 32. Q4_0 (``d * (q - 8)``) and Q8_0 (``d * q``) map bit-exactly,
with a constant zero point (8, 128); Q4_1 (``d * q + m``, a float minimum per block) has no
integer zero point that holds it, and a float zero point takes ONNX Runtime off its pre-packed
kernels, so it is carried as ``d * q`` with zero point 0 plus ``m`` applied to the sums of the
input over each block (a Reshape, a ReduceSum and one small MatMul beside the layer): the same
weights, within float rounding of the order the sums are taken in. Other types (K-quants, Q5_x,
IQ*) are dequantized by transformers and quantized with the package's own recipe. Every carried
layer is checked: its dequantized blocks must equal the FP32 weights the graph was exported with.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.converters.sources import Source, resolver
from edge_sdk.errors import ModelLoadError, UnsupportedArchitectureError

log = logging.getLogger("edge_sdk")

SUFFIX = ".gguf"
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
# llama.cpp's architecture names that transformers knows under another model type
_MODEL_TYPES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gemma3": "gemma3_text", "gemma4": "gemma4_text",
                "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
UNQUANTIZED = ("F32", "F16", "BF16")
BLOCK = 32  # weights per block of Q4_0, Q4_1 and Q8_0 (llama.cpp's QK4_0, QK4_1, QK8_0)
CARRIED_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}  # the types carried over, and the bits of the layers they fit
MERGED_NAME = "merged.gguf"  # a split set merged into one file, in the export's work directory


@dataclass(frozen=True)
class GGUFModel:
    """What a GGUF source holds, from its metadata (no tensor is read)."""

    path: Path  # the file, or a split set's first part
    parts: tuple[Path, ...]  # every file of the source, in order
    architecture: str  # llama.cpp's name (general.architecture), e.g. "llama"
    model_type: str  # transformers' model type, e.g. "llama"
    name: str | None  # general.name
    file_type: str | None  # general.file_type in llama.cpp's words, e.g. "MOSTLY_Q4_1"
    tensor_types: dict[str, int] = field(default_factory=dict)  # tensor type -> how many tensors

    def as_manifest(self) -> dict[str, Any]:
        """The manifest's ``source`` entries for this file."""
        return {"format": "gguf", "gguf": {"file": self.path.name, "parts": len(self.parts), "architecture": self.architecture,
                                           "name": self.name, "file_type": self.file_type,
                                           "tensor_types": dict(sorted(self.tensor_types.items()))}}


def gguf_path(path: Path) -> Path | None:
    """The GGUF at ``path``: the file itself, or the only ``.gguf`` (or only split set) in a directory."""
    if path.is_file():
        return path if path.suffix == SUFFIX else None
    if not path.is_dir():
        return None
    files = sorted(p for p in path.glob(f"*{SUFFIX}") if p.is_file())
    if not files:
        return None
    sets = {(m["stem"], m["count"]) for m in (_SPLIT.match(p.name) for p in files) if m}
    singles = [p for p in files if not _SPLIT.match(p.name)]
    if len(singles) + len(sets) > 1:
        raise ModelLoadError(f"{path} holds several GGUF models ({', '.join(p.name for p in files[:4])}); "
                             "pass the .gguf file to export")
    if singles:
        return singles[0]
    stem, count = next(iter(sets))
    return path / f"{stem}-00001-of-{count}{SUFFIX}"


def split_parts(path: Path) -> tuple[Path, ...]:
    """Every part of the split set ``path`` belongs to (``path`` alone when it is not split); a
    missing part is an error that names it."""
    match = _SPLIT.match(path.name)
    if not match:
        return (path,)
    count = int(match["count"])
    parts = tuple(path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}{SUFFIX}") for i in range(1, count + 1))
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelLoadError(f"{path.name} is part of a split GGUF of {count} files and {', '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} missing from {path.parent}; put every part beside it")
    return parts


def _reader(path: Path):
    from edge_sdk.errors import optional_import

    gguf = optional_import("gguf", "convert", "reading GGUF models")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # a short file fails on its header, its tensor table or its data offsets
        raise ModelLoadError(f"cannot read {path} as GGUF ({type(e).__name__}: {e}); the file may be truncated or "
                             "not a GGUF model: download it again") from e


def _field(reader, key: str):
    found = reader.fields.get(key)
    if found is None:
        return None
    try:
        return found.contents()
    except Exception:
        return None


def read_gguf(path: Path) -> GGUFModel:
    """The model in GGUF ``path`` (its metadata), or an error saying why edge-sdk cannot export it."""
    import gguf

    parts = split_parts(path)
    architecture, name, file_type, types = None, None, None, Counter()
    for part in parts:
        reader = _reader(part)
        architecture = architecture or _field(reader, "general.architecture")
        name = name or _field(reader, "general.name")
        if file_type is None and _field(reader, "general.file_type") is not None:
            try:
                file_type = gguf.LlamaFileType(int(_field(reader, "general.file_type"))).name
            except ValueError:
                file_type = str(_field(reader, "general.file_type"))
        types.update(t.tensor_type.name for t in reader.tensors)
        if part.stat().st_size < max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0):
            raise ModelLoadError(f"{part} is shorter than its tensor table says (truncated); download it again")
    if not architecture:
        raise ModelLoadError(f"{path} has no general.architecture; it is not a GGUF model edge-sdk can read")
    model_type = _model_type(architecture, name)
    unreadable = sorted(t for t in types if t not in UNQUANTIZED and not _dequantizable(t))
    if unreadable:
        raise UnsupportedArchitectureError(
            f"{path.name} holds tensors of type {', '.join(unreadable)}, which the gguf package cannot dequantize; "
            "convert the model to a supported type (Q8_0, Q4_K_M, ...) with llama.cpp's llama-quantize")
    return GGUFModel(path, parts, architecture, model_type, name, file_type, dict(types))


def _dequantizable(type_name: str) -> bool:
    from gguf import GGMLQuantizationType, quants

    try:
        return GGMLQuantizationType[type_name] in quants._type_traits
    except (KeyError, AttributeError):
        return False


def _model_type(architecture: str, name: str | None) -> str:
    """transformers' model type for llama.cpp's ``architecture``, or an error when transformers'
    GGUF reader does not read it."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    model_type = _MODEL_TYPES.get(architecture, architecture)
    if architecture == "llama" and name and "mistral" in name.lower():  # as transformers reads such files
        model_type = "mistral"
    readable = set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}
    if architecture not in readable and model_type not in readable:
        raise UnsupportedArchitectureError(
            f"GGUF architecture '{architecture}' is not one transformers' GGUF reader loads "
            f"({', '.join(sorted(readable))}); export the model's Hugging Face checkpoint instead")
    return model_type


def _causal_lm_class(model_type: str, source: str) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if name is None:
        raise UnsupportedArchitectureError(f"{source}: GGUF model type '{model_type}' has no causal LM class in "
                                           "transformers; edge-sdk exports decoder-only language models from GGUF")
    return name


@resolver("gguf")
def _gguf_source(model: str, path: Path) -> Source | None:
    """A ``.gguf`` file, a directory holding one, or a split set's part."""
    found = gguf_path(path)
    if found is None:
        return None
    from edge_sdk.converters.registry import lookup

    info = read_gguf(found)
    architecture = _causal_lm_class(info.model_type, model)
    spec = lookup([architecture], source=model, config={"model_type": info.model_type})
    return Source(found, spec, {"gguf": info, "manifest": info.as_manifest()})


def merge_parts(info: GGUFModel, work: Path) -> Path:
    """One GGUF file of a split set (its parts' tensors, the first part's metadata, the split keys
    left out), written into ``work``; the file itself when it is not split."""
    if len(info.parts) == 1:
        return info.path
    import gguf

    work.mkdir(parents=True, exist_ok=True)
    target = work / MERGED_NAME
    readers = [_reader(part) for part in info.parts]
    writer = gguf.GGUFWriter(target, info.architecture)
    for key, value in readers[0].fields.items():
        if key.startswith(("split.", "GGUF.")) or key == "general.architecture":
            continue
        writer.add_key_value(key, value.contents(), value.types[0], value.types[-1] if len(value.types) > 1 else None)
    for reader in readers:
        for tensor in reader.tensors:  # quantized data as its bytes (one row of blocks per row), the rest as arrays
            quantized = tensor.tensor_type.name not in ("F32", "F16", "F64", "I8", "I16", "I32", "I64")
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type if quantized else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


# ---------------------------------------------------------------------- carrying blocks over

@dataclass(frozen=True)
class CarryOver:
    """What a package may take from a GGUF source as it is: the file, and for each Hugging Face
    weight its GGUF tensor and the row order transformers loaded it in (None: as stored)."""

    gguf: Path
    tensors: dict[str, dict]  # "model.layers.0.mlp.down_proj.weight" -> {"tensor": "blk.0.ffn_down.weight", "rows": [...] | None}

    @classmethod
    def from_export(cls, gguf: Path, mapping: dict[str, dict]) -> "CarryOver":
        return cls(Path(gguf), dict(mapping))


@dataclass
class CarriedWeight:
    """One weight (N outputs x K inputs) from its GGUF blocks, in MatMulNBits' layout."""

    type: str  # "Q4_0", "Q4_1" or "Q8_0"
    bits: int
    packed: np.ndarray  # uint8 (N, K / 32, 16 or 32): 4-bit pairs low nibble first, or 8-bit values
    scales: np.ndarray  # float32 (N, K / 32)
    zero_points: np.ndarray  # uint8 (N, K / 32), unpacked: 8 (Q4_0), 128 (Q8_0) or 0 (Q4_1)
    minimums: np.ndarray | None  # float32 (N, K / 32): Q4_1's m, added as a per-block term

    def dequantized(self) -> np.ndarray:
        """The weight (N, K) in float32, as the gguf package dequantizes it (for the exactness check)."""
        values = _unpack(self.packed, self.bits).astype(np.float32) - self.zero_points[..., None].astype(np.float32)
        weight = self.scales[..., None] * values
        if self.minimums is not None:
            weight = weight + self.minimums[..., None]
        return weight.reshape(weight.shape[0], -1)


def read_blocks(reader, tensor_name: str, rows: list[int] | None) -> CarriedWeight | None:
    """The GGUF tensor ``tensor_name`` as MatMulNBits blocks (rows reordered as transformers loaded
    them), or None when its type is not carried over."""
    tensor = next((t for t in reader.tensors if t.name == tensor_name), None)
    if tensor is None or tensor.tensor_type.name not in CARRIED_BITS:
        return None
    kind = tensor.tensor_type.name
    raw = np.asarray(tensor.data, dtype=np.uint8)
    raw = raw.reshape(raw.shape[0], -1)  # (N, bytes per row)
    if rows is not None:
        raw = raw[np.asarray(rows, dtype=np.int64)]
    n = raw.shape[0]
    block_bytes = {"Q4_0": 2 + BLOCK // 2, "Q4_1": 4 + BLOCK // 2, "Q8_0": 2 + BLOCK}[kind]
    blocks = raw.reshape(n, -1, block_bytes)
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if kind == "Q8_0":
        quantized = blocks[..., 2:].view(np.int8).astype(np.int16) + 128  # stored as uint8 with zero point 128
        return CarriedWeight(kind, 8, quantized.astype(np.uint8), scales, np.full(scales.shape, 128, np.uint8), None)
    start = 2 if kind == "Q4_0" else 4
    qs = blocks[..., start:]  # (N, blocks, 16): element j in the low nibble of byte j, element j + 16 in its high nibble
    values = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # (N, blocks, 32) in element order
    packed = pack_nibbles(values)
    if kind == "Q4_0":
        return CarriedWeight(kind, 4, packed, scales, np.full(scales.shape, 8, np.uint8), None)
    minimums = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    return CarriedWeight(kind, 4, packed, scales, np.zeros(scales.shape, np.uint8), minimums)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """4-bit codes (..., block) in element order -> MatMulNBits' bytes: element 2i in the low nibble,
    2i + 1 in the high one."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def tensor_map(model, gguf_file: Path) -> dict[str, dict]:
    """For each 2-D weight of ``model`` (loaded from ``gguf_file`` by transformers): the GGUF tensor
    it came from and the row order transformers' tensor processor gave it (None: as stored). Torch
    side: run where the model was loaded; transformers' own name map and processors decide it."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    reader = _reader(gguf_file)
    architecture = _field(reader, "general.architecture")
    config = model.config.to_dict()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
    to_hf = get_gguf_hf_weights_map(model, processor)
    shapes = {name: tuple(parameter.shape) for name, parameter in model.state_dict().items()}
    found = {}
    for tensor in reader.tensors:
        hf_name = to_hf.get(tensor.name)
        if hf_name is None or len(shapes.get(hf_name, ())) != 2 or tensor.tensor_type.name not in CARRIED_BITS:
            continue
        rows = shapes[hf_name][0]
        order = processor.process(weights=np.arange(rows, dtype=np.int64).reshape(rows, 1), name=tensor.name,
                                  tensor_key_mapping=to_hf, parsed_parameters={"config": config}).weights.reshape(-1)
        found[hf_name] = {"tensor": tensor.name, "rows": None if np.array_equal(order, np.arange(rows)) else order.tolist()}
    # a tied LM head has no tensor of its own (llama.cpp writes no output.weight): it reads token_embd's
    parameters = list(model.named_parameters(remove_duplicate=False))
    for name, parameter in parameters:
        if name not in found:
            twin = next((other for other, p in parameters if p is parameter and other in found), None)
            if twin is not None:
                found[name] = found[twin]
    return found
