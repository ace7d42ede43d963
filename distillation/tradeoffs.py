"""``edge-sdk tradeoffs``: both levers side by side on one device.

Every model (the teacher and each student) is exported at each precision; ready packages (a QAT
student's) are taken as they are. Each package is measured against the *teacher* and benched on
this machine with projection to the device profile (``edge_sdk.devices.bench``). What "against
the teacher" means depends on the kind:

- text: perplexity, KL(teacher || package) and top-1 agreement on held-back text
  (``edge_sdk.evaluation.text_accuracy``, the teacher in PyTorch); speed: decode tokens/s.
- speech: WER against the teacher's transcripts of ``--data`` (its FP32 package's, which the
  export checks against PyTorch) and against the references in transcripts.tsv when there are;
  decoder and total seconds here; speed: real-time factor.
- images: PSNR against the teacher's samples from the same noise at the teacher's steps, each
  package sampled at its own steps (a step-distilled student's are fewer), with the digits judge's
  confidence and coverage where it applies (16x16 single-channel models); speed: seconds per image
  (seconds per step x the package's steps).

The report: one table (JSON, Markdown), one plot (quality against speed and against size, the
Pareto front marked, the profile's budgets drawn), which packages fit, and the best fitting one
(the least loss of quality against the teacher among those that fit).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from edge_sdk.errors import InvalidInputError
from edge_sdk.package import MANIFEST_NAME, write_atomically
from edge_sdk.quantization import RUNTIMES, WEIGHTS

SCHEMA = "edge-sdk-tradeoffs/1"
DECODE = "decode_tokens_per_s"
DIGITS_SIZE = 16  # edge_sdk.evaluation.DigitsJudge's images
_PSNR_IDENTICAL = 100.0  # dB, for images equal bit for bit (the teacher against itself): finite, so JSON and plots take it


@dataclass(frozen=True)
class TradeoffOptions:
    weights: tuple[str, ...] = ("fp32", "int8", "int4")  # precisions every model is exported at
    runtime: str = "onnxruntime"
    windows: int = 16  # held-out windows of 128 tokens measured
    new_tokens: int = 32  # bench: tokens decoded per run
    min_runs: int = 5  # bench: runs per package at least
    threads: int | None = None  # bench threads (None: the profile's, capped at this machine's cores)
    images: int = 32  # image models: samples compared from the same noise
    steps: int | None = None  # image models: the teacher's DDIM steps (None: its own default, 50 unless step-distilled)

    def __post_init__(self):
        if not self.weights or any(w not in WEIGHTS for w in self.weights):
            raise InvalidInputError(f"--weights {','.join(self.weights)}: choose among {', '.join(WEIGHTS)}")
        if self.runtime not in RUNTIMES:
            raise InvalidInputError(f"unknown --runtime '{self.runtime}'; valid: {', '.join(RUNTIMES)}")
        if self.windows < 1 or self.min_runs < 1 or self.images < 1 or (self.steps is not None and self.steps < 1):
            raise InvalidInputError("--windows, --min-runs, --images and --steps must be >= 1")


@dataclass(frozen=True)
class Kind:
    """What quality and speed mean for one kind of model, and which way is better."""

    name: str
    quality: str  # the key of row["quality"] the best fitting package is chosen on
    quality_label: str
    quality_lower_is_better: bool
    speed: str  # the key of row["bench"] with the device's speed figure
    speed_label: str
    speed_higher_is_better: bool


KINDS = {
    "text": Kind("text", "kl_divergence", "KL(teacher || package), nats/token", True,
                 "device_decode_tokens_per_second", "decode tok/s", True),
    "speech": Kind("speech", "wer_vs_teacher", "WER vs the teacher's transcripts (%)", True,
                   "device_real_time_factor", "real-time factor", False),
    "images": Kind("images", "psnr_db", "PSNR vs the teacher's samples (dB)", False,
                   "device_seconds_per_image", "seconds per image", False),
}


def _packages(teacher: Path, students: list[Path], given: list[Path], output: Path, options: TradeoffOptions,
              say: Callable[[str], None]) -> list[tuple[str, str, Path]]:
    """(name, model, package) for every row: exported here (reused when already there) or given."""
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.quantization import QuantizationOptions

    from edge_sdk.converters.sources import weights_sha256

    rows = []
    (output / "packages").mkdir(exist_ok=True)
    roles: list[tuple[str, Path]] = [("teacher", teacher)]
    for student in students:
        role = Path(student).name
        while role in {r for r, _ in roles}:  # two students of one name, or one named "teacher"
            role += "-2"
        roles.append((role, Path(student)))
    for role, model in roles:
        source_sha256 = weights_sha256(model)
        for weights in options.weights:
            name = f"{role}-{weights}"
            package = output / "packages" / name
            if not _reusable(package, source_sha256, options.runtime, weights):
                say(f"exporting {model} at {weights} ...")
                export(model, package, ExportOptions(runtime=options.runtime, quantization=QuantizationOptions(weights=weights)),
                       progress=False, overwrite=True)
            rows.append((name, "teacher" if role == "teacher" else str(model), package))
    for package in given:
        package = Path(package).expanduser()
        if not (package / MANIFEST_NAME).is_file():
            raise InvalidInputError(f"--package {package} is not an edge-sdk package (no {MANIFEST_NAME})")
        rows.append((package.name, json.loads((package / MANIFEST_NAME).read_text())["source"]["model"], package))
    return rows


def _reusable(package: Path, source_sha256: str | None, runtime: str, weights: str) -> bool:
    """A package an earlier run exported here from these very weights, for this engine and precision."""
    try:
        manifest = json.loads((package / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("source", {}).get("weights_sha256") == source_sha256 and manifest["runtime"]["name"] == runtime
            and manifest["precision"]["weights"] == weights)


def run(teacher, students: list, packages: list, device: str, data, output, options: TradeoffOptions | None = None,
        say: Callable[[str], None] = lambda line: None) -> tuple[dict, list[Path]]:
    """Export, measure and bench; write ``tradeoffs.json``, ``.md`` and ``.png`` into ``output``.
    ``data``: held-back text (text), a directory of audio (speech), or None (images).
    Returns the report and the files written."""
    from edge_sdk.devices.bench import BenchOptions, bench
    from edge_sdk.devices.profiles import load_profile
    from edge_sdk.distillation.train import _teacher_path, teacher_kind

    options = options or TradeoffOptions()
    profile = load_profile(device)  # a bad profile fails before the long work
    teacher = _teacher_path(str(teacher))
    kind = KINDS[teacher_kind(teacher)]
    _check_data(kind, data)  # so does missing or empty data
    for student in students:
        if teacher_kind(Path(student)) != kind.name or not any((Path(student) / f).is_file() for f in ("config.json", "model_index.json")):
            raise InvalidInputError(f"--student {student} is not a {kind.name} model directory like the teacher's "
                                    "(a Hugging Face or diffusers directory that edge-sdk distill writes)")
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"-o {output} is a file; pass a directory")
    output.mkdir(parents=True, exist_ok=True)
    rows = _packages(teacher, [Path(s) for s in students], [Path(p) for p in packages], output, options, say)
    say("measuring each package against the teacher ...")
    if kind.name == "text":
        quality = _text_quality(teacher, [package for _, _, package in rows], data, options.windows)
    elif kind.name == "speech":
        quality = _speech_quality(_reference(teacher, rows, output, options, say), [package for _, _, package in rows], data, say)
    else:
        quality = _image_quality(_reference(teacher, rows, output, options, say), [package for _, _, package in rows],
                                 [model == "teacher" for _, model, _ in rows], options)
    say(f"benchmarking {len(rows)} packages, projected to {profile.name} ...")
    benched = bench([str(package) for _, _, package in rows], BenchOptions(threads=options.threads, min_runs=options.min_runs,
                    min_seconds=1.0, new_tokens=options.new_tokens, warmup=1), device=device,
                    progress=lambda package: say(f"  bench {Path(package).name}"))
    report_rows = []
    for (name, model, package), measured, figures in zip(rows, benched["packages"], quality):
        on_device = (measured["projection"] or measured)["metrics"]
        report_rows.append({
            "name": name, "model": model, "package": str(package), "weights": measured["weights"],
            "size_mb": measured["size_mb"], "peak_rss_mb": measured["peak_rss_mb"],
            "quality": figures, "bench": _speed(kind, measured["metrics"], on_device, figures), "fit": measured["fit"],
        })
    _mark_pareto(report_rows, kind)
    fitting = [row for row in report_rows if row["fit"]["verdict"] == "PASS"]
    sign = 1 if kind.quality_lower_is_better else -1
    best = min(fitting, key=lambda row: sign * row["quality"][kind.quality]) if fitting else None
    report = {
        "schema": SCHEMA, "kind": kind.name, "date": benched["date"], "teacher": str(teacher),
        "data": str(data) if data is not None else None,
        "device": benched["device"], "host": benched["host"]["description"], "threads": benched["threads"],
        "options": asdict(options), "budgets": {"ram_mb": profile.ram_budget_bytes / 1e6, **profile.budgets.as_dict()},
        "rows": report_rows, "fitting": [row["name"] for row in fitting], "best": best["name"] if best else None,
    }
    written = [output / "tradeoffs.json", output / "tradeoffs.md", output / "tradeoffs.png"]
    write_atomically(written[0], lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"))
    write_atomically(written[1], lambda tmp: tmp.write_text(markdown(report), encoding="utf-8"))
    plot(report, written[2])
    return report, written


def _check_data(kind: Kind, data) -> None:
    if kind.name == "text":
        from edge_sdk.texts import read_texts

        if data is None:
            raise InvalidInputError("--data is required for a text teacher: held-back text to measure every package on")
        read_texts(data)
    elif kind.name == "speech":
        from edge_sdk.distillation.whisper import audio_dataset

        if data is None:
            raise InvalidInputError("--data is required for a Whisper teacher: a directory of audio (transcripts.tsv optional)")
        audio_dataset(Path(data))
    elif data is not None:
        raise InvalidInputError("an image model is measured on its own samples from fixed noise; drop --data")


def _speed(kind: Kind, here: dict, device: dict, quality: dict) -> dict:
    """The bench figures of a row: the kind's speed here and on the device."""
    if kind.name == "text":
        return {"decode_tokens_per_second": here[DECODE], "first_token_ms": here["first_token_ms"],
                "device_decode_tokens_per_second": device[DECODE], "device_first_token_ms": device["first_token_ms"]}
    if kind.name == "speech":
        return {"real_time_factor": here["real_time_factor"], "device_real_time_factor": device["real_time_factor"],
                "decoder_seconds": here["decoder_seconds"], "encoder_seconds": here["encoder_seconds"]}
    steps = quality["steps"]
    return {"seconds_per_step": here["seconds_per_step"], "device_seconds_per_step": device["seconds_per_step"],
            "steps": steps, "seconds_per_image": here["seconds_per_step"] * steps,
            "device_seconds_per_image": device["seconds_per_step"] * steps}


