"""Whisper-family speech recognizers -> an edge package: encoder and decoder graphs, tokenizer,
mel filter bank and decoding facts (see ``whisper_torch`` for the graphs' inputs and outputs).

The PyTorch part (loading any of the three source layouts, export, validation) runs in a child
process; the package's graphs (another runtime or precision) are derived here from the FP32 ones
through the same generic ``target.build_graph`` the text path uses.
"""

from __future__ import annotations

import os
import shutil
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
from edge_sdk.errors import ExportError, InvalidInputError
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
    frames = shapes["source_positions"]
    cross = {name: rng.normal(size=(1, heads, head_dim, frames) if name.endswith(".key") else (1, heads, frames, head_dim))
             .astype(np.float32) for name in encoder_outputs(shapes["num_layers"])}  # keys come transposed
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
    # an OpenAI checkpoint file reads the tokenizer beside it
    inputs = [source.path] if Path(source.path).is_dir() else [source.path, Path(source.path).with_name(TOKENIZER_FILE)]
    exported = run_stage("edge_sdk.converters.whisper_torch:export_fp32", request, work, steps, inputs=inputs)
    shapes, decoding = exported["shapes"], exported["decoding"]
    for name in (TOKENIZER_FILE, MEL_FILE):
        os.replace(work / name, staging / name)
    vad = bundle_vad(staging)

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
            **({"vad": vad} if vad else {}),
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


VAD_DIR = "vad"
# the variant with fixed shapes ([1, 64 + 512] samples, state [2, 1, 128]): ONNX Runtime and OpenVINO both read it
_VAD_MODEL = "silero_vad_openvino_16k.onnx"


def bundle_vad(staging: Path) -> dict | None:
    """Copy the Silero VAD model and its license from the installed ``silero-vad`` pip package (MIT)
    into ``staging/vad``; the manifest's ``vad`` section, or None (and a warning) without the package."""
    import importlib.metadata
    import logging

    try:
        dist = importlib.metadata.distribution("silero-vad")
    except importlib.metadata.PackageNotFoundError:
        logging.getLogger("edge_sdk").warning("silero-vad is not installed: the package gets no voice activity "
                                              "detector (vad_filter); pip install silero-vad")
        return None
    files = {Path(str(f)).name: f for f in dist.files or ()}
    model = files.get(_VAD_MODEL)
    license_file = next((f for name, f in files.items() if name.upper().startswith("LICENSE")), None)
    if model is None or license_file is None:
        raise ExportError(f"silero-vad {dist.version} does not ship {_VAD_MODEL} and a LICENSE; "
                          "install a release that does (pip install 'silero-vad>=5.1')")
    (staging / VAD_DIR).mkdir(exist_ok=True)
    shutil.copyfile(dist.locate_file(model), staging / VAD_DIR / "silero_vad.onnx")
    shutil.copyfile(dist.locate_file(license_file), staging / VAD_DIR / "LICENSE")
    return {"path": f"{VAD_DIR}/silero_vad.onnx", "model": "Silero VAD", "source": f"pip silero-vad {dist.version} ({_VAD_MODEL})",
            "license": _license(dist), "license_file": f"{VAD_DIR}/LICENSE",
            "sample_rate": 16000, "chunk_samples": 512, "context_samples": 64}


def _license(dist) -> str:
    """A distribution's license: its License-Expression, else its OSI classifier (silero-vad: "MIT License")."""
    classifiers = [c.rsplit(" :: ", 1)[-1] for c in dist.metadata.get_all("Classifier") or () if c.startswith("License ::")]
    return dist.metadata.get("License-Expression") or (classifiers[0] if classifiers else dist.metadata.get("License") or "unknown")


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
