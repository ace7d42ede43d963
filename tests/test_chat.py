"""Chat: templates rendered exactly as transformers' apply_chat_template, packages that carry them,
`edge-sdk generate --chat` and `edge-sdk chat`, repetition penalty as transformers applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

import edge_sdk
from edge_sdk.cli import main
from edge_sdk.converters.tiny import train_tokenizer
from edge_sdk.errors import InvalidInputError
from edge_sdk.runtimes.chat import ChatTemplate

from conftest import CHAT_TEMPLATES

TEMPLATES = sorted(p.stem for p in CHAT_TEMPLATES.glob("*.jinja"))
SYSTEM = {"role": "system", "content": "You are a terse assistant. /no_think"}
CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [SYSTEM, {"role": "user", "content": "What is an NPU?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about \"quotes\" & <tags>."}],
    [SYSTEM, {"role": "user", "content": "  padded  "}, {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "ünïcödé 日本語"}],
    [{"role": "assistant", "content": "I speak first"}],  # breaks the alternation some templates enforce
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_CHAT = [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                                     "arguments": {"city": "Paris"}}}]},
             {"role": "tool", "content": "18 C, sunny"}]


@pytest.fixture(scope="module")
def hf_tokenizer():
    return train_tokenizer(300)


@pytest.mark.parametrize("family", TEMPLATES)
def test_rendering_is_identical_to_apply_chat_template(family, hf_tokenizer):
    source = (CHAT_TEMPLATES / f"{family}.jinja").read_text()
    hf_tokenizer.chat_template = source
    ours = ChatTemplate(source, hf_tokenizer.special_tokens_map)
    cases = [(c, g, {}) for c in CONVERSATIONS for g in (True, False)]
    cases += [(CONVERSATIONS[1], True, {"enable_thinking": False}), (CONVERSATIONS[0], True, {"date_string": "1 Dec 2026"})]
    rendered = 0
    for messages, generation_prompt, kwargs in cases:
        try:
            expected = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)
        except Exception as e:  # the template refuses the conversation (raise_exception): so must we, with its words
            with pytest.raises(InvalidInputError, match="chat template refuses this conversation") as refused:
                ours.render(messages, add_generation_prompt=generation_prompt, **kwargs)
            assert str(e) in str(refused.value)
            continue
        assert ours.render(messages, add_generation_prompt=generation_prompt, **kwargs) == expected
        rendered += 1
    assert rendered >= 4
    if "tools" in source:
        expected = hf_tokenizer.apply_chat_template(TOOL_CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
        assert ours.render(TOOL_CHAT, tools=TOOLS) == expected and "get_weather" in expected


def test_templates_run_sandboxed_and_bad_conversations_fail_in_one_line():
    escape = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(edge_sdk.EdgeSDKError, match="unsafe operation"):
        escape.render([{"role": "user", "content": "x"}])
    namespace = ChatTemplate("{% set ns = namespace(_x=1) %}{{ ns }}")
    with pytest.raises(edge_sdk.EdgeSDKError, match="unsafe operation"):
        namespace.render([{"role": "user", "content": "x"}])
    with pytest.raises(edge_sdk.EdgeSDKError, match="not valid Jinja"):
        ChatTemplate("{% for m in messages %}")
    chatml = ChatTemplate((CHAT_TEMPLATES / "Qwen2ForCausalLM.jinja").read_text())
    for messages, message in [
        ([{"role": "robot", "content": "beep"}], "chat message 1 has role 'robot'; the roles are system, developer, user"),
        ([], "non-empty list of messages"),
        ("Hello", "non-empty list of messages"),
        ([{"role": "user", "content": "a"}, "b"], "chat message 2 is a str"),
        ([{"role": "user"}], "chat message 1 (user) has no 'content'"),
        ([{"role": "user", "content": 3}], "'content' must be a string"),
    ]:
        with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            chatml.render(messages)


def test_package_chat_matches_transformers_tokens(tiny_model_dir, tiny_package_dir):
    architecture = "Qwen2ForCausalLM"
    model_dir = tiny_model_dir(architecture)
    lm = edge_sdk.load(tiny_package_dir(architecture))
    manifest = lm.package.manifest
    assert manifest["tokenizer"]["chat_template"] == "chat_template.jinja"
    assert (lm.package.root / "chat_template.jinja").read_text() == (CHAT_TEMPLATES / f"{architecture}.jinja").read_text()
    assert manifest["tokenizer"]["special_tokens"]["eos_token"] == "</s>"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in lm.eos_token_ids  # the end-of-turn token from generation_config.json ends a reply

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for messages in CONVERSATIONS[:4]:
        expected_ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        reply = lm.chat(messages, max_new_tokens=24)
        assert reply.prompt_token_ids == list(expected_ids)
        expected = model.generate(torch.tensor([expected_ids]), attention_mask=torch.ones(1, len(expected_ids), dtype=torch.long),
                                  max_new_tokens=24, do_sample=False)[0, len(expected_ids):].tolist()
        assert reply.token_ids == expected
        assert "".join(lm.stream_chat(messages, max_new_tokens=24)) == reply.text


def test_history_is_trimmed_to_the_context_oldest_turns_first(tiny_package_dir):
    lm = edge_sdk.load(tiny_package_dir("Qwen2ForCausalLM"))
    messages = [SYSTEM]
    for turn in range(30):
        messages += [{"role": "user", "content": f"Question number {turn}: what happens next in the story?"},
                     {"role": "assistant", "content": f"Answer {turn}: the robot reads another book."}]
    messages.append({"role": "user", "content": "And finally?"})
    assert len(lm.tokenizer.encode(lm.chat_prompt(messages), add_special_tokens=False)) > lm.context_length
    fitted = lm.fit_chat(messages, max_new_tokens=32)
    assert fitted[0] == SYSTEM and fitted[-1] == messages[-1] and fitted[1]["role"] == "user"
    assert len(lm.tokenizer.encode(lm.chat_prompt(fitted), add_special_tokens=False)) + 32 <= lm.context_length
    assert fitted[1:] == messages[len(messages) - len(fitted) + 1:]  # the newest turns, in order
    assert lm.chat(fitted, max_new_tokens=32).finish_reason in ("eos", "length")


def test_repetition_penalty_is_transformers_and_comes_from_generation_config(tiny_model_dir, tiny_package_dir):
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from edge_sdk.runtimes.sampling import penalize_repetition

    rng = np.random.default_rng(0)
    logits, ids = rng.normal(size=(2, 50)).astype(np.float32) * 3, rng.integers(0, 50, size=(2, 12))
    seen = np.zeros_like(logits, dtype=bool)
    np.put_along_axis(seen, ids, True, axis=1)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.from_numpy(ids), torch.from_numpy(logits.copy())).numpy()
    np.testing.assert_allclose(penalize_repetition(logits, seen, 1.3), expected, rtol=1e-6)

    # Olmo2's tiny checkpoint sets repetition_penalty 1.3 in generation_config.json: the package defaults to it
    model_dir = tiny_model_dir("Olmo2ForCausalLM")
    lm = edge_sdk.load(tiny_package_dir("Olmo2ForCausalLM"))
    assert lm.defaults.repetition_penalty == 1.3
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer("The quick brown fox", return_tensors="pt")
    for penalty in (1.3, 1.0):
        expected = model.generate(**inputs, max_new_tokens=32, min_new_tokens=32, do_sample=False, repetition_penalty=penalty)
        ours = lm.generate("The quick brown fox", max_new_tokens=32, ignore_eos=True, repetition_penalty=penalty)
        assert ours.token_ids == expected[0, inputs.input_ids.shape[1]:].tolist()
    with pytest.raises(InvalidInputError, match="repetition_penalty must be a number > 0"):
        lm.generate("x", repetition_penalty=0)


def test_generate_chat_and_interactive_chat_cli(tiny_package_dir, monkeypatch):
    package = str(tiny_package_dir("Qwen2ForCausalLM"))
    lm = edge_sdk.load(package)
    runner = CliRunner()
    single = runner.invoke(main, ["generate", package, "--chat", "Hi again", "--max-new-tokens", "16"])
    assert single.exit_code == 0, single.output
    expected = lm.chat([{"role": "user", "content": "Hi again"}], max_new_tokens=16).text
    assert single.stdout.strip() == expected.strip() and expected.strip()
    with_system = runner.invoke(main, ["generate", package, "--chat", "Hi again", "--system", "Be brief.", "--max-new-tokens", "16"])
    assert with_system.stdout.strip() == lm.chat([{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Hi again"}], max_new_tokens=16).text.strip()

    session = runner.invoke(main, ["chat", package, "--max-new-tokens", "16"], input="Hello\n/reset\nHi again\n/bogus\n/exit\n")
    assert session.exit_code == 0, session.output
    # after /reset the reply is the one a fresh conversation gets
    assert expected.strip() in session.output and "history cleared" in session.output and "unknown command /bogus" in session.output
    first = lm.chat([{"role": "user", "content": "Hello"}], max_new_tokens=16).text
    assert first.strip() in session.output

    # Ctrl-C during a reply stops that reply, keeps what was said, and the session goes on
    calls = []
    original = edge_sdk.runtimes.text_generation.TextGenerator.stream_chat

    def interrupted(self, messages, *args, **kwargs):
        calls.append([dict(m) for m in messages])
        if len(calls) == 1:
            yield "partial"
            raise KeyboardInterrupt
        yield from original(self, messages, *args, **kwargs)

    monkeypatch.setattr(edge_sdk.runtimes.text_generation.TextGenerator, "stream_chat", interrupted)
    session = runner.invoke(main, ["chat", package, "--max-new-tokens", "8"], input="Hello\nStill there?\n")
    assert session.exit_code == 0, session.output
    assert "(stopped)" in session.output and len(calls) == 2
    assert calls[1][-3:] == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "partial"},
                             {"role": "user", "content": "Still there?"}]


def test_chat_without_template_and_bad_roles_fail_in_one_line(tiny_package_dir, tmp_path):
    gpt2 = str(tiny_package_dir("GPT2LMHeadModel"))
    runner = CliRunner()
    for args in (["generate", gpt2, "--chat", "Hi"], ["chat", gpt2]):
        result = runner.invoke(main, args, input="/exit\n")
        assert result.exit_code != 0
        assert result.output.strip().splitlines() == [result.output.strip()] and "no chat template" in result.output
    assert runner.invoke(main, ["generate", gpt2, "Hello", "--max-new-tokens", "4"]).exit_code == 0  # completion still works
    lm = edge_sdk.load(tiny_package_dir("Qwen2ForCausalLM"))
    with pytest.raises(InvalidInputError, match="role 'wizard'"):
        lm.chat([{"role": "wizard", "content": "abracadabra"}])
    messages = tmp_path / "chat.json"
    messages.write_text(json.dumps([{"role": "wizard", "content": "abracadabra"}]))
    result = runner.invoke(main, ["generate", str(tiny_package_dir("Qwen2ForCausalLM")), "--messages", str(messages)])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1 and "role 'wizard'" in result.output
