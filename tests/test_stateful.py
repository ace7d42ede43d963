"""OpenVINO packages keep the KV cache in the engine (stateful): the same tokens and logits as the
ONNX Runtime graph (its cache in an f32 state: OpenVINO's default u8 cache compression would not
be), reset between generations, rows reorderable (beams, finished rows)."""

from __future__ import annotations

import numpy as np
import pytest

import edge_sdk
from edge_sdk.errors import InvalidInputError

PROMPTS = ["Hello", "Once upon a time there was a little robot who", "The quick brown fox"]
LONG = "Edge devices run small models: laptops, Raspberry Pis and NPUs. The capital of France is Paris;"


@pytest.fixture(scope="module")
def stateful(package_of):
    return {arch: edge_sdk.load(package_of(arch, "openvino", "fp32")) for arch in ("LlamaForCausalLM", "Gemma2ForCausalLM")}


def test_openvino_packages_are_stateful_and_match_the_stateless_graph(stateful, tiny_package_dir):
    for architecture, lm in stateful.items():
        graph = lm.package.graph("decoder")
        names = [entry["name"] for entry in graph["inputs"]]
        assert graph["kv_cache"] == "stateful" and "beam_idx" in names
        # attention reaches OpenVINO as ScaledDotProductAttention (fused with the state on CPU), except
        # Gemma 2's soft-capped eager attention, which stays decomposed
        sdpa = "ScaledDotProductAttention" in lm.package.path(graph["path"]).read_text()
        assert sdpa == (architecture != "Gemma2ForCausalLM"), architecture
        assert not any(n.startswith("past_key_values") for n in names) and [o["name"] for o in graph["outputs"]] == ["logits"]
        # ONNX Runtime FP32: Llama's cache in one shared buffer (GroupQueryAttention); Gemma 2's (soft-capped
        # eager attention, not fused) through numpy inputs and outputs
        reference = edge_sdk.load(tiny_package_dir(architecture))
        expected = "inputs" if architecture == "Gemma2ForCausalLM" else "shared"
        assert reference.package.graph("decoder").get("kv_cache") == expected
        for prompts in ([LONG], PROMPTS[:2]):  # one prompt longer than Gemma 2's window; a left-padded batch
            ours = lm.generate(prompts, max_new_tokens=32, ignore_eos=True)
            theirs = reference.generate(prompts, max_new_tokens=32, ignore_eos=True)
            assert [r.token_ids for r in ours] == [r.token_ids for r in theirs]
        with lm.decoder() as a, reference.decoder() as b:
            ids = [lm.tokenizer.encode(p) for p in PROMPTS[:2]]
            np.testing.assert_allclose(a.prefill(ids)[:, -1], b.prefill(ids)[:, -1], atol=1e-4)
            token = np.array([5, 7])
            for _ in range(10):
                left, right = a.step(token), b.step(token)
                np.testing.assert_allclose(left, right, atol=1e-4)
                token = right.argmax(-1)


def test_state_is_reset_between_generations(package_of):
    path = package_of("LlamaForCausalLM", "openvino", "fp32")
    lm = edge_sdk.load(path)
    first = lm.generate(PROMPTS[1], max_new_tokens=16, ignore_eos=True).token_ids
    second = lm.generate(PROMPTS[2], max_new_tokens=16, ignore_eos=True).token_ids
    again = lm.generate(PROMPTS[1], max_new_tokens=16, ignore_eos=True).token_ids
    assert second == edge_sdk.load(path).generate(PROMPTS[2], max_new_tokens=16, ignore_eos=True).token_ids
    assert again == first
    with lm.decoder() as state:  # one state prefilled twice: the second starts from an empty cache
        state.prefill([lm.tokenizer.encode(PROMPTS[1])])
        state.step([3])
        logits = state.prefill([lm.tokenizer.encode(PROMPTS[2])])
    with edge_sdk.load(path).decoder() as fresh:
        np.testing.assert_allclose(logits, fresh.prefill([lm.tokenizer.encode(PROMPTS[2])]), atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_rows_reorder_like_beams(runtime, package_of, tiny_package_dir):
    lm = edge_sdk.load(package_of("LlamaForCausalLM", "openvino", "fp32") if runtime == "openvino"
                       else tiny_package_dir("LlamaForCausalLM"))
    ids = [lm.tokenizer.encode(p) for p in PROMPTS[:2]]
    with lm.decoder() as state:
        state.prefill(ids)
        state.step([11, 12])
        state.reorder([1, 0, 1])  # row 1 duplicated (two beams of it), row 0 kept in the middle
        logits = state.step([13, 14, 15])
        after = state.step(logits.argmax(-1))
        with pytest.raises(InvalidInputError, match=r"reorder\(\) takes row indices in \[0, 3\)"):
            state.reorder([3])
    for row, (source, token) in enumerate([(1, 13), (0, 14), (1, 15)]):
        with lm.decoder() as single:
            single.prefill([ids[source]])
            single.step([[11, 12][source]])
            expected = single.step([token])
            np.testing.assert_allclose(logits[row], expected[0], atol=1e-4)
            np.testing.assert_allclose(after[row], single.step(expected.argmax(-1))[0], atol=1e-4)


def test_ctrl_c_after_openvino_packages_is_a_keyboard_interrupt_not_a_crash(package_of):
    """OpenVINO's compile installs a signal stack on the calling thread that releasing the models can
    leave unmapped; the backend puts the thread's own back. In a child process: load and release two
    packages, then SIGINT: Python's KeyboardInterrupt, not SIGSEGV."""
    import subprocess
    import sys

    script = """
import gc, os, signal, sys, time
import edge_sdk
first = edge_sdk.load(sys.argv[1]); first.generate("Hello", max_new_tokens=2)
second = edge_sdk.load(sys.argv[1]); second.generate("Hello", max_new_tokens=2)
del first; gc.collect()
third = edge_sdk.load(sys.argv[1]); third.generate("Hello", max_new_tokens=2)
del second, third; gc.collect()
try:  # raised on this thread (a process-wide kill may land on an engine thread and reach Python later)
    signal.raise_signal(signal.SIGINT)
    time.sleep(2)
except KeyboardInterrupt:
    print("interrupted")
"""
    package = str(package_of("LlamaForCausalLM", "openvino", "fp32"))
    done = subprocess.run([sys.executable, "-c", script, package], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "interrupted" in done.stdout, (done.returncode, done.stderr[-2000:])
