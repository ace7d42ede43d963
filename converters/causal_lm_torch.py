"""The PyTorch side of exporting a causal LM: load it, export the FP32 decoder graph, validate it.

Runs in a child process (``edge_sdk.converters.stage``), so torch's memory leaves with it; the
parent (``causal_lm.py``) builds the package from the files written here.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.converters.causal_lm import CHAT_TEMPLATE_FILE, DECODER_FILE, TOKENIZER_FILE, input_names, output_names
from edge_sdk.converters.onnx_export import export_onnx
from edge_sdk.converters.validate import Comparison
from edge_sdk.errors import ModelLoadError

# Trace sizes: distinct and > 1 so torch.export keeps every axis symbolic instead of specializing it.
_TRACE_BATCH, _TRACE_SEQUENCE, _TRACE_PAST = 2, 3, 5
_VALIDATION_TEXTS = ("The quick brown fox jumps over the lazy dog.", "Edge devices run small models.")
_VALIDATION_DECODE_STEPS = 3


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' own progress bars and advice while our progress bar runs; restore after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def attention_implementation(model_dir: Path, attention: str | None = None, gguf_file: str | None = None) -> str:
    """The attention to trace: ``attention`` if the registry names one, else SDPA (plain ONNX ops,
    fused by ONNX Runtime) where the family's class supports it, else eager (Gemma 2's soft-capping)."""
    if attention:
        return attention
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        model_class = AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(model_dir, gguf_file=gguf_file))]
    except Exception:  # an unmapped config fails in from_pretrained with transformers' own message
        return "sdpa"
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def load_model(model_dir: Path, attention: str | None = None, gguf_file: str | None = None):
    """The transformers model in FP32 (bf16/fp16 checkpoints are upcast, GGUF ``gguf_file`` in
    ``model_dir`` dequantized by transformers' GGUF reader), eval mode.

    Never with ``trust_remote_code``: a model whose code ships with its weights is refused before
    this (``registry.lookup``) and transformers will not run it here either.
    """
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with quiet_transformers():
            implementation = attention_implementation(model_dir, attention, gguf_file)
            # mixture-of-experts layers run as batched matmuls over gathered expert weights: their
            # default grouped_mm is a custom op that torch.onnx cannot translate (Mixtral, Qwen3-MoE)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=implementation,
                                                         experts_implementation="batched_mm", trust_remote_code=False,
                                                         **({"gguf_file": gguf_file} if gguf_file else {}))
    except Exception as e:
        where = model_dir / gguf_file if gguf_file else model_dir
        raise ModelLoadError(f"transformers cannot load the model in {where}: {type(e).__name__}: {e}") from e
    return model.eval()


def _cache_argument(model) -> str:
    # transformers 5 renamed the cache argument and output field from past_key_values to cache
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_shapes(model, architecture: str) -> dict[str, Any]:
    """The decoder's shapes, read from a real forward pass rather than config attribute names.

    Families name their config fields differently (GPT-NeoX has no ``num_key_value_heads``, Gemma
    sets ``head_dim`` apart from ``hidden_size / heads``); the cache a forward returns is the truth.
    A family whose cache is not per-layer keys and values (state-space, recurrent) is refused here.
    """
    import torch

    from edge_sdk.converters.registry import RECURRENT_STATE
    from edge_sdk.errors import UnsupportedArchitectureError

    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 2, dtype=torch.int64), use_cache=True)
    cache = getattr(out, _cache_argument(model), None)
    layers = getattr(cache, "layers", None)
    if not layers or any(getattr(layer, "keys", None) is None or getattr(layer, "values", None) is None
                         or layer.keys.dim() != 4 or layer.values.dim() != 4 for layer in layers):
        raise UnsupportedArchitectureError(
            f"{architecture}'s transformers implementation returns a {type(cache).__name__} cache, not keys and values "
            f"per layer; it {RECURRENT_STATE}, so it cannot become an edge-sdk decoder graph")
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    first = layers[0]
    if any(layer.keys.shape[1:] != first.keys.shape[1:] or layer.values.shape[1:] != first.keys.shape[1:] for layer in layers):
        raise UnsupportedArchitectureError(
            f"{architecture} has layers whose keys and values differ in heads or head size; edge-sdk's decoder graph "
            "needs one cache shape for every layer")
    max_positions = getattr(text, "max_position_embeddings", None)
    window = getattr(text, "sliding_window", None)
    layer_types = list(getattr(text, "layer_types", None) or [])
    sliding = "sliding_attention" in layer_types if layer_types else window is not None
    return {
        "num_layers": len(layers),
        "num_heads": int(getattr(text, "num_attention_heads", first.keys.shape[1])),
        "num_kv_heads": int(first.keys.shape[1]),
        "head_dim": int(first.keys.shape[3]),
        "hidden_size": int(text.hidden_size),
        "vocab_size": int(out.logits.shape[-1]),
        "max_positions": int(max_positions) if max_positions else None,
        "sliding_window": int(window) if window and sliding else None,
        "layer_types": layer_types or None,
    }


def _kv_cache_decoder(model, num_layers: int):
    """Wrap ``model`` so its cache goes in and out as flat tensors (what an ONNX graph can carry).

    The cache is a plain ``DynamicCache`` of full layers for every family: sliding-window layers
    keep their whole past, and the family's own mask code limits what they attend to, so a prompt
    or generation longer than the window gives exactly transformers' result.
    """
    import torch
    from transformers import DynamicCache

    cache_name = _cache_argument(model)

    class KVCacheDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(num_layers)])
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{cache_name: cache},
            )
            present = []
            for layer in getattr(out, cache_name).layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return KVCacheDecoder().eval()


def _past_shapes(shapes: dict, batch: int, past: int) -> list[tuple[int, ...]]:
    """Shapes of the flat cache inputs (key, value per layer) for ``batch`` rows of ``past`` positions."""
    return [(batch, shapes["num_kv_heads"], past, shapes["head_dim"])] * (2 * shapes["num_layers"])


@dataclass
class _Case:
    """One validation input (numpy) and the reference model's outputs on it."""

    name: str
    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    valid: np.ndarray  # (batch, total) mask of positions that are not padding


def _reference_cases(wrapper, shapes: dict, token_ids: list[list[int]], pad_id: int) -> list[_Case]:
    """Prefill a left-padded batch with an empty cache, then decode a few steps; record PyTorch's outputs."""
    import torch

    layers = shapes["num_layers"]
    names_in, names_out = input_names(layers), output_names(layers)
    length = max(len(ids) for ids in token_ids)
    ids = np.full((len(token_ids), length), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, seq in enumerate(token_ids):
        ids[row, length - len(seq) :] = seq
        mask[row, length - len(seq) :] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    past = [np.zeros(shape, np.float32) for shape in _past_shapes(shapes, len(token_ids), 0)]
    cases = []
    rng = np.random.default_rng(0)
    for step in range(1 + _VALIDATION_DECODE_STEPS):
        inputs = dict(zip(names_in, [ids, mask, positions, *past]))
        with torch.no_grad():
            outputs = wrapper(*(torch.from_numpy(v) for v in inputs.values()))
        reference = {name: t.numpy() for name, t in zip(names_out, outputs)}
        cases.append(_Case("prefill" if step == 0 else f"decode {step}", inputs, reference, mask.astype(bool)))
        ids = rng.integers(0, shapes["vocab_size"], size=(len(token_ids), 1), dtype=np.int64)
        mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
        positions = positions[:, -1:] + 1
        past = [reference[name] for name in names_out[1:]]
    return cases


def _compare(session, cases: list[_Case], comparison: Comparison) -> None:
    for case in cases:
        outputs = session.run(case.inputs)
        new = case.valid[:, -case.inputs["input_ids"].shape[1] :]
        for name, expected in case.reference.items():
            # padding positions carry no meaning (and differ between attention kernels): compare real ones
            keep = new if name == "logits" else case.valid
            axis_values = (lambda a: a[keep]) if name == "logits" else (lambda a: a.transpose(0, 2, 1, 3)[keep])
            comparison.check(f"{case.name}: {name}", axis_values(outputs[name]), axis_values(expected))


def _tokenizer(model_dir: Path, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **({"gguf_file": gguf_file} if gguf_file else {}))
    except Exception as e:
        raise ModelLoadError(
            f"cannot load the tokenizer in {model_dir} ({type(e).__name__}: {e}); "
            "a text-generation package needs tokenizer.json (or files transformers can turn into one)"
        ) from e
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ModelLoadError(
            f"the tokenizer in {model_dir} has no fast (tokenizers) version; save it with a tokenizer.json"
        )
    return tokenizer


def _generation_config(model_dir: Path, config, tokenizer) -> dict[str, Any]:
    """Special token ids and sampling defaults, from generation_config.json, config.json and the tokenizer."""
    path = model_dir / "generation_config.json"
    generation = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def first(*values):
        return next((v for v in values if v is not None), None)

    eos = first(generation.get("eos_token_id"), getattr(config, "eos_token_id", None), tokenizer.eos_token_id)
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
    pad = first(generation.get("pad_token_id"), getattr(config, "pad_token_id", None), tokenizer.pad_token_id)
    defaults: dict[str, Any] = {"max_new_tokens": int(generation.get("max_new_tokens") or 128)}
    penalty = generation.get("repetition_penalty")
    if penalty is not None and float(penalty) != 1.0:  # transformers applies it in greedy search too
        defaults["repetition_penalty"] = float(penalty)
    if generation.get("do_sample"):
        defaults["temperature"] = float(generation.get("temperature", 1.0))
        defaults["top_k"] = int(generation.get("top_k") or 0)
        defaults["top_p"] = float(generation.get("top_p") or 1.0)
    return {
        "bos_token_id": first(generation.get("bos_token_id"), getattr(config, "bos_token_id", None)),
        "eos_token_ids": eos_ids,
        "pad_token_id": int(pad) if pad is not None else (eos_ids[0] if eos_ids else None),
        "defaults": defaults,
    }


def _chat_template(tokenizer) -> str | None:
    """The tokenizer's chat template (tokenizer_config.json's, or chat_template.jinja beside it);
    of a set of named templates, the default one."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _special_tokens(tokenizer) -> dict[str, Any]:
    """The special tokens a chat template is rendered with (bos_token, eos_token, ...), as strings."""
    tokens = {}
    for name, value in dict(getattr(tokenizer, "special_tokens_map", {}) or {}).items():
        tokens[name] = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
    return tokens


def export_fp32(request: dict[str, Any], step) -> dict[str, Any]:
    """Child-process entry: export and validate the FP32 graph into ``request["work"]``.

    Returns what the parent needs for the manifest: cache shapes, model type, generation config
    and the largest differences from PyTorch.
    """
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        from edge_sdk.errors import missing_extra

        raise missing_extra(e.name or "torch", "convert", "exporting a model") from e
    model_dir, work = Path(request["model_dir"]), Path(request["work"])
    step("loading model")
    gguf_file = request.get("gguf_file")  # a GGUF source: the file's name in model_dir
    model = load_model(model_dir, request.get("attention"), gguf_file)
    shapes = cache_shapes(model, request["architecture"])
    model_type = model.config.model_type
    tokenizer = _tokenizer(model_dir, gguf_file)
    generation = _generation_config(model_dir, model.config, tokenizer)
    gguf_tensors = None
    if gguf_file:  # where each weight came from in the file: what a quantized package may carry over as it is
        from edge_sdk.converters.gguf import tensor_map

        gguf_tensors = tensor_map(model, model_dir / gguf_file)
    wrapper = _kv_cache_decoder(model, shapes["num_layers"])
    token_ids = [tokenizer(text)["input_ids"] for text in _VALIDATION_TEXTS]
    pad_id = generation["pad_token_id"] if generation["pad_token_id"] is not None else 0
    cases = _reference_cases(wrapper, shapes, token_ids, pad_id)

    step("exporting to ONNX (torch.export)")
    import torch

    layers = shapes["num_layers"]
    batch, seq, past, total = (torch.export.Dim(n) for n in ("batch", "sequence", "past_sequence", "total_sequence"))
    trace = (
        torch.zeros(_TRACE_BATCH, _TRACE_SEQUENCE, dtype=torch.int64),
        torch.ones(_TRACE_BATCH, _TRACE_PAST + _TRACE_SEQUENCE, dtype=torch.int64),
        torch.arange(_TRACE_PAST, _TRACE_PAST + _TRACE_SEQUENCE).repeat(_TRACE_BATCH, 1),
        # one tensor per input: aliased example inputs would be traced as one graph input
        *(torch.zeros(shape) for shape in _past_shapes(shapes, _TRACE_BATCH, _TRACE_PAST)),
    )
    dynamic = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, tuple({0: batch, 2: past} for _ in range(2 * layers)))
    graph = work / DECODER_FILE
    export_onnx(wrapper, trace, graph, input_names=input_names(layers), output_names=output_names(layers), dynamic_shapes=dynamic)
    tokenizer.backend_tokenizer.save(str(work / TOKENIZER_FILE))
    chat_template = _chat_template(tokenizer)
    if chat_template is not None:
        (work / CHAT_TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")
    del wrapper, model
    gc.collect()

    step("validating against PyTorch")
    comparison = Comparison(atol=request["atol"])
    _compare(open_session("onnxruntime", graph), cases, comparison)
    runtime_tokenizer = TextTokenizer.from_file(work / TOKENIZER_FILE)
    for text, expected in zip(_VALIDATION_TEXTS, token_ids):
        comparison.check_equal(f"tokenizer ids of {text!r}", runtime_tokenizer.encode(text), expected)
    comparison.raise_if_failed("the exported decoder does not reproduce the PyTorch model")
    return {
        "shapes": shapes,
        "model_type": model_type,
        "generation": generation,
        "chat_template": chat_template is not None,
        "special_tokens": _special_tokens(tokenizer),
        "max_abs_diff": comparison.max_diffs(),
        "validation_inputs": f"{len(_VALIDATION_TEXTS)} left-padded prompts, prefill + {_VALIDATION_DECODE_STEPS} decode steps",
        "gguf_tensors": gguf_tensors,
    }


def model_logits(model_dir: Path):
    """A callable: token ids -> the PyTorch model's logits (T, vocab) as numpy (the FP32 reference)."""
    import torch

    model = load_model(model_dir)

    def logits(token_ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([list(token_ids)])).logits[0].numpy()

    return logits
