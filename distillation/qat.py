"""Quantization-aware distillation: the exporter's weight quantization, simulated in training.

The student's linear layers (LM head included) are fake-quantized exactly as ONNX Runtime's
``MatMulNBitsQuantizer`` will quantize them at export (MLAS blockwise: blocks of ``group`` input
channels per output channel, asymmetric scale ``(max(x,0) - min(x,0)) / (2^bits - 1)`` with a
rounded zero point, or symmetric scale ``extreme / -2^(bits-1)``, values ``round(x * (1/scale)) +
zero`` clamped), and the embedding table as ``ort_heads.quantize_embedding`` writes its
``GatherBlockQuantized`` (blocks along the hidden axis). Group sizes come from the exporter's own
``plan_group_size`` and ``nbits_block``. Gradients pass straight through the rounding (STE); the block's range always
covers its values, so no value is clipped.

When training ends the weights are replaced by their quantized values ("snapped"): the student's
FP32 graph *is* the QAT model, and quantizing it again at export lands on the same grid, so the
package holds real integer weights (MatMulNBits / GatherBlockQuantized, never fake-quant nodes)
that are what was trained. ``tests/test_distillation.py`` checks the package's logits against the
fake-quantized PyTorch forward. A tied embedding and head are untied first, as the exporter does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils import parametrize

from edge_sdk.converters.onnxruntime_engine import nbits_block
from edge_sdk.converters.quantize import plan_group_size
from edge_sdk.quantization import DEFAULT_GROUP_SIZE, DEFAULT_HEAD, PER_CHANNEL


@dataclass(frozen=True)
class QATSpec:
    bits: int  # 8 or 4
    group_size: int  # requested, as export's --group-size (-1 per-channel)
    sym: bool
    head_bits: int = 8  # embedding tables and the LM head, as export's default --head-weights for int4

    @classmethod
    def from_options(cls, options) -> "QATSpec":
        bits = 8 if options.qat == "int8" else 4
        return cls(bits=bits, group_size=options.group_size or DEFAULT_GROUP_SIZE, sym=options.sym,
                   head_bits=8 if bits == 8 or DEFAULT_HEAD == "int8" else 4)

    def as_dict(self) -> dict:
        return {"weights": f"int{self.bits}", "group_size": self.group_size, "sym": self.sym, "head": f"int{self.head_bits}"}


def _blocks(weight: torch.Tensor, group: int) -> torch.Tensor:
    """(rows, blocks, group): a last partial block is zero-padded, as MatMulNBits pads K (zeros change
    neither range, since both formulas take the range with 0 in it or by the largest magnitude)."""
    rows, columns = weight.shape
    if group == PER_CHANNEL:
        return weight.reshape(rows, 1, columns)
    padding = -columns % group
    if padding:
        weight = torch.nn.functional.pad(weight, (0, padding))
    return weight.reshape(rows, (columns + padding) // group, group)


def _unblock(blocks: torch.Tensor, shape) -> torch.Tensor:
    return blocks.reshape(shape[0], -1)[:, :shape[1]]


def quantize_matmul_weight(weight: torch.Tensor, bits: int, group: int, sym: bool) -> torch.Tensor:
    """A linear layer's weight (out, in) as MatMulNBits will hold it, dequantized (MLAS's rounding)."""
    blocks = _blocks(weight, group)
    levels = (1 << bits) - 1
    if sym:
        high, low = blocks.amax(-1), blocks.amin(-1)
        scale = torch.where(high.abs() > low.abs(), high, low) / -(1 << (bits - 1))
        zero = torch.full_like(scale, 1 << (bits - 1))
    else:
        low, high = blocks.amin(-1).clamp(max=0), blocks.amax(-1).clamp(min=0)
        scale = (high - low) / levels
        safe = torch.where(scale != 0, scale, torch.ones_like(scale))
        zero = torch.where(scale != 0, -low / safe, torch.zeros_like(scale)).round().clamp(0, levels)
    reciprocal = torch.where(scale != 0, 1 / torch.where(scale != 0, scale, torch.ones_like(scale)), torch.zeros_like(scale))
    q = (blocks * reciprocal[..., None]).round().add(zero[..., None]).clamp(0, levels)
    return _unblock((q - zero[..., None]) * scale[..., None], weight.shape)


def quantize_embedding_weight(weight: torch.Tensor, bits: int, group: int, sym: bool) -> torch.Tensor:
    """An embedding table (vocab, hidden) as GatherBlockQuantized will hold it, dequantized."""
    blocks = _blocks(weight, group)
    levels = (1 << bits) - 1
    if sym:
        half = (levels + 1) // 2
        scale = blocks.abs().amax(-1) / (half - 1)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.full_like(scale, half)
    else:
        low, high = blocks.amin(-1).clamp(max=0), blocks.amax(-1).clamp(min=0)
        scale = (high - low) / levels
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = (-low / scale).round().clamp(0, levels)
    q = (blocks / scale[..., None]).round().add(zero[..., None]).clamp(0, levels)
    return _unblock((q - zero[..., None]) * scale[..., None], weight.shape)


def matmul_group(in_channels: int, requested: int) -> int:
    """The block a linear layer's weight is quantized in by the exporter (-1: one block over all inputs)."""
    block = nbits_block(in_channels, plan_group_size(in_channels, requested))
    return PER_CHANNEL if block >= in_channels else block


def _transposed(quantize):
    def run(weight, bits, group, sym):
        return quantize(weight.T, bits, group, sym).T

    return run


class FakeQuantize(torch.nn.Module):
    """A weight parametrization: quantized values forward, gradients straight through."""

    def __init__(self, quantize, bits: int, group: int, sym: bool):
        super().__init__()
        self.quantize, self.bits, self.group, self.sym = quantize, bits, group, sym

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.quantize(weight.detach(), self.bits, self.group, self.sym) - weight.detach())


def untie(model) -> None:
    """Give a tied LM head its own copy of the embedding (the exporter unties quantized heads too)."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embedding.weight:
        head.weight = torch.nn.Parameter(embedding.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = None


def attach(model, spec: QATSpec) -> int:
    """Fake-quantize every linear layer and the input embedding of ``model`` (embedding tables and
    the LM head at ``spec.head_bits``, as the exporter's ``head_nodes``); returns how many."""
    untie(model)
    head = model.get_output_embeddings()
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            quantize, group = quantize_matmul_weight, matmul_group(module.in_features, spec.group_size)
        elif isinstance(module, torch.nn.Embedding):  # every table the graph reads with Gather
            quantize, group = quantize_embedding_weight, plan_group_size(module.embedding_dim, spec.group_size)
        elif type(module).__name__ == "Conv1D":  # GPT-2's linear layers: weight (in, out)
            quantize, group = _transposed(quantize_matmul_weight), matmul_group(module.weight.shape[0], spec.group_size)
        else:
            continue
        bits = spec.head_bits if module is head or isinstance(module, torch.nn.Embedding) else spec.bits
        parametrize.register_parametrization(module, "weight", FakeQuantize(quantize, bits, group, spec.sym))
        count += 1
    return count


def snap(model) -> None:
    """Replace each fake-quantized weight by its quantized value and drop the parametrizations."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
