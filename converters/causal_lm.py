"""Causal language models (Hugging Face) -> one ONNX decoder graph with an explicit KV cache.

The graph serves both prefill (many tokens, empty past) and decode (one token, growing past):

    inputs   input_ids (batch, sequence) int64
             attention_mask (batch, past_sequence + sequence) int64, 0 on left padding
             position_ids (batch, sequence) int64
             past_key_values.{i}.key / .value (batch, kv_heads, past_sequence, head_dim) float32
    outputs  logits (batch, sequence, vocab) float32
             present.{i}.key / .value (batch, kv_heads, past_sequence + sequence, head_dim)

The package's graph is that one (manifest ``kv_cache: "inputs"``), or on ONNX Runtime where every
layer's attention fuses, one whose attention runs over a preallocated buffer per cache tensor
(``kv_cache: "shared"``: ``seqlens_k`` and ``total_sequence_length`` instead of
``attention_mask``, see ``ort_attention``), or on OpenVINO a stateful one (``kv_cache:
"stateful"``, the cache inside the engine's request).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edge_sdk.converters.sources import ExportResult, Source
from edge_sdk.runtimes.chat import TEMPLATE_FILE as CHAT_TEMPLATE_FILE

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


def calibration_feeds(fp32_graph: Path, shapes: dict, tokenizer, options) -> list[dict[str, np.ndarray]]:
    """Decoder inputs for calibration (static activations, calibrated int4): prefill *and* decode
    steps, from real text, recorded on ``fp32_graph`` (the exported graph, or the fused graph an
    ONNX Runtime package quantizes: its cache in shared buffers).

    A decoder calibrated only on prefill sees decode-step activations (one token, a long cache) it
    was never calibrated for, a known way to get garbage decodes. Windows are drawn with a fixed
    seed; the decode steps follow the FP32 model's own greedy tokens.
    """
    from edge_sdk.converters.quantize import FeedRecorder
    from edge_sdk.texts import read_texts
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState

    tokens = [t for text in read_texts(options.quantization.calibration) for t in tokenizer.encode(text)]
    if len(tokens) < _CALIBRATION_WINDOW:
        return []
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(tokens) - _CALIBRATION_WINDOW + 1, size=options.quantization.num_samples)
    recorder = FeedRecorder(open_session("onnxruntime", fp32_graph))
    graph = DecoderGraph.from_session(recorder, shapes)
    for start in starts:
        with DecoderState(recorder, graph) as state:
            window = tokens[start : start + _CALIBRATION_WINDOW]
            next_token = state.prefill([window], capacity=len(window) + _CALIBRATION_DECODE_STEPS)[:, -1].argmax(-1)
            for _ in range(_CALIBRATION_DECODE_STEPS):
                next_token = state.step(next_token).argmax(-1)
    return recorder.feeds


_PROBE_TEXTS = ("Hello", "A longer prompt, so that the first row of the batch is left-padded.")
_PROBE_CONTINUATION = " and then the story went on"


def attention_windows(shapes: dict) -> list[int | None]:
    """Each layer's sliding window (None: full attention), from the manifest's model section."""
    window, types = shapes.get("sliding_window"), shapes.get("layer_types")
    if not window:
        return [None] * shapes["num_layers"]
    if not types:
        return [window] * shapes["num_layers"]
    return [window if kind == "sliding_attention" else None for kind in types]


def _probe(shapes: dict, tokenizer):
    """A check for graph rewrites: next-token logits of a left-padded batch at prefill and 3 decode steps."""
    from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState

    prompts = [tokenizer.encode(text) for text in _PROBE_TEXTS]
    continuation = tokenizer.encode(_PROBE_CONTINUATION)[-3:]

    def run(session) -> np.ndarray:
        with DecoderState(session, DecoderGraph.from_session(session, shapes)) as state:
            logits = [state.prefill(prompts)[:, -1]]
            for token in continuation:
                logits.append(state.step(np.full(len(prompts), token, dtype=np.int64)))
        return np.stack(logits, axis=1)

    return run


def export_causal_lm(source: Source, staging: Path, options, steps) -> ExportResult:
    """Write the decoder graph and tokenizer into ``staging``; return them and the task's manifest sections.

    A child process exports the FP32 graph and validates it against PyTorch; the package's graph
    (another runtime or precision) is derived from it here (``export()`` then measures it against
    the FP32 graph).
    """
    from edge_sdk.converters.stage import run_stage
    from edge_sdk.converters.target import build_graph
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    steps.expect(4)
    work = staging / "fp32-work"
    request = {"model_dir": str(source.path), "architecture": source.spec.architecture, "work": str(work), "atol": options.atol,
               "attention": source.spec.attention}
    gguf = source.extra.get("gguf")
    if gguf is not None:  # transformers reads the file (a split set merged into one first)
        from edge_sdk.converters.gguf import merge_parts

        gguf_file = merge_parts(gguf, staging / "gguf-work")
        request.update(model_dir=str(gguf_file.parent), gguf_file=gguf_file.name)
    if not source.spec.tested:
        log.warning("%s is not among the families edge-sdk tests; exporting it by the generic path "
                    "(the export still checks it against PyTorch)", source.spec.architecture)
    inputs = [Path(request["model_dir"]) / request["gguf_file"]] if gguf is not None else [source.path]
    exported = run_stage("edge_sdk.converters.causal_lm_torch:export_fp32", request, work, steps, inputs=inputs)
    shapes = exported["shapes"]
    fp32_graph = work / DECODER_FILE
    os.replace(work / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    tokenizer_section = {"path": TOKENIZER_FILE, "special_tokens": exported["special_tokens"]}
    if exported["chat_template"]:
        os.replace(work / CHAT_TEMPLATE_FILE, staging / CHAT_TEMPLATE_FILE)
        tokenizer_section["chat_template"] = CHAT_TEMPLATE_FILE
    tokenizer = TextTokenizer.from_file(staging / TOKENIZER_FILE)

    quantization = options.quantization
    static = options.device is not None and options.device.static_shapes
    carry = None
    if gguf is not None and exported.get("gguf_tensors") and quantization.weights in ("int8", "int4") \
            and quantization.effective_mode == "weight-only" and not options.requantize:
        from edge_sdk.converters.gguf import CarryOver

        carry = CarryOver(inputs[0], exported["gguf_tensors"])
    with steps.step(f"building the {options.runtime} {quantization.weights} graph"):
        calibration = ((lambda graph=None: calibration_feeds(graph or fp32_graph, shapes, tokenizer, options))
                       if quantization.calibration else None)
        # static NPU graphs keep the attention torch exported (fixed shapes, a numpy cache)
        graph, recipe, min_version = build_graph(
            fp32_graph, staging, "decoder", options.runtime, quantization, calibration, _probe(shapes, tokenizer),
            attention=None if static else {"windows": attention_windows(shapes), "positions": shapes.get("max_positions")},
            carry=carry,
        )
        if gguf is not None and recipe is not None and options.requantize:
            recipe["from_source"] = {"format": "gguf", "carried": {}, "requantized": {"--requantize": len(exported["gguf_tensors"] or {})}}
        if options.runtime == "openvino" and not static:  # NPU graphs stay stateless: static shapes, numpy cache
            from edge_sdk.converters.openvino_engine import make_stateful

            graph = {**graph, **make_stateful(staging / graph["path"], graph)}
        elif "group_query_attention" in graph.get("fusions", {}).get("applied", {}):
            graph["kv_cache"] = "shared"  # one preallocated buffer per cache tensor, past and present (GroupQueryAttention)
        else:
            graph["kv_cache"] = "inputs"  # past_key_values.* in, present.* out, through the caller
    return ExportResult(
        graphs=[graph], min_version=min_version, recipe=recipe,
        sections={
            "tokenizer": tokenizer_section,
            "model": {"architecture": source.spec.architecture, "model_type": exported["model_type"], **shapes,
                      "kv_dtype": "float32"},
            "generation": exported["generation"],
        },
        validation={
            "reference": "transformers PyTorch FP32",
            "max_abs_diff": exported["max_abs_diff"],
            "atol": options.atol,
            "inputs": exported["validation_inputs"],
            "note": "max_abs_diff is of the FP32 ONNX graph; 'eval' compares this package with that graph",
        },
        work_dir=work,
    )
