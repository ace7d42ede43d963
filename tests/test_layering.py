"""The runtime side runs without the conversion stack: no torch, transformers, diffusers, nncf or onnx."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from edge_sdk.converters.registry import supported_architectures
from edge_sdk.converters.tiny import TINY_CONFIGS

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"torch", "transformers", "diffusers", "nncf", "onnx", "onnxscript", "onnx_ir", "safetensors"}

# Runs in a fresh interpreter where importing any forbidden package fails, as on a device
# that installed edge-sdk without the [convert] extra.
_SCRIPT = """
import importlib.abc, json, sys
FORBIDDEN = set(json.loads(sys.argv[2]))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"{name} is not installed on this device")
        if name.startswith("edge_sdk.converters") or _training_side(name):  # the run commands need neither
            raise ImportError(f"{name} is a converter or trainer module, imported on the load path")
def _training_side(name):
    return name.startswith("edge_sdk.distillation.") and name != "edge_sdk.distillation.options"
sys.meta_path.insert(0, Block())
import edge_sdk
from edge_sdk.cli import main
lm = edge_sdk.load(sys.argv[1], threads=1)
text = lm.generate(["Hello", "Once upon a time"], max_new_tokens=8)[1].text
pieces = list(lm.stream("Hello", max_new_tokens=8, temperature=0.7, seed=1))
main(["generate", sys.argv[1], "Hello", "-n", "4"], standalone_mode=False)
main(["generate", sys.argv[1], "--chat", "Hello", "-n", "4"], standalone_mode=False)
main(["chat", sys.argv[1], "-n", "4"], standalone_mode=False)  # reads "Hi" and "/exit" from stdin
main(["inspect", sys.argv[1]], standalone_mode=False)
main(["devices", "list"], standalone_mode=False)
main(["distill", "--help"], standalone_mode=False)  # the CLI's distill help reads the options, torch-free
main(["transcribe", sys.argv[3] + "/speech-recognition", sys.argv[5], "-q"], standalone_mode=False)
main(["sample", sys.argv[3] + "/image-generation", "-o", sys.argv[4] + "/grid.png", "-n", "1", "-s", "2", "-q"], standalone_mode=False)
main(["bench", sys.argv[1], "--min-runs", "1", "--min-seconds", "0", "--new-tokens", "2", "-q"], standalone_mode=False)
from edge_sdk.devices.bench import BenchOptions, measure_package
measured = measure_package(sys.argv[1], BenchOptions(min_runs=2, min_seconds=0, new_tokens=4), 1)
assert measured["runs"] == 2
from pathlib import Path
from edge_sdk.serving.app import ModelSpec, Server
server = Server([ModelSpec("lm", Path(sys.argv[1]))])  # the server's whole stack, loaded and generating
server.hub.load()
assert server.hub.ready.is_set(), server.hub.error
assert server.hub.models["lm"].engine.generate(lm._encode("Hello"), lm.options(max_new_tokens=4), scores=True).logprobs
server.hub.stop()
assert edge_sdk.Cascade(lm, lm, threshold=1.0).generate("Hello", max_new_tokens=2).escalated
main(["serve", "--help"], standalone_mode=False)
main(["cascade", "calibrate", "--help"], standalone_mode=False)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN or m.startswith("edge_sdk.converters") or _training_side(m))
print(json.dumps({"loaded": loaded, "text": text, "pieces": len(pieces)}))
"""


def test_load_generate_and_cli_run_without_the_conversion_stack(tiny_package_dir, tmp_path):
    """generate (and chat), transcribe, sample, bench, inspect and the server's stack (engine, cascade, app) with
    torch & co. and every converter module unimportable."""
    from edge_sdk.devices.bench import SPEECH_SAMPLE

    package = tiny_package_dir("LlamaForCausalLM")
    legacy = ROOT / "tests" / "data" / "legacy-packages"  # a tiny speech and image package each, no export needed
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(package), json.dumps(sorted(FORBIDDEN)), str(legacy), str(tmp_path), str(SPEECH_SAMPLE)],
        capture_output=True,
        text=True,
        timeout=300,
        input="Hi\n/exit\n",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["pieces"] > 0 and report["text"]
    assert (tmp_path / "grid.png").stat().st_size > 0


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):  # includes imports inside functions: lazy imports count too
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtimes_serving_and_devices_source_never_import_the_conversion_stack():
    torch_free = [*(ROOT / "runtimes").rglob("*.py"), *(ROOT / "devices").rglob("*.py"), *(ROOT / "edge_sdk" / "tasks").rglob("*.py"),
                  *(ROOT / "serving").rglob("*.py"), *(ROOT / "edge_sdk" / f"cli_{group}.py" for group in ("serve", "run", "common", "devices")),
                  ROOT / "edge_sdk" / "quantization.py", ROOT / "edge_sdk" / "worker.py", ROOT / "edge_sdk" / "package.py",
                  ROOT / "distillation" / "options.py"]
    for path in torch_free:
        imported = _imports(path)
        bad = {m for m in imported if m.split(".")[0] in FORBIDDEN or m.startswith(("edge_sdk.converters", "edge_sdk.distillation."))
               and m != "edge_sdk.distillation.options"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


# the source folders and the edge_sdk packages they are installed as (pyproject.toml's package-dir)
PACKAGE_DIRS = {"edge_sdk": "edge_sdk", "converters": "edge_sdk.converters", "distillation": "edge_sdk.distillation",
                "runtimes": "edge_sdk.runtimes", "serving": "edge_sdk.serving", "devices": "edge_sdk.devices"}


def _module_graph() -> dict[str, set[str]]:
    """edge_sdk module -> the edge_sdk modules it imports, at its top or inside a function (a
    ``from package import name`` counts as importing the submodule ``name`` when there is one)."""
    files = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            files[".".join([package, *parts])] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    imported.add(target if target in files else base)
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_between_modules_deferred_imports_included():
    graph = _module_graph()
    assert len(graph) > 80 and "edge_sdk.serving.text" in graph["edge_sdk.serving.app"]  # the scan sees the modules
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # and would see a circle
    assert _cycles(graph) == []


def test_every_registered_architecture_has_a_tiny_test_model():
    from edge_sdk.converters.tiny import TINY_SD_UNET, TINY_UNET, TINY_WHISPER

    tiny = set(TINY_CONFIGS) | ({"WhisperForConditionalGeneration"} if TINY_WHISPER else set()) | ({"UNet2DModel"} if TINY_UNET else set())
    tiny |= {"StableDiffusionPipeline"} if TINY_SD_UNET else set()
    missing = set(supported_architectures()) - tiny
    assert not missing, f"registered without a tiny test model (add one to converters/tiny.py): {missing}"


# The lean install (`pip install edge-sdk`): no engine but ONNX Runtime, no audio or image stack.
LEAN_BLOCKED = sorted(FORBIDDEN | {"openvino", "librosa", "scipy", "numba", "llvmlite", "sklearn", "soundfile", "soxr",
                                   "jiwer", "PIL", "matplotlib", "starlette", "uvicorn", "prometheus_client"})
_LEAN_SCRIPT = """
import importlib.abc, json, sys
BLOCKED = set(json.loads(sys.argv[2]))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import click
import numpy as np
import edge_sdk
from edge_sdk.cli import main
from edge_sdk.errors import MissingDependencyError
lm = edge_sdk.load(sys.argv[1], threads=1)
text = lm.generate("Hello", max_new_tokens=4).text
main(["generate", sys.argv[1], "Hello", "-n", "2"], standalone_mode=False)
main(["inspect", sys.argv[1]], standalone_mode=False)
errors = {}
def attempt(kind, call):
    try:
        call()
        errors[kind] = None
    except (MissingDependencyError, click.ClickException) as e:  # the CLI's one-line error for serve
        errors[kind] = str(e) if isinstance(e, MissingDependencyError) else e.format_message()
