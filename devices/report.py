"""Reports of ``edge-sdk bench``: a Markdown table, a PNG plot (matplotlib), the JSON as is.

Projected figures carry "(projected)" in the Markdown and hatched bars in the plot; measured
figures are never replaced by them.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_sdk.package import write_atomically
from edge_sdk.tasks import get_task


def _task_figures(row: dict, metrics: dict) -> str:
    return get_task(row["task"]).figures(metrics)


def markdown(report: dict) -> str:
    device = report["device"]
    host = report["host"]
    lines = [
        f"# edge-sdk bench — {report['date']}",
        "",
        f"Host: {host['description']} ({', '.join(host['cpu']['isa'])}), {report['threads']} threads, "
        f"memory bandwidth {host['memory']['bandwidth_gbps']} GB/s (measured).",
        f"Device profile: **{device['name']}**" + (" — figures below the measured ones are **projected** to it, not measured."
                                                    if device["projected"] else " (this machine: all figures measured)."),
        "",
        "| package | task | runtime / weights | size MB | load s | peak RSS MB | latency p50 / p90 / p99 ms | task figures | runs | fit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["packages"]:
        lat = row["latency_ms"]
        name = Path(row["package"]).name
        lines.append(
            f"| {name} | {row['task']} | {row['runtime']} {row['weights']} | {row['size_mb']:.1f} | {row['load_seconds']:.2f} | "
            f"{row['peak_rss_mb']:.0f} | {lat['p50']:.1f} / {lat['p90']:.1f} / {lat['p99']:.1f} | "
            f"{_task_figures(row, row['metrics'])} | {row['runs']} | "
            f"{'' if row['projection'] else row['fit']['verdict']} |")
        if row["projection"]:
            p = row["projection"]["latency_ms"]
            lines.append(
                f"| {name} (projected to {device['name']}) | | | | | | {p['p50']:.1f} / {p['p90']:.1f} / {p['p99']:.1f} (projected) | "
                f"{_task_figures(row, row['projection']['metrics'])} (projected) | | {row['fit']['verdict']} |")
    remote = report.get("remote")
    if remote:
        where = remote["measured_on"]
        lines += ["", f"Measured on **{where['remote']}** ({where['host']}, {remote['threads']} threads) — remote, measured there:", "",
                  "| package | load s | peak RSS MB | latency p50 / p90 / p99 ms | task figures | runs |", "|---|---|---|---|---|---|"]
        for row in remote["packages"]:
            lat = row["latency_ms"]
            lines.append(f"| {Path(row['package']).name} (measured on {where['remote']}) | {row['load_seconds']:.2f} | "
                         f"{row['peak_rss_mb']:.0f} | {lat['p50']:.1f} / {lat['p90']:.1f} / {lat['p99']:.1f} | "
                         f"{_task_figures(row, row['metrics'])} | {row['runs']} |")
        for error in report.get("projection_error", []):
            lines.append(f"- projection error, {Path(error['package']).name}: projected p50 {error['projected_p50_ms']:.1f} ms, "
                         f"measured {error['measured_p50_ms']:.1f} ms ({error['error']:+.0%})")
    lines += ["", "Fit:"]
    for row in report["packages"]:
        lines.append(f"- {Path(row['package']).name}: **{row['fit']['verdict']}** — {row['fit']['reason']}")
    projected = [row["projection"]["model"] for row in report["packages"] if row["projection"]]
    if projected:
        lines += ["", f"Projection model (first-order, not a measurement): {projected[0]}."]
    return "\n".join(lines) + "\n"


def pyplot(purpose: str):
    """matplotlib.pyplot on the file-only Agg backend, or the error naming the [report] extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        from edge_sdk.errors import missing_extra

        raise missing_extra("matplotlib", "report", purpose) from e
    return plt


def plot(report: dict, path: Path) -> None:
    """Latency distribution per package (box plot of every run) and the task metric per package."""
    plt = pyplot("plotting bench reports")
    rows = report["packages"]
    names = [Path(r["package"]).name for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(rows) + 4), 4.5))
    left.boxplot([r["latencies_ms"] for r in rows], showfliers=True)
    left.set_xticks(range(1, len(rows) + 1), names, rotation=20, ha="right")
    left.set_ylabel("latency per run (ms, measured)")
    left.set_title("latency distribution")
    positions = list(range(len(rows)))
    labels = []
    for i, row in enumerate(rows):
        headline = get_task(row["task"]).headline
        key = headline.key
        labels.append(f"{headline.label} ({headline.direction})")
        right.bar(i - 0.2 if row["projection"] else i, row["metrics"][key], width=0.4, color="tab:blue",
                  label="measured" if i == 0 else None)
        if row["projection"]:
            right.bar(i + 0.2, row["projection"]["metrics"][key], width=0.4, color="white", edgecolor="tab:orange",
                      hatch="//", label=f"projected to {report['device']['name']}" if i == 0 else None)
    right.set_xticks(positions, names, rotation=20, ha="right")
    right.set_title("; ".join(sorted(set(labels))))
    right.legend()
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


def check_report_target(directory: Path) -> None:
    """Raise now if ``write_reports`` could not write to ``directory`` (no matplotlib, no parent)."""
    from edge_sdk.errors import InvalidInputError, missing_extra

    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"--report {directory} is a file; pass a directory")
    if not directory.exists() and not directory.parent.is_dir():
        raise InvalidInputError(f"cannot create {directory}: directory {directory.parent} does not exist")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise missing_extra("matplotlib", "report", "plotting bench reports")


def write_reports(report: dict, directory: Path) -> list[Path]:
    """bench.json, bench.md and bench.png in ``directory`` (created), each written atomically."""
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "bench.json", directory / "bench.md", directory / "bench.png"]
    write_json(report, written[0])
    write_atomically(written[1], lambda tmp: tmp.write_text(markdown(report), encoding="utf-8"))
    plot(report, written[2])
    return written


def write_json(report: dict, path: Path) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"))
