"""The command line: the journey end to end, and one-line errors with a non-zero exit for bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

import edge_sdk
from edge_sdk.cli import main
from edge_sdk.package import MANIFEST_NAME


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_export_inspect_generate(tiny_model_dir, tmp_path):
    out = tmp_path / "pkg"
    result = run("export", tiny_model_dir("GPT2LMHeadModel"), "-o", out, "--task", "text-generation", "-q")
    assert result.exit_code == 0, result.output
    assert f"Wrote text-generation package {out}" in result.stdout
    assert (out / MANIFEST_NAME).is_file()

    result = run("inspect", out)
    assert result.exit_code == 0, result.output
    for expected in ("text-generation", "GPT2LMHeadModel", "decoder.onnx", "checksums verified", "max_abs_diff"):
        assert expected in result.stdout
    manifest = json.loads(run("inspect", out, "--json").stdout)
    assert manifest["task"] == "text-generation"

    result = run("generate", out, "Hello world", "--max-new-tokens", "12", "--seed", "3")
    assert result.exit_code == 0, result.output
    expected = edge_sdk.load(out).generate("Hello world", max_new_tokens=12).text
    assert result.stdout == expected + "\n"
    assert "tok/s" in result.stderr

    sampled = run("generate", out, "Hello world", "-n", "12", "-t", "0.9", "--seed", "5", "--no-stats")
    again = run("generate", out, "Hello world", "-n", "12", "-t", "0.9", "--seed", "5", "--no-stats")
    assert sampled.exit_code == 0 and sampled.stdout == again.stdout and sampled.stderr == ""

    from_stdin = run("generate", out, "-", "-n", "12", input="Hello world")
    assert from_stdin.stdout == result.stdout


def test_export_errors_are_one_line(tmp_path):
    assert_one_line_error(run("export", tmp_path / "missing", "-o", tmp_path / "o", "-q"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("export", tmp_path / "empty", "-o", tmp_path / "o", "-q"), "no config.json")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text('{"architectures": ["T5ForConditionalGeneration"]}')
    assert_one_line_error(run("export", tmp_path / "t5", "-o", tmp_path / "o", "-q"), "T5ForConditionalGeneration", "supported:")
    assert_one_line_error(run("export", tmp_path / "t5", "-o", tmp_path / "o", "--task", "summarization", "-q"), "unknown task")
    assert not (tmp_path / "o").exists()


def test_failed_export_leaves_no_output_directory(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir("LlamaForCausalLM"), tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"not safetensors")
    assert_one_line_error(run("export", model, "-o", tmp_path / "out", "-q"), "cannot load")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_export_refuses_to_replace_without_overwrite(tiny_package_dir, tiny_model_dir, tmp_path):
    out = shutil.copytree(tiny_package_dir("LlamaForCausalLM"), tmp_path / "pkg")
    assert_one_line_error(run("export", tiny_model_dir("LlamaForCausalLM"), "-o", out, "-q"), "--overwrite")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["", "-n", "5"], "prompt is empty"),
        (["Hello", "-n", "0"], "max_new_tokens must be at least 1"),
        (["Hello", "-t", "-0.5"], "temperature must be"),
        (["Hello", "--top-p", "1.5"], "top_p must be in (0, 1]"),
    ],
)
def test_generate_bad_input_is_one_line(tiny_package_dir, args, fragment):
    result = run("generate", tiny_package_dir("LlamaForCausalLM"), *args)
    assert_one_line_error(result, fragment)
    assert result.stdout == ""


def test_tampered_and_missing_graph_name_the_file(llama_package_copy):
    graph = llama_package_copy / "decoder.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    assert_one_line_error(run("generate", llama_package_copy, "Hello"), "decoder.onnx", "sha256")
    assert_one_line_error(run("inspect", llama_package_copy), "decoder.onnx")
    graph.unlink()
    assert_one_line_error(run("generate", llama_package_copy, "Hello"), "decoder.onnx is missing")


def test_newer_format_version_is_one_line(llama_package_copy):
    path = llama_package_copy / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    assert_one_line_error(run("generate", llama_package_copy, "Hello"), "format version 99", "upgrade")


def test_debug_shows_the_traceback(tmp_path):
    result = run("--debug", "inspect", tmp_path / "missing")
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "PackageError"


def test_help_has_examples():
    for command in ("export", "inspect", "generate"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Examples:" in result.stdout