attempt("openvino", lambda: edge_sdk.load(sys.argv[3], threads=1))
attempt("audio", lambda: edge_sdk.load(sys.argv[4] + "/speech-recognition", threads=1).transcribe(sys.argv[5]))
from edge_sdk.runtimes.images import write_png
attempt("image", lambda: write_png(np.zeros((4, 4, 3), np.uint8), sys.argv[6]))
attempt("serve", lambda: main(["serve", sys.argv[1]], standalone_mode=False))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"loaded": loaded, "errors": errors, "text": text}))
"""


def test_a_text_package_runs_on_the_lean_install_and_each_missing_extra_is_named(tiny_package_dir, package_of, tmp_path):
    """openvino, librosa, scipy, numba, soundfile, soxr, jiwer, Pillow (and the serve stack) unimportable:
    a text package on ONNX Runtime loads and generates; an OpenVINO package, a transcription, a PNG
    and `serve` each fail with the pip install of their extra."""
    from edge_sdk.devices.bench import SPEECH_SAMPLE

    text = tiny_package_dir("LlamaForCausalLM")
    openvino = package_of("LlamaForCausalLM", "openvino", "fp32")
    legacy = ROOT / "tests" / "data" / "legacy-packages"
    done = subprocess.run([sys.executable, "-c", _LEAN_SCRIPT, str(text), json.dumps(LEAN_BLOCKED), str(openvino), str(legacy),
                           str(SPEECH_SAMPLE), str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [] and isinstance(report["text"], str)
    for extra, error in report["errors"].items():
        assert error is not None and f"pip install 'edge-sdk[{extra}]'" in error, (extra, error)
