"""The package format: checksums, format versions, path safety, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edge_sdk
from edge_sdk.errors import (
    ChecksumError,
    OutputExistsError,
    PackageError,
    PackageVersionError,
    UnsafePathError,
)
from edge_sdk.package import FORMAT_VERSION, MANIFEST_NAME, Package, staged_output, write_manifest


def _edit_manifest(package: Path, edit) -> None:
    path = package / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_manifest_describes_the_package(tiny_package_dir):
    package = Package.open(tiny_package_dir("LlamaForCausalLM"))
    m = package.manifest
    assert m["format_version"] == FORMAT_VERSION
    assert m["task"] == "text-generation"
    assert m["source"]["architecture"] == "LlamaForCausalLM" and len(m["source"]["weights_sha256"]) == 64
    assert {f["path"] for f in m["files"]} == {"decoder.onnx", "decoder.onnx.data", "tokenizer.json", "chat_template.jinja"}
    decoder = package.graph("decoder")
    # attention over a preallocated cache: per-row cached lengths instead of an attention mask
    names = [i["name"] for i in decoder["inputs"]]
    assert decoder["kv_cache"] == "shared" and names[:2] == ["input_ids", "position_ids"]
    assert names[-2:] == ["seqlens_k", "total_sequence_length"] and "attention_mask" not in names
    assert decoder["inputs"][0]["shape"] == ["batch", "sequence"]
    assert decoder["inputs"][2]["name"] == "past_key_values.0.key" and decoder["inputs"][2]["shape"][2] == "cache_capacity"
    assert m["accuracy"]["max_abs_diff"]["logits"] < 1e-4
    assert m["generation"]["eos_token_ids"] and m["generation"]["pad_token_id"] is not None
    # the oldest ONNX Runtime that runs its operators (measured: converters.onnxruntime_engine.ORT_OP_FLOORS), not ours
    assert m["runtime"] == {"name": "onnxruntime", "min_version": "1.18"}


def test_tampered_graph_is_refused_naming_the_file(llama_package_copy):
    graph = llama_package_copy / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="decoder.onnx does not match its sha256"):
        edge_sdk.load(llama_package_copy)


def test_truncated_and_missing_files_are_refused(llama_package_copy):
    tokenizer = llama_package_copy / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:100])
    with pytest.raises(ChecksumError, match="tokenizer.json is 100 bytes"):
        edge_sdk.load(llama_package_copy)
    tokenizer.unlink()
    with pytest.raises(ChecksumError, match="tokenizer.json is missing"):
        edge_sdk.load(llama_package_copy)


def test_newer_format_version_is_refused_with_upgrade_advice(llama_package_copy):
    _edit_manifest(llama_package_copy, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(PackageVersionError, match="pip install -U edge-sdk"):
        edge_sdk.load(llama_package_copy)


@pytest.mark.parametrize("bad_path", ["../outside.onnx", "/etc/passwd", "sub/../../x"])
def test_manifest_paths_cannot_escape_the_package(llama_package_copy, bad_path):
    def edit(m):
        m["files"].append({"path": bad_path, "sha256": "0" * 64, "size": 1})

    _edit_manifest(llama_package_copy, edit)
    with pytest.raises(UnsafePathError):
        edge_sdk.load(llama_package_copy)


def test_symlink_out_of_the_package_is_refused(llama_package_copy, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (llama_package_copy / "link.json").symlink_to(outside)

    def edit(m):
        m["files"].append({"path": "link.json", "sha256": "0" * 64, "size": 2})

    _edit_manifest(llama_package_copy, edit)
    with pytest.raises(UnsafePathError, match="resolves outside"):
        edge_sdk.load(llama_package_copy)


def test_graph_not_in_the_checksummed_list_is_refused(llama_package_copy):
    def edit(m):
        m["files"] = [f for f in m["files"] if f["path"] != "decoder.onnx"]

    _edit_manifest(llama_package_copy, edit)
    with pytest.raises(PackageError, match="not in its checksummed file list"):
        edge_sdk.load(llama_package_copy)


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"), ('{"task": "x"}', "lacks format_version")],
)
def test_malformed_manifest_is_refused(llama_package_copy, content, message):
    (llama_package_copy / MANIFEST_NAME).write_text(content)
    with pytest.raises(PackageError, match=message):
        edge_sdk.load(llama_package_copy)


def test_unknown_task_and_runtime_are_refused(llama_package_copy):
    _edit_manifest(llama_package_copy, lambda m: m.update(task="text-to-video"))
    with pytest.raises(PackageError, match="task 'text-to-video' is not supported"):
        edge_sdk.load(llama_package_copy)
    _edit_manifest(llama_package_copy, lambda m: m.update(task="text-generation", runtime={"name": "tensorrt"}))
    with pytest.raises(PackageError, match="runtime 'tensorrt'"):
        edge_sdk.load(llama_package_copy)


def test_engine_older_than_the_package_needs_is_refused(llama_package_copy):
    _edit_manifest(llama_package_copy, lambda m: m["runtime"].update(min_version="99.0"))
    with pytest.raises(PackageError, match="needs onnxruntime >= 99.0.*pip install -U onnxruntime"):
        edge_sdk.load(llama_package_copy)


def test_not_a_package(tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        edge_sdk.load(tmp_path / "missing")
    with pytest.raises(PackageError, match="not an edge-sdk package"):
        edge_sdk.load(tmp_path)


def test_staged_output_leaves_nothing_on_failure_and_keeps_the_old_package(tmp_path):
    out = tmp_path / "pkg"
    with staged_output(out) as staging:
        (staging / "a.txt").write_text("one")
        write_manifest(staging, {"task": "t", "runtime": {"name": "onnxruntime"}, "graphs": []})
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with staged_output(out, overwrite=True) as staging:
            (staging / "a.txt").write_text("two")
            raise RuntimeError("export failed half way")
    assert (out / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no .partial leftovers


def test_output_that_is_not_a_package_is_never_replaced(tmp_path):
    user_dir = tmp_path / "documents"
    user_dir.mkdir()
    (user_dir / "thesis.tex").write_text("precious")
    with pytest.raises(OutputExistsError, match="not an edge-sdk package"):
        with staged_output(user_dir, overwrite=True):
            pass
    assert (user_dir / "thesis.tex").read_text() == "precious"
    with pytest.raises(OutputExistsError, match="is a file"):
        with staged_output(user_dir / "thesis.tex", overwrite=True):
            pass


def test_existing_package_needs_overwrite(tmp_path):
    out = tmp_path / "pkg"
    for content in ("one", "two"):
        with staged_output(out, overwrite=content == "two") as staging:
            (staging / "a.txt").write_text(content)
            write_manifest(staging, {"task": "t", "runtime": {"name": "onnxruntime"}, "graphs": []})
    assert (out / "a.txt").read_text() == "two"
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with staged_output(out):
            pass


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_every_file_of_every_package_kind_is_readable_per_the_umask(tiny_package_dir, package_of, whisper_packages,
                                                                     unet_package):
    """0666 / 0777 minus the umask (0644 / 0755 here) for every file and directory, whatever the
    engine's writer did (ONNX Runtime writes external data 0600): a package copied with cp -a,
    rsync -a or tar is readable by another user on the device."""
    packages = [tiny_package_dir("LlamaForCausalLM"), package_of("LlamaForCausalLM", "onnxruntime", "int4"),
                package_of("LlamaForCausalLM", "openvino", "fp32"), whisper_packages["int8"], unet_package]
    mask = _umask()
    seen = set()
    for package in packages:
        for path in [Path(package), *Path(package).rglob("*")]:
            expected = (0o777 if path.is_dir() else 0o666) & ~mask
            assert path.stat().st_mode & 0o777 == expected, (path, oct(path.stat().st_mode & 0o777), oct(expected))
            seen.add(path.suffix)
    assert {".data", ".onnx", ".xml", ".bin", ".json", ".npy"} <= seen  # every kind of file the writers make


def test_staged_output_gives_the_umask_modes_to_files_the_writer_made_private(tmp_path):
    import os

    previous = os.umask(0o027)
    try:
        with staged_output(tmp_path / "pkg") as staging:
            (staging / "graph.onnx.data").write_bytes(b"weights")
            os.chmod(staging / "graph.onnx.data", 0o600)
            (staging / "sub").mkdir(mode=0o700)
            (staging / "sub" / "x.json").write_text("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "pkg" / "graph.onnx.data").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "pkg" / "sub").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "pkg" / "sub" / "x.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "pkg").stat().st_mode & 0o777 == 0o750


def test_accuracy_records_its_numerics_and_inspect_warns_on_another_int8_path(package_of, tmp_path):
    """The manifest says which CPU int8 path and engine the accuracy was measured with; a quantized
    package run where that path differs gets a warning from inspect and bench (not from FP32 ones)."""
    import shutil

    from click.testing import CliRunner

    from edge_sdk.cli import main
    from edge_sdk.devices.numerics import this_machine

    source = package_of("LlamaForCausalLM", "onnxruntime", "int4")
    recorded = Package.open(source).manifest["accuracy"]["measured_on"]
    here = this_machine("onnxruntime")
    assert recorded["int8_path"] == here["int8_path"] and recorded["engine"] == here["engine"]
    assert "int8 kernels" in CliRunner().invoke(main, ["inspect", str(source)]).output
    assert "warning" not in CliRunner().invoke(main, ["inspect", str(source)]).output  # measured on this very path
    package = Path(shutil.copytree(source, tmp_path / "pkg"))
    _edit_manifest(package, lambda m: m["accuracy"]["measured_on"].update(int8_path="arm64 NEON (no dot product)",
                                                                          cpu="Cortex-A72"))
    done = CliRunner().invoke(main, ["inspect", str(package)])
    assert done.exit_code == 0 and "warning" in done.output and "Cortex-A72" in done.output and "edge-sdk eval" in done.output
    _edit_manifest(package, lambda m: m["precision"].update(weights="fp32", activations="fp32"))
    assert "warning" not in CliRunner().invoke(main, ["inspect", str(package)]).output  # FP32 has no int8 path
