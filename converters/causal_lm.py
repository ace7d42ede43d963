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

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.converters.registry import CausalLMSpec

log = logging.getLogger("edge_sdk")

DECODER_FILE = "decoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
_CALIBRATION_WINDOW = 64  # tokens per calibration prompt
_CALIBRATION_DECODE_STEPS = 3  # decode steps recorded after each calibration prefill


def input_names(num_layers: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")
    ]


def output_names(num_layers: int) -> list[str]:
    return ["logits"] + [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def _calibration_feeds(fp32_graph: Path, shapes: dict, tokenizer, options) -> list[dict[str, np.ndarray]]:
    """Decoder inputs for static calibration: prefill *and* decode steps, from real text.

    A decoder calibrated only on prefill sees decode-step activations (one token, a long cache) it
    was never calibrated for, a known way to get garbage decodes. Windows are drawn with a fixed
    seed; the decode steps follow the FP32 model's own greedy tokens.
    """
    from edge_sdk.evaluation import read_texts
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.text_generation import _Inference

    tokens = [t for text in read_texts(options.quantization.calibration) for t in tokenizer.encode(text)]
    if len(tokens) < _CALIBRATION_WINDOW:
        return []
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(tokens) - _CALIBRATION_WINDOW + 1, size=options.quantization.num_samples)
    session = open_session("onnxruntime", fp32_graph)
    feeds: list[dict[str, np.ndarray]] = []

    class Recorder:
        def run(self, inputs, keep=()):
            feeds.append(dict(inputs))
            return session.run(inputs)  # all outputs as numpy: the recorded feeds must be plain arrays

    for start in starts:
        inference = _Inference(Recorder(), shapes, [tokens[start : start + _CALIBRATION_WINDOW]], pad_id=0)
        next_token = inference.prefill()[:, -1].argmax(-1)
        for _ in range(_CALIBRATION_DECODE_STEPS):
            next_token = inference.step(next_token).argmax(-1)
    return feeds


_PROBE_TEXTS = ("Hello", "A longer prompt, so that the first row of the batch is left-padded.")
_PROBE_CONTINUATION = " and then the story went on"


def _probe(shapes: dict, tokenizer):
    """A check for graph rewrites: next-token logits of a left-padded batch at prefill and 3 decode steps."""
    from edge_sdk.runtimes.text_generation import _Inference

    prompts = [tokenizer.encode(text) for text in _PROBE_TEXTS]
    continuation = tokenizer.encode(_PROBE_CONTINUATION)[-3:]

    def run(session) -> np.ndarray:
        inference = _Inference(session, shapes, prompts, pad_id=0)
        logits = [inference.prefill()[:, -1]]
        for token in continuation:
            logits.append(inference.step(np.full(len(prompts), token, dtype=np.int64)))
        return np.stack(logits, axis=1)

    return run


def export_causal_lm(model_dir: Path, spec: CausalLMSpec, staging: Path, options, steps) -> dict[str, Any]:
    """Write the decoder graph and tokenizer into ``staging``; return the task's manifest sections.

    A child process exports the FP32 graph and validates it against PyTorch; the package's graph
    (another runtime or precision) is derived from it here, and its accuracy measured against it.
    """
    from edge_sdk.converters.stage import run_stage
    from edge_sdk.converters.target import build_graph
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    steps.expect(5)
    work = staging / "fp32-work"
    request = {"model_dir": str(model_dir), "architecture": spec.architecture, "work": str(work), "atol": options.atol}
    exported = run_stage("edge_sdk.converters.causal_lm_torch:export_fp32", request, work, steps)
    shapes = exported["shapes"]
    fp32_graph = work / DECODER_FILE
    os.replace(work / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    tokenizer = TextTokenizer.from_file(staging / TOKENIZER_FILE)

    quantization = options.quantization
    with steps.step(f"building the {options.runtime} {quantization.weights} graph"):
        calibration = (lambda: _calibration_feeds(fp32_graph, shapes, tokenizer, options)) if quantization.calibration else None
        graph, recipe, min_version = build_graph(
            fp32_graph, staging, "decoder", options.runtime, quantization, calibration, _probe(shapes, tokenizer)
        )

    with steps.step("measuring accuracy against FP32"):
        # in a fresh process: this one still holds what building the graph left on its heap, and an
        # OpenVINO model costs about twice its weights once compiled (3.5x FP32 weights in all, here)
        request = {
            "candidate": [options.runtime, str(staging / graph["path"])],
            "reference": str(fp32_graph) if fp32_graph.exists() else None,
            "shapes": shapes,
            "tokenizer": str(staging / TOKENIZER_FILE),
            "eval_data": str(options.eval_data) if options.eval_data else None,
        }
        accuracy = run_stage("edge_sdk.converters.causal_lm:accuracy_stage", request, staging / "accuracy-work", steps)
    shutil.rmtree(work)
    shutil.rmtree(staging / "accuracy-work")
    return {
        "graphs": [graph],
        "runtime": {"name": options.runtime, "min_version": min_version},
        "precision": {"weights": quantization.weights, "activations": quantization.activations, "recipe": recipe},
        "tokenizer": {"path": TOKENIZER_FILE},
        "model": {"architecture": spec.architecture, "model_type": exported["model_type"], **shapes, "kv_dtype": "float32"},
        "generation": exported["generation"],
        "accuracy": {
            "reference": "transformers PyTorch FP32",
            "max_abs_diff": exported["max_abs_diff"],
            "atol": options.atol,
            "inputs": exported["validation_inputs"],
            "note": "max_abs_diff is of the FP32 ONNX graph; 'eval' compares this package with that graph",
            "eval": accuracy,
        },
    }


def accuracy_stage(request: dict[str, Any], step) -> dict[str, Any]:
    """Teacher-forced accuracy of the package's graph against the FP32 graph on held-back text.

    Runs in a child process (see ``stage``); the two sessions are opened one at a time.
    """
    from edge_sdk.evaluation import BUNDLED_EVAL_TEXT, read_texts, text_accuracy, token_windows
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.text_generation import sequence_logits
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    shapes = request["shapes"]
    tokenizer = TextTokenizer.from_file(Path(request["tokenizer"]))
    eval_data = request["eval_data"]
    tokens = [t for text in read_texts(eval_data or BUNDLED_EVAL_TEXT) for t in tokenizer.encode(text)]

    def opener(runtime: str, path: str):
        def open_logits():
            session = open_session(runtime, Path(path))
            return lambda ids: sequence_logits(session, shapes, ids)

        return open_logits

    reference = request["reference"]
    result = text_accuracy(
        opener(*request["candidate"]), token_windows(tokens), opener("onnxruntime", reference) if reference else None
    )
    data = "bundled edge_sdk/data/eval.txt" if eval_data is None else eval_data
    return {"data": data, "reference": "FP32 ONNX graph" if reference else None, **result.as_dict()}
