"""The torch-free generation loop: sampling, streaming, stop strings, options, context limits."""

from __future__ import annotations

import numpy as np
import pytest

import edge_sdk
from edge_sdk.errors import InvalidInputError
from edge_sdk.runtimes.sampling import filter_top_k, filter_top_p, select_next_tokens
from edge_sdk.runtimes.text_generation import GenerationOptions
from edge_sdk.runtimes.tokenizer import StreamDecoder, TextTokenizer


@pytest.fixture(scope="module")
def lm(tiny_package_dir):
    return edge_sdk.load(tiny_package_dir("LlamaForCausalLM"))


def test_top_k_keeps_exactly_the_k_largest():
    logits = np.array([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = np.isfinite(filter_top_k(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]
    assert np.isfinite(filter_top_k(logits, 0)).all()


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    kept = np.isfinite(filter_top_p(np.log(probs), 0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.8
    assert np.isfinite(filter_top_p(np.log(probs), 0.01))[0].tolist() == [True, False, False, False]


def test_sampling_follows_the_distribution_and_is_reproducible():
    probs = np.array([0.7, 0.2, 0.1])
    logits = np.tile(np.log(probs), (20000, 1))
    draws = select_next_tokens(logits, 1.0, 0, 1.0, np.random.default_rng(7))
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), probs, atol=0.015)
    again = select_next_tokens(logits, 1.0, 0, 1.0, np.random.default_rng(7))
    assert (draws == again).all()
    assert (select_next_tokens(logits[:3], 0.0, 0, 1.0, np.random.default_rng(0)) == 0).all()


def test_seeded_generation_is_reproducible_and_seeds_differ(lm):
    a = lm.generate("Hello", max_new_tokens=16, temperature=1.0, seed=1)
    b = lm.generate("Hello", max_new_tokens=16, temperature=1.0, seed=1)
    c = lm.generate("Hello", max_new_tokens=16, temperature=1.0, seed=2)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_stream_pieces_join_to_the_generated_text(lm):
    result = lm.generate("Once upon a time", max_new_tokens=30)
    pieces = list(lm.stream("Once upon a time", max_new_tokens=30))
    assert len(pieces) > 1
    assert "".join(pieces) == result.text
    assert lm.last_stats.generated_tokens == len(result.token_ids)


def test_stream_decoder_handles_characters_split_across_tokens(lm):
    tokenizer = lm.tokenizer
    text = "naïve café — 東京 🚀 done"
    ids = tokenizer.encode(text)[1:]  # without BOS
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_stop_string_cuts_the_text_and_ends_generation(lm):
    full = lm.generate("Once upon a time", max_new_tokens=30)
    assert len(full.text) > 6
    stop = full.text[3:6]
    result = lm.generate("Once upon a time", max_new_tokens=30, stop=[stop])
    assert result.finish_reason == "stop"
    assert result.text == full.text[: full.text.find(stop)]
    assert len(result.token_ids) < len(full.token_ids)
    assert "".join(lm.stream("Once upon a time", max_new_tokens=30, stop=[stop])) == result.text


def test_eos_ends_generation_and_is_reported(lm, tiny_package_dir):
    full = lm.generate("Hello", max_new_tokens=20, ignore_eos=True)
    # make the 5th generated token an end-of-sequence token (restored below)
    package_eos, lm.eos_token_ids = lm.eos_token_ids, (full.token_ids[4],)
    try:
        result = lm.generate("Hello", max_new_tokens=20)
        ignored = lm.generate("Hello", max_new_tokens=20, ignore_eos=True)
    finally:
        lm.eos_token_ids = package_eos
    assert package_eos == tuple(lm.package.manifest["generation"]["eos_token_ids"])
    assert result.finish_reason == "eos"
    assert result.token_ids == full.token_ids[: full.token_ids.index(full.token_ids[4]) + 1]
    assert ignored.token_ids == full.token_ids and ignored.finish_reason == "length"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer"),
        ({"temperature": -1}, "temperature must be"),
        ({"top_k": -3}, "top_k must be"),
        ({"top_p": 0}, "top_p must be in"),
        ({"seed": -1}, "seed must be"),
        ({"stop": [""]}, "stop strings must be non-empty"),
        ({"beams": 4}, "unknown generation option(s) beams"),
    ],
)
def test_bad_options_are_refused_with_the_reason(lm, overrides, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lm.generate("Hello", **overrides)


@pytest.mark.parametrize("prompt", ["", [], [""]])
def test_empty_prompts_are_refused(lm, prompt):
    with pytest.raises(InvalidInputError):
        lm.generate(prompt)


def test_prompt_longer_than_the_context_is_refused_and_generation_stops_at_the_context_end(lm):
    context = lm.package.manifest["model"]["max_positions"]
    with pytest.raises(InvalidInputError, match="context"):
        lm.generate("word " * context)
    words = context
    while len(lm.tokenizer.encode("word " * words)) > context - 10:
        words -= 1
    prompt = "word " * words
    prompt_tokens = len(lm.tokenizer.encode(prompt))
    assert context - 20 < prompt_tokens <= context - 10
    result = lm.generate(prompt, max_new_tokens=50)
    assert len(result.token_ids) <= context - prompt_tokens
    assert result.finish_reason in ("length", "eos")


def test_generation_options_defaults_are_greedy():
    options = GenerationOptions()
    assert options.temperature == 0 and options.top_k == 0 and options.top_p == 1.0
    assert GenerationOptions(stop="\n").stop == ("\n",)


def test_tokenizer_matches_transformers(tiny_model_dir, tiny_package_dir):
    from transformers import AutoTokenizer

    ours = TextTokenizer.from_file(tiny_package_dir("GPT2LMHeadModel") / "tokenizer.json")
    theirs = AutoTokenizer.from_pretrained(tiny_model_dir("GPT2LMHeadModel"))
    for text in ["Hello, world!", "  leading spaces", "émoji 🚀 and\nnewlines\t"]:
        assert ours.encode(text) == theirs(text)["input_ids"]
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs(text)["input_ids"], skip_special_tokens=True)
