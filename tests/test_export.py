"""Export: model sources, refused inputs, validation, external data, nothing half-written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

import edge_sdk
from edge_sdk.converters.export import ExportOptions, export
from edge_sdk.errors import ChecksumError, InvalidInputError, ModelLoadError, UnsupportedArchitectureError, ValidationError
from edge_sdk.package import Package


def _nothing_written(parent, name):
    return not any(p.name == name or p.name.startswith(f".{name}.") for p in parent.iterdir())


def test_missing_path_and_non_model_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        export(tmp_path / "no-such-model", tmp_path / "out", progress=False)
    (tmp_path / "notes").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        export(tmp_path / "notes", tmp_path / "out", progress=False)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        export(tmp_path / "file.bin", tmp_path / "out", progress=False)
    assert _nothing_written(tmp_path, "out")


def test_hub_id_without_network_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not be fetched from the Hugging Face Hub"):
        export("edge-sdk-tests/definitely-not-cached", tmp_path / "out", progress=False)


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(UnsupportedArchitectureError, match="BertForMaskedLM.*supported: GPT2LMHeadModel, LlamaForCausalLM"):
        export(model, tmp_path / "out", progress=False)


def test_unknown_task_and_bad_atol_are_refused():
    with pytest.raises(InvalidInputError, match="unknown task 'summarization'; supported: automatic-speech-recognition, text-generation, unconditional-image-generation"):
        ExportOptions(task="summarization")
    with pytest.raises(InvalidInputError, match="atol"):
        ExportOptions(atol=0)


def test_corrupt_weights_fail_and_leave_nothing(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir("LlamaForCausalLM"), tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="transformers cannot load"):
        export(model, tmp_path / "out", progress=False)
    assert _nothing_written(tmp_path, "out")


def test_validation_failure_lists_mismatches_and_leaves_nothing(tiny_model_dir, tmp_path):
    with pytest.raises(ValidationError) as error:
        export(tiny_model_dir("GPT2LMHeadModel"), tmp_path / "out", ExportOptions(atol=1e-15), progress=False)
    message = str(error.value)
    assert "prefill: logits" in message and "max abs diff" in message
    assert _nothing_written(tmp_path, "out")


def test_weights_are_external_data_and_checksummed(tiny_package_dir, tmp_path):
    package = Package.open(tiny_package_dir("LlamaForCausalLM"))
    assert package.graph("decoder")["external_data"] == ["decoder.onnx.data"]
    assert "decoder.onnx.data" in {f["path"] for f in package.manifest["files"]}
    proto = onnx.load(str(package.root / "decoder.onnx"), load_external_data=False)
    import math

    def size(init):
        return math.prod(init.dims)

    external = sum(size(i) for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL)
    assert external >= 0.95 * sum(size(i) for i in proto.graph.initializer)  # the weights live outside the graph
    assert not [i.name for i in proto.graph.initializer if size(i) >= 64 * 64 and i.data_location != onnx.TensorProto.EXTERNAL]
    copy = shutil.copytree(package.root, tmp_path / "pkg")
    data = copy / "decoder.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\x00\x00\x80\x7f")  # last float becomes +inf
    with pytest.raises(ChecksumError, match="decoder.onnx.data"):
        edge_sdk.load(copy)


def test_tied_embedding_is_stored_once(tiny_model_dir, tiny_package_dir):
    """The LM head of a tied model reuses the embedding through a Transpose, not a second copy."""
    from safetensors.numpy import load_file

    weights = load_file(tiny_model_dir("LlamaForCausalLM") / "model.safetensors")
    embedding = weights["model.embed_tokens.weight"]
    proto = onnx.load(str(tiny_package_dir("LlamaForCausalLM") / "decoder.onnx"))
    shapes = {embedding.shape, embedding.shape[::-1]}
    copies = [init for init in proto.graph.initializer if tuple(init.dims) in shapes]
    assert len(copies) == 1
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(copies[0]), embedding)