def _reference(teacher: Path, rows, output: Path, options: TradeoffOptions, say) -> Path:
    """The teacher's FP32 package on this engine: what speech and image packages are compared with."""
    for name, model, package in rows:
        if name == "teacher-fp32":
            return package
    from edge_sdk.converters.export import ExportOptions, export

    package = output / "packages" / "teacher-fp32-reference"
    if not (package / MANIFEST_NAME).is_file():
        say("exporting the teacher at fp32 as the reference ...")
        export(teacher, package, ExportOptions(runtime=options.runtime), progress=False, overwrite=True)
    return package


def _text_quality(teacher: Path, packages: list[Path], data, windows: int) -> list[dict]:
    """Each package against the teacher: the teacher's log-probabilities computed once, spilled, reused."""
    import edge_sdk
    from edge_sdk.converters.causal_lm_torch import model_logits
    from edge_sdk.evaluation import text_accuracy, token_windows
    from edge_sdk.texts import read_texts
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_file(Path(packages[0]) / "tokenizer.json")
    tokens = [t for text in read_texts(data) for t in tokenizer.encode(text)]
    chosen = token_windows(tokens, max_windows=windows)
    teacher_logits = model_logits(teacher)
    cached = [teacher_logits(ids) for ids in chosen]  # a few MB for small vocabularies
    del teacher_logits
    lookup = {tuple(ids): logits for ids, logits in zip(chosen, cached)}
    results = []
    for package in packages:
        accuracy = text_accuracy(lambda p=package: edge_sdk.load(p).logits, chosen, lambda: (lambda ids: lookup[tuple(ids)]))
        results.append({"perplexity": accuracy.perplexity, "teacher_perplexity": accuracy.reference_perplexity,
                        "kl_divergence": accuracy.kl_divergence, "top1_agreement": accuracy.top1_agreement,
                        "tokens": accuracy.tokens})
    return results


