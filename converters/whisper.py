"""Whisper-family speech recognizers -> an edge package: encoder and decoder graphs, tokenizer,
mel filter bank and decoding facts (see ``whisper_torch`` for the graphs' inputs and outputs).

The PyTorch part (loading any of the three source layouts, export, validation) runs in a child
process; the package's graphs (another runtime or precision) are derived here from the FP32 ones
through the same generic ``target.build_graph`` the text path uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_sdk.converters.whisper_torch import (
    DECODER_FILE,
    ENCODER_FILE,
    MEL_FILE,
    N_FRAMES,
    TOKENIZER_FILE,
    encoder_outputs,
)
from edge_sdk.converters.sources import ExportResult, Source
from edge_sdk.errors import InvalidInputError
from edge_sdk.runtimes.backend import version_tuple


def _encoder_probe(n_mels: int):
    features = np.random.default_rng(1).normal(scale=0.5, size=(1, n_mels, N_FRAMES)).astype(np.float32)

    def run(session) -> np.ndarray:
        return session.run({"input_features": features})["cross.0.key"]

    return run


def _decoder_probe(shapes: dict, decoding: dict):
    """A check for graph rewrites: logits of a prompt prefill and one decode step on random cross values."""
    from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState

    rng = np.random.default_rng(2)
    heads, head_dim = shapes["num_heads"], shapes["head_dim"]
    cross = {name: rng.normal(size=(1, heads, shapes["source_positions"], head_dim)).astype(np.float32)
             for name in encoder_outputs(shapes["num_layers"])}
    prompt = [decoding["sot"], decoding["no_timestamps"], 1, 2]

    def run(session) -> np.ndarray:
        with DecoderState(session, DecoderGraph.from_session(session, shapes), fixed=cross) as state:
            first = state.prefill([prompt])[:, -1]
            return np.concatenate([first, state.step([3])])

    return run


def export_whisper(source: Source, staging: Path, options, steps) -> ExportResult:
    """Write the encoder and decoder graphs, tokenizer and mel filters into ``staging``; return them
    and the task's manifest sections (``export()`` then measures the package against the FP32 graphs)."""
    from edge_sdk.converters.stage import run_stage
    from edge_sdk.converters.target import build_graph

    quantization = options.quantization
    kind = source.extra.get("kind", "huggingface")
    steps.expect(4)
    work = staging / "fp32-work"
    request = {"source": str(source.path), "kind": kind, "work": str(work), "atol": options.atol,
               "static": bool(options.device is not None and options.device.static_shapes)}
    exported = run_stage("edge_sdk.converters.whisper_torch:export_fp32", request, work, steps)
    shapes, decoding = exported["shapes"], exported["decoding"]
    for name in (TOKENIZER_FILE, MEL_FILE):
        os.replace(work / name, staging / name)

    feeds: dict[str, list] = {}
    if quantization.effective_mode == "static":
        with steps.step("recording calibration inputs from audio"):
            feeds = _calibration_feeds(work, staging / MEL_FILE, shapes, decoding, quantization)
    graphs, recipes, versions = [], {}, []
    with steps.step(f"building the {options.runtime} {quantization.weights} graphs"):
        for role, fp32, probe in (
            ("encoder", work / ENCODER_FILE, _encoder_probe(shapes["n_mels"])),
            ("decoder", work / DECODER_FILE, _decoder_probe(shapes, decoding)),
        ):
            calibration = (lambda role=role: feeds.pop(role)) if feeds else None
            graph, recipe, min_version = build_graph(fp32, staging, role, options.runtime, quantization, calibration, probe)
            graphs.append(graph)
            recipes[role] = recipe
            versions.append(min_version)
    recipe = None if all(r is None for r in recipes.values()) else recipes
    return ExportResult(
        graphs=graphs, min_version=max(versions, key=version_tuple), recipe=recipe,
        sections={
            "tokenizer": {"path": TOKENIZER_FILE},
            "features": {"mel_filters": MEL_FILE, "n_mels": shapes["n_mels"], "sample_rate": decoding["sample_rate"],
                         "n_fft": decoding["n_fft"], "hop_length": decoding["hop_length"],
                         "chunk_seconds": decoding["chunk_seconds"]},
            "model": {"architecture": source.spec.architecture, "model_type": "whisper", "source_format": kind, **shapes},
            "decoding": decoding,
        },
        validation={
            "reference": "transformers PyTorch FP32",
            "max_abs_diff": exported["max_abs_diff"],
            "atol": options.atol,
            "inputs": exported["validation_inputs"],
            "note": "max_abs_diff is of the FP32 ONNX graphs; 'eval' compares this package's transcript with theirs "
                    "(`edge-sdk eval PKG --data DIR` measures WER against your transcripts)",
        },
        work_dir=work,
    )


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus")
_CALIBRATION_DECODE_STEPS = 3


def _calibration_feeds(work: Path, mel_file: Path, shapes: dict, decoding: dict, quantization) -> dict[str, list]:
    """Encoder and decoder inputs recorded on real audio: one 30-second window per file (the
    first), then the decoder's prompt prefill and a few greedy decode steps on it, so that the
    decoder is calibrated on decode steps too. Files are taken in sorted order, at most
    ``num_samples`` of them."""
    from edge_sdk.converters.quantize import FeedRecorder
    from edge_sdk.runtimes.audio import AudioSource, log_mel
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState

    root = Path(quantization.calibration)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES) if root.is_dir() else [root]
    files = files[: quantization.num_samples]
    if not files:
        raise InvalidInputError(f"{root} holds no audio files ({', '.join(AUDIO_SUFFIXES)}) to calibrate on")
    filters = np.load(mel_file, allow_pickle=False)
    window = int(decoding["chunk_seconds"]) * decoding["sample_rate"]
    encoder = open_session("onnxruntime", work / ENCODER_FILE)
    encoder_feeds, windows = [], []
    for path in files:
        source = AudioSource.open(path)
        features = log_mel(source.read(0, window), filters, window)[None]
        source.close()
        encoder_feeds.append({"input_features": features})
        windows.append(encoder.run({"input_features": features}))
    del encoder
    recorder = FeedRecorder(open_session("onnxruntime", work / DECODER_FILE))
    graph = DecoderGraph.from_session(recorder, shapes)
    prompt = [decoding["sot"]]
    if decoding["multilingual"] and decoding["languages"]:
        prompt += [decoding["languages"].get("en", next(iter(decoding["languages"].values()))), decoding["transcribe"]]
    for outputs in windows:  # the cross keys/values of a window are shared by its feeds, not copied
        cross = {name: outputs[name] for name in graph.fixed}
        with DecoderState(recorder, graph, fixed=cross) as state:
            token = state.prefill([prompt])[:, -1].argmax(-1)
            for _ in range(_CALIBRATION_DECODE_STEPS):
                token = state.step(token).argmax(-1)
    return {"encoder": encoder_feeds, "decoder": recorder.feeds}
