"""Which ONNX Runtime releases run each kind of package: the evidence behind `runtime.min_version`.

    python benchmarks/engine_floors.py PKG [PKG ...] [--versions 1.17.3,1.18.1,...] [--out out/engine-floors]

For each release, a venv (numpy < 2 for releases before 1.19, which predate numpy 2's ABI) with
that onnxruntime from PyPI; in it, every graph of every package is loaded and run once on inputs
built from the graph's own input metadata (a 4-token prompt into an empty cache of 8 positions for
decoders; zeros elsewhere), and its outputs are compared with this environment's onnxruntime on the
same inputs. A release "runs" a graph when it loads it, runs it, and agrees within 1e-3 (relative
to the outputs' scale). Prints, per package, the contrib operators it uses and the oldest release
from which every later one tested runs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

DEFAULT_VERSIONS = "1.17.3,1.18.1,1.19.2,1.20.1,1.21.1,1.22.1,1.23.2,1.24.4,1.25.1,1.26.0,1.28.0,1.30.0,1.32.0"

# runs inside each venv: onnxruntime and numpy only
PROBE = r'''
import json, sys
import numpy as np
import onnxruntime as ort

def feeds(session):
    out = {}
    for i in session.get_inputs():
        kind = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float16)": np.float16}.get(i.type, np.float32)
        name = i.name
        if name == "input_ids":
            out[name] = np.array([[1, 5, 9, 3]], dtype=kind)
            continue
        if name == "position_ids":
            out[name] = np.arange(4, dtype=kind)[None]
            continue
        if name == "attention_mask":
            out[name] = np.ones((1, 4), dtype=kind)
            continue
        if name == "seqlens_k":
            out[name] = np.array([3], dtype=kind)
            continue
        if name == "total_sequence_length":
            out[name] = np.array(4, dtype=kind)
            continue
        shape = []
        for axis, dim in enumerate(i.shape):
            if isinstance(dim, int):
                shape.append(dim)
            elif name.startswith("past") and axis == 2:
                shape.append(8 if any(x.name == "seqlens_k" for x in session.get_inputs()) else 0)
            else:
                shape.append(1)
        rng = np.random.default_rng(0)
        if name in ("timestep",):
            out[name] = np.full(shape, 10, dtype=kind)
        elif kind in (np.int64, np.int32):
            out[name] = np.zeros(shape, dtype=kind)
        else:
            out[name] = rng.standard_normal(shape).astype(kind) * (0.0 if name.startswith("past") else 1.0)
    return out

results = {}
for path in sys.argv[1:]:
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, feeds(session))
        first = [o for o in outputs if o.dtype.kind == "f"][0]
        results[path] = {"ok": True, "output": first.astype(np.float64).ravel()[:4096].tolist()}
    except Exception as e:
        results[path] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:240]}"}
print(json.dumps({"version": ort.__version__, "results": results}))
'''


def environment(version: str, root: Path) -> Path:
    target = root / f"ort-{version}"
    python = target / "bin" / "python"
    if not python.exists():
        venv.create(target, with_pip=True)
        major, minor = (int(x) for x in version.split(".")[:2])
        numpy = "numpy<2" if (major, minor) < (1, 19) else "numpy"
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"onnxruntime=={version}", numpy], check=True)
    return python


def graphs_of(package: Path) -> list[Path]:
    manifest = json.loads((package / "manifest.json").read_text())
    return [package / g["path"] for g in manifest["graphs"] if str(g["path"]).endswith(".onnx")]


def contrib_ops(graph: Path) -> list[str]:
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    ops = set()
    for node in model.graph.node:
        if node.domain == "com.microsoft":
            bits = next((a.i for a in node.attribute if a.name == "bits"), None)
            ops.add(node.op_type + (f"({bits}-bit)" if bits else ""))
    return sorted(ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--versions", default=DEFAULT_VERSIONS)
    parser.add_argument("--out", type=Path, default=Path("out/engine-floors"))
    parser.add_argument("--venvs", type=Path, default=Path(tempfile.gettempdir()) / "edge-sdk-ort-versions")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.venvs.mkdir(parents=True, exist_ok=True)
    graphs = [g for p in args.packages for g in graphs_of(p)]
    probe = args.out / "probe.py"
    probe.write_text(PROBE)
    reference = json.loads(subprocess.run([sys.executable, str(probe), *map(str, graphs)], capture_output=True, text=True,
                                          check=True).stdout)["results"]
    runs = {}
    for version in args.versions.split(","):
        python = environment(version, args.venvs)
        done = subprocess.run([str(python), str(probe), *map(str, graphs)], capture_output=True, text=True)
        if done.returncode != 0:
            runs[version] = {str(g): {"ok": False, "error": (done.stderr.strip().splitlines() or ["crashed"])[-1][:240]} for g in graphs}
            continue
        results = json.loads(done.stdout)["results"]
        for graph, result in results.items():
            if result["ok"] and reference[graph]["ok"]:
                import numpy as np

                a, b = np.array(result.pop("output")), np.array(reference[graph]["output"])
                scale = max(1.0, float(np.abs(b).max()))
                difference = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
                result["agrees"] = difference <= 1e-3 * scale
                result["difference"] = difference
            else:
                result.pop("output", None)
        runs[version] = results
        print(version, {Path(g).parent.name + "/" + Path(g).name: ("ok" if r.get("ok") and r.get("agrees") else
                                                                     r.get("error") or f"differs {r.get('difference'):.2g}")
                        for g, r in results.items()}, flush=True)
    summary = {}
    versions = args.versions.split(",")
    for package in args.packages:
        mine = [str(g) for g in graphs_of(package)]
        good = [all(runs[v][g].get("ok") and runs[v][g].get("agrees") for g in mine) for v in versions]
        floor = None
        for i in range(len(versions)):
            if all(good[i:]):
                floor = versions[i]
                break
        summary[str(package)] = {"contrib_ops": sorted({op for g in graphs_of(package) for op in contrib_ops(g)}),
                                 "oldest_release_that_runs_it": floor,
                                 "runs": dict(zip(versions, good))}
        print(f"{package}: {summary[str(package)]['contrib_ops']} -> from {floor}", flush=True)
    (args.out / "floors.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
