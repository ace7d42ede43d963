"""Human-readable rendering of a package's manifest (``edge-sdk inspect``)."""

from __future__ import annotations

from typing import Any

from edge_sdk.package import Package


def _shape(shape: list) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "-"
    return "-" if value is None else str(value)


def render_manifest(package: Package, verified: bool):
    """A rich renderable summarizing the package: overview, graphs, files, accuracy."""
    from rich.console import Group
    from rich.table import Table

    m = package.manifest
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column()
    source = m.get("source", {})
    precision = m.get("precision", {})
    rows = [
        ("package", str(package.root)),
        ("task", package.task + (f" (written as {m['task']})" if m["task"] != package.task else "")),
        ("format", f"version {m['format_version']}, written by edge-sdk {m.get('edge_sdk_version', '?')} at {m.get('created', '?')}"),
        ("source", f"{source.get('model', '?')} ({source.get('architecture', '?')})"),
        ("source weights sha256", source.get("weights_sha256") or "-"),
        ("runtime", f"{m['runtime']['name']} >= {m['runtime'].get('min_version', '?')}"),
        ("precision", f"weights {precision.get('weights', '?')}, activations {precision.get('activations', '?')}"),
        ("recipe", _recipe_line(precision.get("recipe"))),
        ("size", f"{_size(package.size_bytes)} in {len(m['files'])} files ({'checksums verified' if verified else 'not verified'})"),
    ]
    for graph in m["graphs"]:
        fusions = graph.get("fusions") or {}
        if fusions.get("applied") or fusions.get("rejected"):
            text = _fmt(fusions.get("applied") or {}) if fusions.get("applied") else f"none kept: {fusions['rejected']}"
            rows.append((f"{graph['role']} fusions", text))
    for key in ("model", "generation"):
        if key in m:
            rows.append((key, _fmt({k: v for k, v in m[key].items()})))
    if m.get("task") == "text-generation" and "tokenizer" in m:
        template = m["tokenizer"].get("chat_template")
        rows.append(("chat", f"template {template} (edge-sdk chat, generate --chat)" if template
                     else "no chat template: plain completion only"))
    for name, value in rows:
        overview.add_row(name, value)

    graphs = Table(title="graphs", title_justify="left", show_edge=False)
    for column in ("role", "file", "opset", "inputs", "outputs"):
        graphs.add_column(column)
    for graph in m["graphs"]:
        graphs.add_row(
            graph["role"],
            graph["path"] + (f" (+{len(graph['external_data'])} data file(s))" if graph.get("external_data") else ""),
            str(graph.get("opset", "?")),
            _io_summary(graph.get("inputs", [])),
            _io_summary(graph.get("outputs", [])),
        )

    files = Table(title="files", title_justify="left", show_edge=False)
    for column in ("path", "size", "sha256"):
        files.add_column(column)
    for entry in m["files"]:
        files.add_row(entry["path"], _size(int(entry["size"])), entry["sha256"][:16] + "…")

    parts = [overview, graphs, files]
    layers = (precision.get("recipe") or {}).get("layers")
    if layers:
        table = Table(title="quantized layers (read from the written graph)", title_justify="left", show_edge=False)
        for column in ("layer kind", "count", "op", "bits", "group size", "input channels"):
            table.add_column(column)
        for kind, entry in layers.items():
            group = entry.get("group_size")
            table.add_row(kind, str(entry.get("count")), entry.get("op", "?"), _fmt(entry.get("bits")),
                          "per-channel" if group == -1 else _fmt(group), _fmt(entry.get("in_channels")))
        parts.append(table)
    if m.get("accuracy"):
        accuracy = Table(title="accuracy (measured at export)", title_justify="left", show_edge=False)
        accuracy.add_column("measure")
        accuracy.add_column("value")
        for name, value in m["accuracy"].items():
            if isinstance(value, dict) and name == "eval":
                for key, item in value.items():
                    accuracy.add_row(f"eval: {key}", _fmt(item))
            elif isinstance(value, dict) and name == "measured_on":  # the numerics those figures hold for
                accuracy.add_row("measured on", _numerics(value))
            elif isinstance(value, dict) and name == "on_devices":  # `eval --device` figures, one row per profile
                for profile, record in value.items():
                    figures = ", ".join(f"{k} {_fmt(v)}" for k, v in (record.get("eval") or {}).items()
                                        if k in ("kl_divergence", "top1_agreement", "perplexity", "wer"))
                    accuracy.add_row(f"on {profile}", f"{figures} ({_numerics(record.get('measured_on') or {})})")
            else:
                accuracy.add_row(name, _fmt(value))
        parts.append(accuracy)
    return Group(*parts)


def _numerics(on: dict) -> str:
    how = on.get("emulated") or (f"on {on['remote']}" if on.get("remote") else "")
    return (f"{on.get('cpu', '?')}: {on.get('int8_path', '?')} int8 kernels, {on.get('engine', '?')}"
            + (f", {how}" if how else ""))


def _recipe_line(recipe: dict | None) -> str:
    if not recipe:
        return "-"
    options = recipe.get("options", {})
    shown = {k: v for k, v in options.items() if v not in (None, False) and k != "weights"}
    return f"{recipe.get('tool', '?')}; " + ", ".join(f"{k} {v}" for k, v in shown.items())


def _io_summary(tensors: list[dict]) -> str:
    """Collapse numbered cache tensors: ``past_key_values.{0..29}.key`` instead of 30 lines."""
    groups: dict[str, list] = {}
    for tensor in tensors:
        parts = tensor["name"].split(".")
        key = ".".join("{i}" if p.isdigit() else p for p in parts)
        groups.setdefault(key, []).append(tensor)
    lines = []
    for key, members in groups.items():
        first = members[0]
        label = key.replace("{i}", f"{{0..{len(members) - 1}}}") if len(members) > 1 else first["name"]
        lines.append(f"{label} {first['dtype']} {_shape(first['shape'])}")
    return "\n".join(lines)
