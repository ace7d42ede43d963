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
    with pytest.raises(UnsupportedArchitectureError, match="BertForMaskedLM: an encoder-only model"):
        export(model, tmp_path / "out", progress=False)
    (model / "config.json").write_text(json.dumps({"architectures": ["FancyNetForMagic"], "model_type": "fancy"}))
    with pytest.raises(UnsupportedArchitectureError, match="FancyNetForMagic.*supported: GPT2LMHeadModel, GPTNeoXForCausalLM, Gemma2ForCausalLM"):
        export(model, tmp_path / "out", progress=False)


_SENTINEL = "remote-code-ran"


@pytest.mark.parametrize("config, message", [
    ({"architectures": ["BertForMaskedLM"], "model_type": "bert"}, "an encoder-only model"),
    ({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True}, "an encoder-decoder model"),
    ({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}, "keeps a recurrent state"),
    ({"architectures": ["LlamaModel"], "model_type": "llama"}, "without a language-modelling head"),
    ({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3"}, "a multimodal model"),
    ({"architectures": ["EvilForCausalLM"], "model_type": "evil",
      "auto_map": {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}},
     "edge-sdk never runs a model's own code"),
])
def test_models_that_cannot_be_text_generation_fail_in_one_line_and_run_no_code(config, message, tmp_path):
    from click.testing import CliRunner

    from edge_sdk.cli import main

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    # a model's own code, which must never be imported: it would leave a file behind
    (model / "modeling_evil.py").write_text(f"open({str(tmp_path / _SENTINEL)!r}, 'w').write('ran')\n")
    result = CliRunner().invoke(main, ["export", str(model), "-o", str(tmp_path / "out"), "--task", "text-generation", "-q"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and config["architectures"][0] in lines[0], result.output
    assert not (tmp_path / _SENTINEL).exists() and _nothing_written(tmp_path, "out")


def test_bf16_sharded_checkpoint_of_an_unlisted_family_exports_generically(tmp_path):
    """Real checkpoints ship bf16 and in shards with an index; a transformers-native *ForCausalLM
    the registry does not list (Starcoder2) goes through the same generic path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import edge_sdk
    from edge_sdk.converters.registry import ARCHITECTURES
    from edge_sdk.converters.tiny import build_causal_lm

    assert "Starcoder2ForCausalLM" not in ARCHITECTURES
    source = build_causal_lm("Starcoder2ForCausalLM", tmp_path / "fp32", config_overrides=dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, initializer_range=0.5, sliding_window=None))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    shards = tmp_path / "bf16-sharded"
    model.save_pretrained(shards, max_shard_size="40KB")
    AutoTokenizer.from_pretrained(source).save_pretrained(shards)
    assert (shards / "model.safetensors.index.json").is_file() and len(list(shards.glob("model-*.safetensors"))) > 2

    package = export(shards, tmp_path / "pkg", progress=False)
    lm = edge_sdk.load(package)
    assert lm.package.manifest["model"]["architecture"] == "Starcoder2ForCausalLM"
    reference = AutoModelForCausalLM.from_pretrained(shards, dtype=torch.float32).eval()  # bf16 weights, fp32 math
    tokenizer = AutoTokenizer.from_pretrained(shards)
    inputs = tokenizer("The quick brown fox", return_tensors="pt")
    expected = reference.generate(**inputs, max_new_tokens=24, min_new_tokens=24, do_sample=False)[0, inputs.input_ids.shape[1]:]
    result = lm.generate("The quick brown fox", max_new_tokens=24, ignore_eos=True)
    assert result.token_ids == expected.tolist() and len(set(result.token_ids)) > 5


def test_unknown_task_and_bad_atol_are_refused():
    with pytest.raises(InvalidInputError, match="unknown task 'summarization'; supported: automatic-speech-recognition, text-generation, text-to-image, unconditional-image-generation"):
        ExportOptions(task="summarization")
    with pytest.raises(InvalidInputError, match="atol"):
        ExportOptions(atol=0)


def test_corrupt_weights_fail_and_leave_nothing(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir("LlamaForCausalLM"), tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="transformers cannot load"):
        export(model, tmp_path / "out", progress=False)
    assert _nothing_written(tmp_path, "out")


def test_validation_failure_lists_mismatches_and_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from edge_sdk.converters import stage

    cache = tmp_path / "cache"  # its own: other tests (other workers) add entries to the session's
    monkeypatch.setenv(stage.CACHE_VARIABLE, str(cache))
    with pytest.raises(ValidationError) as error:
        export(tiny_model_dir("GPT2LMHeadModel"), tmp_path / "out", ExportOptions(atol=1e-15), progress=False)
    message = str(error.value)
    assert "prefill: logits" in message and "max abs diff" in message
    assert _nothing_written(tmp_path, "out")
    assert cache.is_dir() and not [p for p in cache.iterdir() if not p.name.startswith(".")]  # a failed export is not kept


def test_export_cache_reuses_the_validated_graph_of_the_same_bytes(tiny_model_dir, tiny_package_dir, tmp_path, monkeypatch,
                                                                   export_cache):
    """A second export of the same model (here: a copy elsewhere) takes the FP32 graph from
    $EDGE_SDK_EXPORT_CACHE instead of running torch.export; other bytes or settings are another key."""
    from safetensors.numpy import load_file, save_file

    from edge_sdk import worker
    from edge_sdk.converters import stage

    first = Package.open(tiny_package_dir("GPT2LMHeadModel"))  # exported, and kept, once this session
    model = shutil.copytree(tiny_model_dir("GPT2LMHeadModel"), tmp_path / "moved")
    targets, real = [], worker.run
    monkeypatch.setattr(worker, "run", lambda target, *a, **k: targets.append(target) or real(target, *a, **k))
    again = Package.open(export(model, tmp_path / "again", progress=False))
    assert targets == ["edge_sdk.evaluation:text_package_accuracy"]  # no torch stage ran
    assert {f["path"]: f["sha256"] for f in again.manifest["files"]} == {f["path"]: f["sha256"] for f in first.manifest["files"]}
    assert again.manifest["accuracy"]["max_abs_diff"] == first.manifest["accuracy"]["max_abs_diff"]

    key = stage._key("edge_sdk.converters.causal_lm_torch:export_fp32", {"model_dir": str(model), "atol": 1e-3}, [model])
    assert key != stage._key("edge_sdk.converters.causal_lm_torch:export_fp32", {"model_dir": str(model), "atol": 1e-4}, [model])
    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    assert key != stage._key("edge_sdk.converters.causal_lm_torch:export_fp32", {"model_dir": str(model), "atol": 1e-3}, [model])
    monkeypatch.delenv(stage.CACHE_VARIABLE)
    assert stage._cache_dir() is None  # off unless asked for


def test_two_exports_of_the_same_model_at_once_run_the_torch_stage_once(tmp_path, monkeypatch):
    """Two exports of the same bytes at once (two test workers, or a user's two precisions side by
    side) take turns on the cache entry: the torch stage runs once, and the other export reuses
    what it stored instead of running torch.export beside it."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from edge_sdk import worker
    from edge_sdk.converters import stage
    from edge_sdk.progress import Steps

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"the same bytes")
    monkeypatch.setenv(stage.CACHE_VARIABLE, str(tmp_path / "cache"))
    ran, inside, most = [], [0], [0]
    lock = threading.Lock()

    def slow_stage(target, request, work, on_step, **_):  # stands in for the child process running torch.export
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        on_step("exporting")
        time.sleep(0.5)
        work.mkdir(parents=True, exist_ok=True)
        (work / "graph.onnx").write_bytes(b"graph")
        ran.append(target)
        with lock:
            inside[0] -= 1
        return {"shapes": [1]}

    monkeypatch.setattr(worker, "run", slow_stage)

    def export_once(name: str):
        with Steps(total=1, enabled=False) as steps:
            return stage.run_stage("some.module:export", {"model_dir": str(model)}, tmp_path / name, steps, inputs=[model])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(export_once, ["a", "b"]))
    assert ran == ["some.module:export"] and most[0] == 1  # once, and never two at a time
    assert results == [{"shapes": [1]}] * 2
    assert (tmp_path / "a" / "graph.onnx").read_bytes() == (tmp_path / "b" / "graph.onnx").read_bytes() == b"graph"


def test_export_cache_block_turns_the_cache_on_and_leaves_a_users_own(tmp_path, monkeypatch):
    """``stage.export_cache()`` (what quickstart exports its FP32 and INT8 packages under): a
    temporary cache for the block, removed after, unless the user set $EDGE_SDK_EXPORT_CACHE."""
    from edge_sdk.converters import stage

    monkeypatch.delenv(stage.CACHE_VARIABLE, raising=False)
    with stage.export_cache() as cache:
        assert stage._cache_dir() == cache and cache.is_dir()
        (cache / "entry").mkdir()
    assert stage._cache_dir() is None and not cache.exists()
    mine = tmp_path / "mine"
    monkeypatch.setenv(stage.CACHE_VARIABLE, str(mine))
    with stage.export_cache(tmp_path / "other") as cache:
        assert cache == mine
    assert stage._cache_dir() == mine


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