def _speech_quality(reference: Path, packages: list[Path], data, say) -> list[dict]:
    """Each package's transcripts of ``data`` against the teacher's (and the given references)."""
    import edge_sdk
    from edge_sdk.distillation.whisper import audio_dataset
    from edge_sdk.evaluation import word_error_rate as _wer

    files, given = audio_dataset(Path(data))

    def transcribe(package: Path) -> tuple[list[str], dict]:
        recognizer = edge_sdk.load(package)
        recognizer.transcribe(files[0])  # warm-up, not timed
        texts, totals = [], {"audio_seconds": 0.0, "total_seconds": 0.0, "decoder_seconds": 0.0, "encoder_seconds": 0.0}
        for path in files:
            result = recognizer.transcribe(path)
            texts.append(result.text)
            for key in totals:
                totals[key] += getattr(result.stats, key)
        return texts, totals

    say(f"  transcribing {len(files)} files with the teacher ({Path(reference).name})")
    done = {Path(reference): transcribe(reference)}
    teacher_texts = done[Path(reference)][0]
    results = []
    for package in packages:
        if Path(package) not in done:
            say(f"  transcribing {len(files)} files with {Path(package).name}")
            done[Path(package)] = transcribe(package)
        texts, totals = done[Path(package)]
        figures = {"wer_vs_teacher": _wer(teacher_texts, texts), "utterances": len(files),
                   "audio_seconds": totals["audio_seconds"], "total_seconds": totals["total_seconds"],
                   "encoder_seconds": totals["encoder_seconds"], "decoder_seconds": totals["decoder_seconds"],
                   "real_time_factor": totals["total_seconds"] / totals["audio_seconds"] if totals["audio_seconds"] else 0.0}
        if given:
            figures["wer"] = _wer([given.get(path, "") for path in files], texts)
            figures["teacher_wer"] = _wer([given.get(path, "") for path in files], teacher_texts)
        results.append(figures)
    return results


