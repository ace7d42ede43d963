"""Causal language models (Hugging Face) -> one ONNX decoder graph with an explicit KV cache.

The graph serves both prefill (many tokens, empty past) and decode (one token, growing past):

    inputs   input_ids (batch, sequence) int64
             attention_mask (batch, past_sequence + sequence) int64, 0 on left padding
             position_ids (batch, sequence) int64
             past_key_values.{i}.key / .value (batch, kv_heads, past_sequence, head_dim) float32
    outputs  logits (batch, sequence, vocab) float32
             present.{i}.key / .value (batch, kv_heads, past_sequence + sequence, head_dim)
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import shutil
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.converters.onnx_export import export_onnx
from edge_sdk.converters.registry import CausalLMSpec
from edge_sdk.converters.validate import Comparison
from edge_sdk.errors import ModelLoadError

log = logging.getLogger("edge_sdk")

DECODER_FILE = "decoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
# Trace sizes: distinct and > 1 so torch.export keeps every axis symbolic instead of specializing it.
_TRACE_BATCH, _TRACE_SEQUENCE, _TRACE_PAST = 2, 3, 5
_VALIDATION_TEXTS = ("The quick brown fox jumps over the lazy dog.", "Edge devices run small models.")
_VALIDATION_DECODE_STEPS = 3
_CALIBRATION_WINDOW = 64  # tokens per calibration prompt
_CALIBRATION_DECODE_STEPS = 3  # decode steps recorded after each calibration prefill


def input_names(num_layers: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")
    ]


def output_names(num_layers: int) -> list[str]:
    return ["logits"] + [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


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


def load_model(model_dir: Path):
    """The transformers model in FP32, eval mode, with SDPA attention (exports to plain ONNX ops)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    except Exception as e:
        raise ModelLoadError(f"transformers cannot load the model in {model_dir}: {type(e).__name__}: {e}") from e
    return model.eval()


def _kv_cache_decoder(model, num_layers: int):
    """Wrap ``model`` so its cache goes in and out as flat tensors (what an ONNX graph can carry)."""
    import torch
    from transformers import DynamicCache

    # transformers 5 renamed the cache argument and output field from past_key_values to cache
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

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
    past = [np.zeros((len(token_ids), shapes["num_kv_heads"], 0, shapes["head_dim"]), np.float32)] * (2 * layers)
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


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
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


def _calibration_feeds(fp32_graph: Path, shapes: dict, tokenizer, options) -> list[dict[str, np.ndarray]]:
    """Decoder inputs for static calibration: prefill *and* decode steps, from real text.

    A decoder calibrated only on prefill sees decode-step activations (one token, a long cache) it
    was never calibrated for, a known way to get garbage decodes. Windows are drawn with a fixed
    seed; the decode steps follow the FP32 model's own greedy tokens.
    """
    from edge_sdk.evaluation import read_texts
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.text_generation import _Inference

    tokens = [t for text in read_texts(options.quantization.calibration) for t in tokenizer(text)["input_ids"]]
    if len(tokens) < _CALIBRATION_WINDOW:
        return []
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(tokens) - _CALIBRATION_WINDOW + 1, size=options.quantization.num_samples)
    session = open_session("onnxruntime", fp32_graph)
    feeds: list[dict[str, np.ndarray]] = []

    class Recorder:
        def run(self, inputs):
            feeds.append(dict(inputs))
            return session.run(inputs)

    for start in starts:
        inference = _Inference(Recorder(), shapes, [tokens[start : start + _CALIBRATION_WINDOW]], pad_id=0)
        next_token = inference.prefill()[:, -1].argmax(-1)
        for _ in range(_CALIBRATION_DECODE_STEPS):
            next_token = inference.step(next_token).argmax(-1)
    return feeds


