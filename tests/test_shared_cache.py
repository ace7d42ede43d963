"""ONNX Runtime packages run attention over a preallocated KV cache (GroupQueryAttention, past and
present one buffer): the same logits and tokens as the unfused graph torch exported, on left-padded
batches, past a sliding window and past the end of the buffer; reset between generations."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edge_sdk
from edge_sdk.runtimes.backend import open_session
from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState

PROMPTS = ["Hello", "Edge devices run small models: laptops, Raspberry Pis and NPUs. The capital of France is Paris;"]


@pytest.fixture(scope="module")
def unfused(tiny_model_dir, tmp_path_factory):
    """architecture -> (session, graph) of the FP32 graph torch.export wrote, before any rewrite."""
    from edge_sdk.converters.causal_lm_torch import export_fp32
    from edge_sdk.converters.registry import lookup

    made = {}

    def get(architecture: str):
        if architecture not in made:
            work = tmp_path_factory.mktemp(f"unfused-{architecture}")
            config = json.loads((tiny_model_dir(architecture) / "config.json").read_text())
            spec = lookup(config["architectures"], str(tiny_model_dir(architecture)), config)
            exported = export_fp32({"model_dir": str(tiny_model_dir(architecture)), "architecture": architecture,
                                    "work": str(work), "atol": 1e-3, "attention": spec.attention}, lambda *a: None)
            session = open_session("onnxruntime", work / "decoder.onnx")
            made[architecture] = (session, DecoderGraph.from_session(session, exported["shapes"]), work, exported["shapes"])
        return made[architecture]

    return get


def test_shared_cache_graph_matches_the_unfused_graph_past_the_window_and_the_buffer_end(tiny_package_dir, unfused):
    """Mistral: every layer has an 8-token sliding window, inside the kernel; the parity tests hold
    every family's shared-cache graph to transformers."""
    architecture = "MistralForCausalLM"
    lm = edge_sdk.load(tiny_package_dir(architecture))
    entry = lm.package.graph("decoder")
    names = [i["name"] for i in entry["inputs"]]
    assert entry["kv_cache"] == "shared" and entry["fusions"]["applied"]["group_query_attention"] == 2
    assert "seqlens_k" in names and "attention_mask" not in names
    session, graph, _, shapes = unfused(architecture)
    assert not graph.shared_cache and graph.has_mask
    ids = [lm.tokenizer.encode(p) for p in PROMPTS]  # a left-padded batch: row 0 is mostly padding
    window = shapes["sliding_window"]
    assert window is not None and len(ids[1]) > window
    with lm.decoder() as fast, DecoderState(session, graph) as reference:
        capacity = len(ids[1]) + 3  # the buffer ends 3 tokens into the generation
        ours, theirs = fast.prefill(ids, capacity=capacity), reference.prefill(ids)
        assert fast.capacity == capacity
        for row, prompt in enumerate(ids):  # every real position of every row; padding is not compared
            np.testing.assert_allclose(ours[row, -len(prompt):], theirs[row, -len(prompt):], atol=3e-4, rtol=1e-4)
        token = theirs[:, -1].argmax(-1)
        for _ in range(24):
            ours, theirs = fast.step(token), reference.step(token)
            np.testing.assert_allclose(ours, theirs, atol=3e-4, rtol=1e-4)
            assert (ours.argmax(-1) == theirs.argmax(-1)).all()
            token = theirs.argmax(-1)
        assert fast.capacity >= len(ids[1]) + 24  # grew (doubling) instead of writing past its end


def test_greedy_generation_is_reset_between_generations(tiny_package_dir):
    """Two different prompts in a row give what two fresh loads give; one state prefilled twice
    starts the second time from an empty buffer."""
    path = tiny_package_dir("LlamaForCausalLM")
    lm = edge_sdk.load(path)
    first = lm.generate(PROMPTS[1], max_new_tokens=16, ignore_eos=True).token_ids
    second = lm.generate(PROMPTS[0], max_new_tokens=16, ignore_eos=True).token_ids
    assert second == edge_sdk.load(path).generate(PROMPTS[0], max_new_tokens=16, ignore_eos=True).token_ids
    assert lm.generate(PROMPTS[1], max_new_tokens=16, ignore_eos=True).token_ids == first
    with lm.decoder() as state:
        state.prefill([lm.tokenizer.encode(PROMPTS[1])])
        state.step([3])
        logits = state.prefill([lm.tokenizer.encode(PROMPTS[0])])
    with edge_sdk.load(path).decoder() as fresh:
        np.testing.assert_allclose(logits, fresh.prefill([lm.tokenizer.encode(PROMPTS[0])]), atol=1e-5)


def test_a_rewrite_that_fails_the_probe_is_not_kept(unfused, tmp_path):
    """Wrong sliding windows (2 tokens where Mistral's are 8) change the logits: the probe rejects
    the shared-cache rewrite, says why, and the package keeps the other fusions."""
    from edge_sdk.converters.causal_lm import _probe
    from edge_sdk.converters.onnxruntime_engine import fuse_for_onnxruntime
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    _, _, work, shapes = unfused("MistralForCausalLM")
    tokenizer = TextTokenizer.from_file(work / "tokenizer.json")
    probe = _probe(shapes, tokenizer)
    (tmp_path / "good").mkdir()
    good = fuse_for_onnxruntime(work / "decoder.onnx", tmp_path / "good" / "decoder.onnx", probe, attention={"windows": [shapes["sliding_window"]] * 2})
    assert good["applied"]["group_query_attention"] == 2 and "group_query_attention_rejected" not in good
    (tmp_path / "bad").mkdir()
    bad = fuse_for_onnxruntime(work / "decoder.onnx", tmp_path / "bad" / "decoder.onnx", probe, attention={"windows": [2, 2]})
    assert "group_query_attention" not in bad["applied"] and bad["applied"]["rotary_embedding"] == 4, bad
    assert "differs from the unfused one" in bad["group_query_attention_rejected"] and bad["rejected"] is None
    graph = DecoderGraph.from_session(open_session("onnxruntime", tmp_path / "bad" / "decoder.onnx"), shapes)
    assert not graph.shared_cache and graph.has_mask
