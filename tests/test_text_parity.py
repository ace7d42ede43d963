"""Every listed decoder family's package reproduces transformers: logits, greedy tokens, batches,
and sliding windows (through the shared-cache GroupQueryAttention graph where the family gets one).

One tiny random model per family (``converters.tiny.TINY_CONFIGS``: widened init so greedy output
varies; sliding windows of 8 tokens, shorter than every prompt plus its generation), exported
once per session, two exports at a time.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import edge_sdk
from edge_sdk.converters.causal_lm_torch import _cache_argument
from edge_sdk.converters.tiny import TINY_WINDOW

from conftest import ARCHITECTURES

# one xdist worker runs this module (pytest -n ... --dist loadgroup): every family is exported once, two at a time
pytestmark = pytest.mark.xdist_group("text_parity")

PROMPTS = ["The quick brown fox", "Once upon a time there was a little robot who", "Hello"]
LONG_PROMPT = "Edge devices run small models: laptops, Raspberry Pis and NPUs. The capital of France is Paris;"
DECODE_STEPS = 20
NEW_TOKENS = 32
# families whose rotary embedding runs inside GroupQueryAttention (do_rotary); the others keep the
# RotaryEmbedding ops: partial rotary (GPT-NeoX, Phi, StableLM), per-head q/k norms after the
# projection (Gemma 3, Qwen3, Qwen3-MoE), learned positions (GPT-2, OPT), Gemma 2, rotary over
# interleaved channel pairs (Helium)
ROTARY_IN_ATTENTION = {"GemmaForCausalLM", "GraniteForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
                       "Olmo2ForCausalLM", "Phi3ForCausalLM", "Qwen2ForCausalLM", "SmolLM3ForCausalLM"}


@pytest.fixture(scope="module")
def family_package(tiny_package_dir):
    tiny_package_dir.prefetch(ARCHITECTURES)  # export every family two at a time, in the background
    return tiny_package_dir


def _torch_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_match_pytorch_for_prefill_and_decode_steps(architecture, tiny_model_dir, family_package):
    model = _torch_model(tiny_model_dir(architecture))
    lm = edge_sdk.load(family_package(architecture))
    # attention over one preallocated buffer per cache tensor wherever every layer's attention fuses;
    # Gemma 2's soft-capped eager attention does not
    expected = "inputs" if architecture == "Gemma2ForCausalLM" else "shared"
    assert lm.package.graph("decoder")["kv_cache"] == expected
    nodes = onnx.load(str(lm.package.graph_path("decoder")), load_external_data=False).graph.node
    rotary_inside = [n for n in nodes if n.op_type == "GroupQueryAttention" and any(a.name == "do_rotary" and a.i for a in n.attribute)]
    assert bool(rotary_inside) == (architecture in ROTARY_IN_ATTENTION)
    if architecture in ROTARY_IN_ATTENTION:  # SmolLM3: every 4th layer has no rotary (NoPE) at all
        assert not any(n.op_type == "RotaryEmbedding" for n in nodes)
    keyword = _cache_argument(model)
    ids = lm.tokenizer.encode(LONG_PROMPT)

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
    with lm.decoder() as state:
        ours = state.prefill([ids])
        assert ours.shape == out.logits.shape
        np.testing.assert_allclose(ours, out.logits.numpy(), atol=3e-4, rtol=1e-4)

        cache = getattr(out, keyword)
        for _ in range(DECODE_STEPS):
            token = out.logits[:, -1].argmax(-1)
            with torch.no_grad():
                out = model(input_ids=token[:, None], use_cache=True, **{keyword: cache})
            cache = getattr(out, keyword)
            ours = state.step(token.numpy())
            np.testing.assert_allclose(ours, out.logits[:, -1].numpy(), atol=3e-4, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_greedy_tokens_identical_to_transformers_generate_single_and_left_padded_batch(
        architecture, tiny_model_dir, family_package):
    model_dir = tiny_model_dir(architecture)
    model, tokenizer = _torch_model(model_dir), AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model.generation_config.eos_token_id = None  # 32 tokens on both sides: no stop, and no EOS suppression either
    lm = edge_sdk.load(family_package(architecture))
    window = lm.package.manifest["model"].get("sliding_window")
    assert (window is not None) == (getattr(model.config, "sliding_window", None) is not None and architecture != "Qwen2ForCausalLM")

    generated = []
    for prompt in [*PROMPTS, LONG_PROMPT]:
        inputs = tokenizer(prompt, return_tensors="pt")
        expected = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0, inputs.input_ids.shape[1]:].tolist()
        result = lm.generate(prompt, max_new_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        assert len(result.token_ids) == NEW_TOKENS
        assert result.prompt_token_ids == inputs.input_ids[0].tolist()
        assert result.token_ids == expected, prompt
        generated += result.token_ids
    assert len(set(generated)) > 10, "the tiny model should not be degenerate, or parity proves little"
    if window:  # the long prompt alone is longer than the window: attention beyond it is cut exactly
        assert window == TINY_WINDOW < len(lm.tokenizer.encode(LONG_PROMPT))

    # a left-padded batch of two: the short row is mostly padding
    batch = [PROMPTS[2], LONG_PROMPT]
    inputs = tokenizer(batch, return_tensors="pt", padding=True)
    assert inputs.attention_mask[0].sum() < inputs.attention_mask[1].sum()
    expected = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[:, inputs.input_ids.shape[1]:]
    results = lm.generate(batch, max_new_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    for row, result in enumerate(results):
        assert result.token_ids == expected[row].tolist() and len(result.token_ids) == NEW_TOKENS, batch[row]
