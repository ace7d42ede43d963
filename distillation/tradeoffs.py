"""``edge-sdk tradeoffs``: both levers side by side on one device.

Every model (the teacher and each student) is exported at each precision; ready packages (a QAT
student's) are taken as they are. Each package is measured against the *teacher* on held-back
text (perplexity, KL(teacher || package), top-1 agreement: ``edge_sdk.evaluation.text_accuracy``)
and benched on this machine with projection to the device profile (``edge_sdk.devices.bench``).
The report: one table (JSON, Markdown), one plot (quality against decode speed and against size,
the Pareto front marked, the profile's budgets drawn), which packages fit, and the best fitting
one (the lowest KL to the teacher among those that fit).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from edge_sdk.errors import InvalidInputError
from edge_sdk.package import MANIFEST_NAME, write_atomically
from edge_sdk.quantization import RUNTIMES, WEIGHTS

SCHEMA = "edge-sdk-tradeoffs/1"
DECODE = "decode_tokens_per_s"


@dataclass(frozen=True)
class TradeoffOptions:
    weights: tuple[str, ...] = ("fp32", "int8", "int4")  # precisions every model is exported at
    runtime: str = "onnxruntime"
    windows: int = 16  # held-out windows of 128 tokens measured
    new_tokens: int = 32  # bench: tokens decoded per run
    min_runs: int = 5  # bench: runs per package at least
    threads: int | None = None  # bench threads (None: the profile's, capped at this machine's cores)

    def __post_init__(self):
        if not self.weights or any(w not in WEIGHTS for w in self.weights):
            raise InvalidInputError(f"--weights {','.join(self.weights)}: choose among {', '.join(WEIGHTS)}")
        if self.runtime not in RUNTIMES:
            raise InvalidInputError(f"unknown --runtime '{self.runtime}'; valid: {', '.join(RUNTIMES)}")
        if self.windows < 1 or self.min_runs < 1:
            raise InvalidInputError("--windows and --min-runs must be >= 1")


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
    Returns the report and the files written."""
    from edge_sdk.converters.sources import resolve_model_dir
    from edge_sdk.devices.bench import BenchOptions, bench
    from edge_sdk.devices.profiles import load_profile
    from edge_sdk.evaluation import read_texts

    options = options or TradeoffOptions()
    profile = load_profile(device)  # a bad profile fails before the long work
    read_texts(data)  # so does missing or empty data
    teacher = resolve_model_dir(str(teacher))
    for student in students:
        if not (Path(student) / "config.json").is_file():
            raise InvalidInputError(f"--student {student} is not a Hugging Face model directory (no config.json)")
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"-o {output} is a file; pass a directory")
    output.mkdir(parents=True, exist_ok=True)
    rows = _packages(teacher, [Path(s) for s in students], [Path(p) for p in packages], output, options, say)
    say("measuring each package against the teacher ...")
    quality = _quality(teacher, [package for _, _, package in rows], data, options.windows)
    say(f"benchmarking {len(rows)} packages, projected to {profile.name} ...")
    benched = bench([str(package) for _, _, package in rows], BenchOptions(threads=options.threads, min_runs=options.min_runs,
                    min_seconds=1.0, new_tokens=options.new_tokens, warmup=1), device=device,
                    progress=lambda package: say(f"  bench {Path(package).name}"))
    report_rows = []
    for (name, model, package), measured, figures in zip(rows, benched["packages"], quality):
        on_device = measured["projection"] or measured
        report_rows.append({
            "name": name, "model": model, "package": str(package), "weights": measured["weights"],
            "size_mb": measured["size_mb"], "peak_rss_mb": measured["peak_rss_mb"],
            "quality": figures,
            "bench": {"decode_tokens_per_second": measured["metrics"][DECODE],
                      "first_token_ms": measured["metrics"]["first_token_ms"],
                      "device_decode_tokens_per_second": on_device["metrics"][DECODE],
                      "device_first_token_ms": on_device["metrics"]["first_token_ms"]},
            "fit": measured["fit"],
        })
    _mark_pareto(report_rows)
    fitting = [row for row in report_rows if row["fit"]["verdict"] == "PASS"]
    best = min(fitting, key=lambda row: row["quality"]["kl_divergence"]) if fitting else None
    report = {
        "schema": SCHEMA, "date": benched["date"], "teacher": str(teacher), "data": str(data),
        "device": benched["device"], "host": benched["host"]["description"], "threads": benched["threads"],
        "options": asdict(options), "budgets": {"ram_mb": profile.ram_budget_bytes / 1e6, **profile.budgets.as_dict()},
        "rows": report_rows, "fitting": [row["name"] for row in fitting], "best": best["name"] if best else None,
    }
    written = [output / "tradeoffs.json", output / "tradeoffs.md", output / "tradeoffs.png"]
    write_atomically(written[0], lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"))
    write_atomically(written[1], lambda tmp: tmp.write_text(markdown(report), encoding="utf-8"))
    plot(report, written[2])
    return report, written


def _quality(teacher: Path, packages: list[Path], data, windows: int) -> list[dict]:
    """Each package against the teacher: the teacher's log-probabilities computed once, spilled, reused."""
    import edge_sdk
    from edge_sdk.converters.causal_lm_torch import model_logits
    from edge_sdk.evaluation import read_texts, text_accuracy, token_windows
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


def _mark_pareto(rows: list[dict]) -> None:
    """A row is on the front when no other is at least as good in KL, device decode speed and size, and better in one."""
    def dominates(a, b):
        keys = ((a["quality"]["kl_divergence"], b["quality"]["kl_divergence"]),
                (-a["bench"]["device_decode_tokens_per_second"], -b["bench"]["device_decode_tokens_per_second"]),
                (a["size_mb"], b["size_mb"]))
        return all(x <= y for x, y in keys) and any(x < y for x, y in keys)

    for row in rows:
        row["pareto"] = not any(dominates(other, row) for other in rows if other is not row)


def markdown(report: dict) -> str:
    device = report["device"]
    on = f"{device['name']} ({'projected' if device['projected'] else 'measured'})"
    lines = [
        f"# edge-sdk tradeoffs — {report['date']}",
        "",
        f"Teacher {report['teacher']}; quality against it on {report['data']}; speed measured on {report['host']} with "
        f"{report['threads']} threads and {'projected to' if device['projected'] else 'judged on'} **{device['name']}**.",
        "",
        f"| package | weights | size MB | perplexity | KL to teacher | top-1 vs teacher | decode tok/s here | decode tok/s on {on} | first token ms on device | Pareto | fits |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        q, b = row["quality"], row["bench"]
        lines.append(f"| {row['name']} | {row['weights']} | {row['size_mb']:.1f} | {q['perplexity']:.3f} | {q['kl_divergence']:.4f} | "
                     f"{q['top1_agreement']:.1%} | {b['decode_tokens_per_second']:.1f} | {b['device_decode_tokens_per_second']:.1f} | "
                     f"{b['device_first_token_ms']:.1f} | {'yes' if row['pareto'] else ''} | {row['fit']['verdict']} |")
    teacher_ppl = next((r["quality"]["teacher_perplexity"] for r in report["rows"]), None)
    lines += ["", f"Teacher (PyTorch FP32) perplexity on this text: {teacher_ppl:.3f}." if teacher_ppl else ""]
    if report["best"]:
        lines.append(f"Fits {device['name']}: {', '.join(report['fitting'])}. **Best fitting: {report['best']}** "
                     "(the least loss of quality, KL to the teacher, among those that fit"
                     + ("; the teacher itself fits, so neither lever is needed on this device)." if report["best"].startswith("teacher-fp32")
                        else ")."))
        fastest = max((r for r in report["rows"] if r["name"] in report["fitting"]),
                      key=lambda r: r["bench"]["device_decode_tokens_per_second"])
        lines.append(f"Fastest fitting: {fastest['name']} ({fastest['bench']['device_decode_tokens_per_second']:.1f} tok/s on "
                     f"{device['name']}, KL to the teacher {fastest['quality']['kl_divergence']:.4f}).")
    else:
        lines.append(f"No package fits {device['name']}: " + "; ".join(f"{r['name']}: {r['fit']['reason']}" for r in report["rows"][:3]))
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """KL to the teacher against device decode speed (left) and against package size (right), each
    with the front of that pair of measures (the table's Pareto column weighs all three at once)."""
    from edge_sdk.devices.report import pyplot

    plt = pyplot("plotting the tradeoffs")
    rows = report["rows"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    markers = {"fp32": "o", "fp16": "D", "int8": "s", "int4": "^"}
    budgets = report["budgets"]
    for axis, (key, label) in zip(axes, (("device", f"decode tok/s on {report['device']['name']}"), ("size", "package size (MB)"))):
        points = []
        for row in rows:
            x = row["bench"]["device_decode_tokens_per_second"] if key == "device" else row["size_mb"]
            y = row["quality"]["kl_divergence"]
            points.append((x, y, row))
            axis.scatter(x, y, marker=markers.get(row["weights"], "o"), s=60,
                         color="tab:green" if row["fit"]["verdict"] == "PASS" else "tab:red", zorder=3)
            axis.annotate(row["name"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        faster = key == "device"  # better is a larger x (speed) or a smaller one (size)
        front = sorted((p for p in points if not any(
            (q[0] >= p[0] if faster else q[0] <= p[0]) and q[1] <= p[1] and (q[0] != p[0] or q[1] != p[1]) for q in points)),
            key=lambda p: p[0])
        if front:
            axis.plot([p[0] for p in front], [p[1] for p in front], "--", color="gray", lw=1, label="Pareto front (these two)",
                      zorder=2)
        if key == "device" and budgets.get("text_decode_tokens_per_s"):
            axis.axvline(budgets["text_decode_tokens_per_s"], color="tab:orange", lw=1, label="decode budget")
        if key == "size":
            axis.axvline(budgets["ram_mb"], color="tab:orange", lw=1, label="RAM budget")
            axis.set_xscale("log")
        axis.set_xlabel(label + (" (projected)" if key == "device" and report["device"]["projected"] else ""))
        axis.set_ylabel("KL(teacher || package), nats/token (lower is better)")
        axis.legend(fontsize=8)
    figure.suptitle(f"distillation vs quantization on {report['device']['name']} (green: fits, red: does not)", fontsize=10)
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


__all__ = ["TradeoffOptions", "run", "markdown", "plot"]
