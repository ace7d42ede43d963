"""The packaged decoder reproduces the PyTorch model: logits, greedy tokens, and batching."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import edge_sdk

from conftest import ARCHITECTURES

PROMPTS = ["The quick brown fox", "Once upon a time there was a little robot who", "Hello"]
DECODE_STEPS = 20


def _torch_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _cache_keyword(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_match_pytorch_for_prefill_and_decode_steps(architecture, tiny_model_dir, tiny_package_dir):
    model = _torch_model(tiny_model_dir(architecture))
    lm = edge_sdk.load(tiny_package_dir(architecture))
    keyword = _cache_keyword(model)
    ids = lm.tokenizer.encode(PROMPTS[1])

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
    with lm.decoder() as state:
        ours = state.prefill([ids])
        assert ours.shape == out.logits.shape
        np.testing.assert_allclose(ours, out.logits.numpy(), atol=1e-4, rtol=0)

        cache = getattr(out, keyword)
        for _ in range(DECODE_STEPS):
            token = out.logits[:, -1].argmax(-1)
            with torch.no_grad():
                out = model(input_ids=token[:, None], use_cache=True, **{keyword: cache})
            cache = getattr(out, keyword)
            ours = state.step(token.numpy())
            np.testing.assert_allclose(ours, out.logits[:, -1].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_greedy_generation_is_token_identical_to_transformers(architecture, tiny_model_dir, tiny_package_dir):
    model_dir = tiny_model_dir(architecture)
    model, tokenizer = _torch_model(model_dir), AutoTokenizer.from_pretrained(model_dir)
    lm = edge_sdk.load(tiny_package_dir(architecture))
    generated = []
    for prompt in PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        expected = model.generate(**inputs, max_new_tokens=32, do_sample=False)[0, inputs.input_ids.shape[1] :]
        result = lm.generate(prompt, max_new_tokens=32, temperature=0)
        assert result.prompt_token_ids == inputs.input_ids[0].tolist()
        assert result.token_ids == expected.tolist()
        generated += result.token_ids
    assert len(set(generated)) > 5, "the tiny model should not be degenerate, or parity proves little"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_left_padded_batch_gives_the_same_tokens_as_one_by_one(architecture, tiny_package_dir):
    lm = edge_sdk.load(tiny_package_dir(architecture))
    prompts = [PROMPTS[2], PROMPTS[1]]  # 2 and ~12 tokens: the first row is mostly padding
    assert len(lm.tokenizer.encode(prompts[0])) < len(lm.tokenizer.encode(prompts[1]))
    batch = lm.generate(prompts, max_new_tokens=24)
    for prompt, result in zip(prompts, batch):
        single = lm.generate(prompt, max_new_tokens=24)
        assert result.token_ids == single.token_ids
        assert result.text == single.text