def _image_quality(reference: Path, packages: list[Path], teachers: list[bool], options: TradeoffOptions) -> list[dict]:
    """Each package's samples (a student's at its own steps, the teacher's packages at the teacher's)
    against the teacher's FP32 samples from the same noise."""
    import numpy as np

    import edge_sdk
    from edge_sdk.evaluation import DigitsJudge, psnr

    teacher = edge_sdk.load(reference)
    teacher_steps = options.steps or teacher.default_steps
    noise = np.random.default_rng(0).standard_normal(teacher.noise_shape(options.images)).astype(np.float32)
    reference_images = teacher.sample(num_images=options.images, steps=teacher_steps, scheduler="ddim", noise=noise)
    judge = None
    if reference_images.shape[1:] == (DIGITS_SIZE, DIGITS_SIZE, 1):
        judge = DigitsJudge()
    results = []
    for package, is_teacher in zip(packages, teachers):
        generator = edge_sdk.load(package)
        steps = teacher_steps if is_teacher else (generator.distilled_steps or teacher_steps)
        images = generator.sample(num_images=options.images, steps=steps, scheduler="ddim", noise=noise)
        same = bool(np.array_equal(images, reference_images))
        figures = {"psnr_db": _PSNR_IDENTICAL if same else psnr(images, reference_images), "identical": same,
                   "steps": steps, "teacher_steps": teacher_steps, "images": options.images,
                   "seconds_per_image_measured": generator.last_stats.total_seconds / options.images}
        if judge is not None:
            quality, teacher_quality = judge.judge(images), judge.judge(reference_images)
            figures.update(confidence=quality.confidence, coverage=quality.coverage,
                           teacher_confidence=teacher_quality.confidence, teacher_coverage=teacher_quality.coverage)
        results.append(figures)
    return results


