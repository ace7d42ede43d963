"""The task registry: every task is complete, and a new task is one module — bench, its reports,
projection, fit, load() and inspect handle it without edits anywhere else."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edge_sdk
from edge_sdk.cli import main
from edge_sdk.devices.profiles import load_profile, shipped_profiles
from edge_sdk.tasks import Budget, Metric, Projection, Task, get_task, load_attribute, register, tasks, unregister

TOY_MODULE = textwrap.dedent('''
    """A toy task: a graph that doubles a vector. One module, one registration."""
    import time

    import numpy as np

    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.tasks import Budget, Metric, Projection, Task, register

    RATE = Metric("vectors_per_s", "vectors/s", "vectors/s", higher_is_better=True)


    class Doubler:
        def __init__(self, package, threads=None):
            self.package = package
            self._session = open_session(package.runtime, package.graph_path("model"), threads)

        def double(self, x):
            return self._session.run({"x": np.asarray(x, np.float32)})["y"]


    def workload(model, options):
        x = np.arange(4, dtype=np.float32)[None]

        def run():
            start = time.perf_counter()
            assert (model.double(x) == 2 * x).all()
            return {RATE.key: 1 / max(time.perf_counter() - start, 1e-9)}

        return run, {"vector": 4}


    TASK = register(Task(
        name="toy-doubling", summary="double a vector", runtime="toy_task:Doubler", headline=RATE, metrics=(RATE,),
        workload=workload, figures=lambda m: f"{m[RATE.key]:.0f} vectors/s",
        projection=Projection(compute_bound=(RATE.key,)), budgets=(Budget("toy_vectors_per_s", RATE),),
        command="double", try_it="python -c 'import edge_sdk; print(edge_sdk.load(\\"{path}\\").double([1]))'",
    ))
''')


@pytest.fixture
def toy_task(tmp_path, monkeypatch):
    """The toy task's module on the import path (this process and bench's worker processes), registered."""
    (tmp_path / "toy_task.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    import toy_task

    yield toy_task.TASK
    unregister("toy-doubling")
    sys.modules.pop("toy_task", None)


def _toy_package(root: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    from edge_sdk.package import write_manifest

    root.mkdir()
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / "model.onnx")
    io = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
          "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}]}
    write_manifest(root, {"task": "toy-doubling", "source": {"model": "hand-made"}, "runtime": {"name": "onnxruntime"},
                          "precision": {"weights": "fp32"}, "graphs": [{"role": "model", "path": "model.onnx", **io}],
                          "accuracy": {"eval": {"summary": "exact by construction", "max_error": 0.0}}})
    return root


def test_a_new_task_is_one_module_and_everything_handles_it(toy_task, tmp_path):
    from edge_sdk.devices.bench import BenchOptions, bench
    from edge_sdk.devices.report import markdown, write_reports

    package = _toy_package(tmp_path / "toy")
    assert np.array_equal(edge_sdk.load(package).double([[1, 2, 3, 4]]), [[2, 4, 6, 8]])

    # a profile may set the new task's budget; the shipped Pi 5 profile plus that line
    profile = tmp_path / "pi5-toy.toml"
    profile.write_text(load_profile("raspberry-pi-5").to_toml().replace("[budgets]\n", "[budgets]\ntoy_vectors_per_s = 1e12\n"))
    report = bench([str(package)], BenchOptions(min_runs=2, min_seconds=0, warmup=0), device=str(profile))
    row = report["packages"][0]
    assert row["task"] == "toy-doubling" and row["runs"] >= 2 and row["metrics"]["vectors_per_s"] > 0
    # projected to the Pi (a rate: divided by the compute ratio) and judged on the toy budget
    projection = row["projection"]
    assert projection["metrics"]["vectors_per_s"] == pytest.approx(row["metrics"]["vectors_per_s"] / projection["compute_ratio"])
    check = next(c for c in row["fit"]["checks"] if c["check"] == "vectors_per_s")
    assert check["ok"] is False and "< target 1e+12" in check["detail"] and row["fit"]["verdict"] == "FAIL"
    text = markdown(report)
    assert "toy-doubling" in text and "vectors/s (projected)" in text
    written = write_reports(report, tmp_path / "report")
    assert all(p.stat().st_size > 0 for p in written)

    shown = CliRunner().invoke(main, ["inspect", str(package)])
    assert shown.exit_code == 0, shown.output
    assert "toy-doubling" in shown.output and "exact by construction" in shown.output
    # another command's package gets a clear error naming the command that runs it
    refused = CliRunner().invoke(main, ["generate", str(package), "Hello"])
    assert refused.exit_code != 0 and "toy-doubling package" in refused.output and "edge-sdk double" in refused.output


def test_a_task_lacking_a_part_is_refused_at_registration():
    rate = Metric("x_per_s", "x/s", "x/s", True)
    complete = dict(name="incomplete", summary="s", runtime="m:C", headline=rate, metrics=(rate,), workload=lambda m, o: None,
                    figures=str, projection=Projection(compute_bound=("x_per_s",)), command="c", try_it="t")
    for part in ("runtime", "workload", "command", "try_it"):
        with pytest.raises(TypeError, match=f"lacks {part}"):
            register(Task(**{**complete, part: ""}))
    with pytest.raises(TypeError, match="headline metric must be one of its metrics"):
        register(Task(**{**complete, "headline": Metric("other", "o", "o", True)}))
    with pytest.raises(TypeError, match="unknown metrics: missing"):
        register(Task(**{**complete, "budgets": (Budget("b", Metric("missing", "m", "m", True)),)}))
    with pytest.raises(TypeError, match="already taken by text-generation"):
        register(Task(**{**complete, "aliases": ("text-generation",)}))
    assert "incomplete" not in [t.name for t in tasks()]


def test_every_registered_task_is_complete_and_every_shipped_profile_budgets_it():
    names = [t.name for t in tasks()]
    assert names == ["automatic-speech-recognition", "text-generation", "text-to-image", "unconditional-image-generation"]
    for task in tasks():
        assert isinstance(task.runtime_class(), type)
        for target in (task.exporter, task.accuracy):  # named parts resolve (the convert extra is installed here)
            assert target and callable(load_attribute(target)), f"{task.name}: {target}"
        for budget in task.budgets:
            for name in shipped_profiles():
                assert load_profile(name).budgets.target(budget.key) is not None, f"{name} lacks budgets.{budget.key}"


def test_old_task_names_resolve_and_unknown_ones_list_the_available():
    assert get_task("speech-recognition").name == "automatic-speech-recognition"
    assert get_task("image-generation").name == "unconditional-image-generation"
    with pytest.raises(edge_sdk.EdgeSDKError, match="task 'summarization' is not supported.*text-generation"):
        get_task("summarization")


def test_profile_with_an_unknown_budget_names_it(tmp_path):
    from edge_sdk.devices.profiles import ProfileError

    path = tmp_path / "typo.toml"
    path.write_text(load_profile("raspberry-pi-5").to_toml().replace("[budgets]\n", "[budgets]\ntext_decode_tokens_per_sec = 3\n"))
    with pytest.raises(ProfileError, match="unknown budget.*text_decode_tokens_per_sec; valid: max_ram_share, .*text_decode_tokens_per_s"):
        load_profile(path)
    assert json.loads(json.dumps(load_profile("raspberry-pi-5").as_dict()))["budgets"]["speech_real_time_factor"] == 0.5