def export_causal_lm(model_dir: Path, spec: CausalLMSpec, staging: Path, options, steps) -> dict[str, Any]:
    """Write the decoder graph and tokenizer into ``staging``; return the task's manifest sections.

    The FP32 graph is exported and validated against PyTorch first; the package's graph (another
    runtime or precision) is derived from it, and its accuracy measured against it.
    """
    from edge_sdk.converters.target import build_graph
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    steps.expect(5)
    with steps.step("loading model"):
        model = load_model(model_dir)
        shapes = spec.read(model.config)
        model_type = model.config.model_type
        tokenizer = _tokenizer(model_dir)
        generation = _generation_config(model_dir, model.config, tokenizer)
        wrapper = _kv_cache_decoder(model, shapes["num_layers"])
        token_ids = [tokenizer(text)["input_ids"] for text in _VALIDATION_TEXTS]
        pad_id = generation["pad_token_id"] if generation["pad_token_id"] is not None else 0
        cases = _reference_cases(wrapper, shapes, token_ids, pad_id)

    work = staging / "fp32-work"
    work.mkdir()
    fp32_graph = work / DECODER_FILE
    with steps.step("exporting to ONNX (torch.export)"):
        import torch

        layers = shapes["num_layers"]
        batch, seq, past, total = (torch.export.Dim(n) for n in ("batch", "sequence", "past_sequence", "total_sequence"))
        trace = (
            torch.zeros(_TRACE_BATCH, _TRACE_SEQUENCE, dtype=torch.int64),
            torch.ones(_TRACE_BATCH, _TRACE_PAST + _TRACE_SEQUENCE, dtype=torch.int64),
            torch.arange(_TRACE_PAST, _TRACE_PAST + _TRACE_SEQUENCE).repeat(_TRACE_BATCH, 1),
            # one tensor per input: aliased example inputs would be traced as one graph input
            *(torch.zeros(_TRACE_BATCH, shapes["num_kv_heads"], _TRACE_PAST, shapes["head_dim"]) for _ in range(2 * layers)),
        )
        dynamic = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, tuple({0: batch, 2: past} for _ in range(2 * layers)))
        export_onnx(
            wrapper,
            trace,
            fp32_graph,
            input_names=input_names(layers),
            output_names=output_names(layers),
            dynamic_shapes=dynamic,
        )
        tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
        del wrapper, model
        gc.collect()

    with steps.step("validating against PyTorch"):
        comparison = Comparison(atol=options.atol)
        _compare(open_session("onnxruntime", fp32_graph), cases, comparison)
        runtime_tokenizer = TextTokenizer.from_file(staging / TOKENIZER_FILE)
        for text, expected in zip(_VALIDATION_TEXTS, token_ids):
            comparison.check_equal(f"tokenizer ids of {text!r}", runtime_tokenizer.encode(text), expected)
        comparison.raise_if_failed("the exported decoder does not reproduce the PyTorch model")

    quantization = options.quantization
    with steps.step(f"building the {options.runtime} {quantization.weights} graph"):
        calibration = (lambda: _calibration_feeds(fp32_graph, shapes, tokenizer, options)) if quantization.calibration else None
        graph, recipe, min_version = build_graph(fp32_graph, staging, "decoder", options.runtime, quantization, calibration)

    with steps.step("measuring accuracy against FP32"):
        accuracy = _measure_accuracy(
            open_session(options.runtime, staging / graph["path"]),
            open_session("onnxruntime", fp32_graph) if fp32_graph.exists() else None,
            shapes, runtime_tokenizer, options,
        )
    shutil.rmtree(work)
    return {
        "graphs": [graph],
        "runtime": {"name": options.runtime, "min_version": min_version},
        "precision": {"weights": quantization.weights, "activations": _activations(quantization), "recipe": recipe},
        "tokenizer": {"path": TOKENIZER_FILE},
        "model": {"architecture": spec.architecture, "model_type": model_type, **shapes, "kv_dtype": "float32"},
        "generation": generation,
        "accuracy": {
            "reference": "transformers PyTorch FP32",
            "max_abs_diff": comparison.max_diffs(),
            "atol": options.atol,
            "inputs": f"{len(_VALIDATION_TEXTS)} left-padded prompts, prefill + {_VALIDATION_DECODE_STEPS} decode steps",
            "note": "max_abs_diff is of the FP32 ONNX graph; 'eval' compares this package with that graph",
            "eval": accuracy,
        },
    }


def _activations(quantization) -> str:
    return {"dynamic": "int8 (dynamic)", "static": "int8 (static, calibrated)"}.get(quantization.effective_mode, "fp32")


def _measure_accuracy(candidate, reference, shapes: dict, tokenizer, options) -> dict[str, Any]:
    """Teacher-forced accuracy of the package's graph against the FP32 graph on held-back text."""
    from edge_sdk.evaluation import BUNDLED_EVAL_TEXT, read_texts, text_accuracy, token_windows
    from edge_sdk.runtimes.text_generation import sequence_logits

    source = options.eval_data or BUNDLED_EVAL_TEXT
    tokens = [t for text in read_texts(source) for t in tokenizer.encode(text)]
    windows = token_windows(tokens)
    result = text_accuracy(
        lambda ids: sequence_logits(candidate, shapes, ids),
        windows,
        (lambda ids: sequence_logits(reference, shapes, ids)) if reference is not None else None,
    )
    data = "bundled edge_sdk/data/eval.txt" if options.eval_data is None else str(options.eval_data)
    return {"data": data, "reference": "FP32 ONNX graph" if reference is not None else None, **result.as_dict()}


def model_logits(model_dir: Path):
    """A callable: token ids -> the PyTorch model's logits (T, vocab) as numpy (the FP32 reference)."""
    import torch

    model = load_model(model_dir)

    def logits(token_ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([list(token_ids)])).logits[0].numpy()

    return logits