def _mark_pareto(rows: list[dict], kind: Kind) -> None:
    """A row is on the front when no other is at least as good in quality, device speed and size, and better in one."""
    quality = 1 if kind.quality_lower_is_better else -1
    speed = -1 if kind.speed_higher_is_better else 1

    def dominates(a, b):
        keys = ((quality * a["quality"][kind.quality], quality * b["quality"][kind.quality]),
                (speed * a["bench"][kind.speed], speed * b["bench"][kind.speed]),
                (a["size_mb"], b["size_mb"]))
        return all(x <= y for x, y in keys) and any(x < y for x, y in keys)

    for row in rows:
        row["pareto"] = not any(dominates(other, row) for other in rows if other is not row)


def _columns(kind: str) -> list[tuple[str, Callable[[dict], str]]]:
    """The kind's own table columns between size and the device's speed."""
    if kind == "text":
        return [("perplexity", lambda r: f"{r['quality']['perplexity']:.3f}"),
                ("KL to teacher", lambda r: f"{r['quality']['kl_divergence']:.4f}"),
                ("top-1 vs teacher", lambda r: f"{r['quality']['top1_agreement']:.1%}"),
                ("decode tok/s here", lambda r: f"{r['bench']['decode_tokens_per_second']:.1f}"),
                ("first token ms on device", lambda r: f"{r['bench']['device_first_token_ms']:.1f}")]
    if kind == "speech":
        return [("WER vs teacher %", lambda r: f"{r['quality']['wer_vs_teacher']:.2f}"),
                ("WER vs references %", lambda r: f"{r['quality']['wer']:.2f}" if "wer" in r["quality"] else "-"),
                ("decoder s here", lambda r: f"{r['quality']['decoder_seconds']:.2f}"),
                ("total s here", lambda r: f"{r['quality']['total_seconds']:.2f}")]
    return [("steps", lambda r: str(r["quality"]["steps"])),
            ("PSNR vs teacher dB", lambda r: "identical" if r["quality"]["identical"] else f"{r['quality']['psnr_db']:.2f}"),
            ("digits confidence %", lambda r: f"{r['quality']['confidence']:.1f}" if "confidence" in r["quality"] else "-"),
            ("classes", lambda r: f"{r['quality']['coverage']}/10" if "coverage" in r["quality"] else "-"),
            ("s/image here", lambda r: f"{r['bench']['seconds_per_image']:.3f}")]


def markdown(report: dict) -> str:
    device = report["device"]
    kind = KINDS[report.get("kind", "text")]
    on = f"{device['name']} ({'projected' if device['projected'] else 'measured'})"
    measured_on = {"text": f"on {report['data']}", "speech": f"on the audio in {report['data']}",
                   "images": f"on {report['options']['images']} samples from the same noise"}[kind.name]
    columns = [("package", lambda r: r["name"]), ("weights", lambda r: r["weights"]),
               ("size MB", lambda r: f"{r['size_mb']:.1f}"), *_columns(kind.name),
               (f"{kind.speed_label} on {on}", lambda r: f"{r['bench'][kind.speed]:.4g}"),
               ("Pareto", lambda r: "yes" if r["pareto"] else ""), ("fits", lambda r: r["fit"]["verdict"])]
    lines = [
        f"# edge-sdk tradeoffs — {report['date']}",
        "",
        f"Teacher {report['teacher']}; quality against it {measured_on}; speed measured on {report['host']} with "
        f"{report['threads']} threads and {'projected to' if device['projected'] else 'judged on'} **{device['name']}**.",
        "",
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in report["rows"]:
        lines.append("| " + " | ".join(cell(row) for _, cell in columns) + " |")
    lines.append("")
    first = report["rows"][0]["quality"] if report["rows"] else {}
    if kind.name == "text" and "teacher_perplexity" in first:
        lines.append(f"Teacher (PyTorch FP32) perplexity on this text: {first['teacher_perplexity']:.3f}.")
    elif kind.name == "speech" and "teacher_wer" in first:
        lines.append(f"Teacher (FP32 package) WER against the references: {first['teacher_wer']:.2f}%.")
    elif kind.name == "images" and "teacher_confidence" in first:
        lines.append(f"Teacher (FP32 package, {first['teacher_steps']} DDIM steps): digits confidence "
                     f"{first['teacher_confidence']:.1f}%, {first['teacher_coverage']}/10 classes.")
    if report["best"]:
        lines.append(f"Fits {device['name']}: {', '.join(report['fitting'])}. **Best fitting: {report['best']}** "
                     f"(the least loss of quality, {kind.quality_label}, among those that fit"
                     + ("; the teacher itself fits, so neither lever is needed on this device)." if report["best"].startswith("teacher-fp32")
                        else ")."))
        sign = -1 if kind.speed_higher_is_better else 1
        fastest = min((r for r in report["rows"] if r["name"] in report["fitting"]), key=lambda r: sign * r["bench"][kind.speed])
        lines.append(f"Fastest fitting: {fastest['name']} ({kind.speed_label} {fastest['bench'][kind.speed]:.4g} on "
                     f"{device['name']}, {kind.quality_label} {fastest['quality'][kind.quality]:.4g}).")
    else:
        lines.append(f"No package fits {device['name']}: " + "; ".join(f"{r['name']}: {r['fit']['reason']}" for r in report["rows"][:3]))
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Quality against the teacher against the device's speed (left) and against package size
    (right), each with the front of that pair of measures (the table's Pareto column weighs all
    three at once)."""
    from edge_sdk.devices.report import pyplot

    kind = KINDS[report.get("kind", "text")]
    plt = pyplot("plotting the tradeoffs")
    rows = report["rows"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    markers = {"fp32": "o", "fp16": "D", "int8": "s", "int4": "^"}
    budgets = report["budgets"]
    quality_sign = 1 if kind.quality_lower_is_better else -1
    for axis, key in zip(axes, ("device", "size")):
        points = []
        for row in rows:
            x = row["bench"][kind.speed] if key == "device" else row["size_mb"]
            y = row["quality"][kind.quality]
            if not math.isfinite(y):
                continue
            points.append((x, y, row))
            axis.scatter(x, y, marker=markers.get(row["weights"], "o"), s=60,
                         color="tab:green" if row["fit"]["verdict"] == "PASS" else "tab:red", zorder=3)
            axis.annotate(row["name"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        larger = key == "device" and kind.speed_higher_is_better  # better is a larger x (speed) or a smaller one (size, time)

        def better_or_equal(q, p):
            return (q[0] >= p[0] if larger else q[0] <= p[0]) and quality_sign * q[1] <= quality_sign * p[1]

        front = sorted((p for p in points if not any(better_or_equal(q, p) and (q[0] != p[0] or q[1] != p[1]) for q in points)),
                       key=lambda p: p[0])
        if front:
            axis.plot([p[0] for p in front], [p[1] for p in front], "--", color="gray", lw=1, label="Pareto front (these two)",
                      zorder=2)
        budget = {"text": budgets.get("text_decode_tokens_per_s"), "speech": budgets.get("speech_real_time_factor"),
                  "images": None}[kind.name]
        if key == "device" and budget:
            axis.axvline(budget, color="tab:orange", lw=1, label="budget")
        if key == "size":
            axis.axvline(budgets["ram_mb"], color="tab:orange", lw=1, label="RAM budget")
            axis.set_xscale("log")
        label = f"{kind.speed_label} on {report['device']['name']}" if key == "device" else "package size (MB)"
        axis.set_xlabel(label + (" (projected)" if key == "device" and report["device"]["projected"] else ""))
        axis.set_ylabel(kind.quality_label + (" (lower is better)" if kind.quality_lower_is_better else " (higher is better)"))
        axis.legend(fontsize=8)
    figure.suptitle(f"distillation vs quantization on {report['device']['name']} (green: fits, red: does not)", fontsize=10)
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


__all__ = ["KINDS", "TradeoffOptions", "run", "markdown", "plot"]
