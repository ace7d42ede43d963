

# ------------------------------------------------------------------ decoding as faster-whisper's defaults (issue 18)


def _hf_beam_tokens(model, features: np.ndarray, num_beams: int, **kwargs) -> list[int]:
    """transformers' beam search tokens after the prompt, without end-of-text."""
    import torch

    gen = model.generation_config
    with torch.inference_mode():
        out = model.generate(torch.from_numpy(features[None]), num_beams=num_beams, do_sample=False, length_penalty=0.0,
                             early_stopping=True, **kwargs)
    sequence = out.sequences[0] if hasattr(out, "sequences") else out[0]
    special = {gen.decoder_start_token_id, gen.no_timestamps_token_id, *getattr(gen, "lang_to_id", {}).values(),
               *getattr(gen, "task_to_id", {}).values()}
    tokens = [int(t) for t in sequence]
    start = max(i for i, t in enumerate(tokens[:5]) if t in special) + 1  # after the prompt
    return [t for t in tokens[start:] if t != gen.eos_token_id]


def test_beam_search_of_one_is_greedy_token_for_token(tiny_whisper_package):
    """The beam search run with one beam gives the greedy tokens (its candidates: the best two)."""
    from edge_sdk.runtimes.decoder import DecoderState

    asr = edge_sdk.load(tiny_whisper_package)
    opts = asr.options(beam_size=1, temperature=0, language="en", timestamps=True)
    for seed in (0, 1, 2):
        cross = asr.encode(_random_features(seed))
        greedy = asr.decode(cross, opts).tokens
        prompt = asr._prompt("en", "transcribe", True)
        with DecoderState(asr._decoder, asr._graph, fixed=cross) as state:
            beam, _ = asr._beam_search(state, state.prefill([prompt])[:, -1], opts, 32)
        assert len(greedy) > 3 and beam == greedy, seed


def test_beam_search_gives_transformers_beam_tokens(tiny_whisper, tiny_whisper_package):
    """Beam 4 gives transformers' generate(num_beams=4) tokens when both run the same search:
    length_penalty 0 (both rank by the sum of log-probabilities) and early stopping at 4 finished
    candidates (OpenAI's patience 1). Each beam proposing its 5 best tokens (OpenAI) and the 8 best
    over all beams (transformers) keep the same 4; they can part only when two end-of-text
    candidates rank within one step differently, which these windows do not hit."""
    from edge_sdk.converters.whisper_torch import load_whisper

    model, _, _ = load_whisper(str(tiny_whisper), "huggingface")
    asr = edge_sdk.load(tiny_whisper_package)
    compared = 0
    for seed, language, task in [(0, "en", "transcribe"), (1, "de", "translate"), (5, "en", "transcribe"), (6, "de", "transcribe")]:
        features = _random_features(seed)
        ours = asr.decode(asr.encode(features), language=language, task=task, timestamps=False, beam_size=4,
                          length_penalty=0.0, temperature=0).tokens
        expected = _hf_beam_tokens(model, features, 4, language=language, task=task, return_timestamps=False)
        expected = expected[: model.config.max_target_positions // 2]
        assert ours == expected, (seed, language, task)
        compared += len(ours)
    assert compared > 20


def test_beam_search_on_tiny_en_speech_gives_transformers_tokens_and_improves_nothing_away(whisper_packages, torch_whisper, clips):
    import librosa
    from transformers import WhisperFeatureExtractor

    asr = edge_sdk.load(whisper_packages["fp32"])
    extractor = WhisperFeatureExtractor(feature_size=torch_whisper.config.num_mel_bins)
    for path, _ in clips[:3]:
        audio, _ = librosa.load(str(path), sr=16000)
        features = extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]
        ours = asr.decode(asr.encode(features), timestamps=False, beam_size=4, length_penalty=0.0, temperature=0).tokens
        assert ours == _hf_beam_tokens(torch_whisper, features, 4, return_timestamps=False), path.name


def test_fallback_decodes_a_repetitive_window_hotter_and_clean_speech_at_zero(tiny_whisper_package, whisper_packages, clips):
    """The random tiny model repeats itself (compression ratio far above 2.4): the window is decoded
    again at 0.2, ... (best of 5 samples), and the kept decoding is the likeliest acceptable one.
    tiny.en on a clean sentence: decoded once, at temperature 0."""
    random_model = edge_sdk.load(tiny_whisper_package)
    audio = np.random.default_rng(3).normal(scale=0.3, size=16000 * 4).astype(np.float32)
    first = random_model.decode(random_model.encode(random_model.log_mel(audio)), language="en", temperature=0)
    assert first.compression_ratio > 2.4, first  # what makes it fall back
    result = random_model.transcribe(audio, language="en")
    assert result.stats.fallbacks >= 1 and result.segments and result.segments[0].temperature > 0
    again = random_model.transcribe(audio, language="en")
    assert again.text == result.text  # sampling is seeded: the same transcript every run
    no_fallback = random_model.transcribe(audio, language="en", temperature=0)
    assert no_fallback.stats.fallbacks == 0 and all(s.temperature == 0 for s in no_fallback.segments)

    speech = edge_sdk.load(whisper_packages["int8"])
    clean = speech.transcribe(clips[0][0])
    assert clean.stats.fallbacks == 0 and clean.segments and all(s.temperature == 0 for s in clean.segments)
    assert all(s.compression_ratio < 2.4 for s in clean.segments)


def test_each_window_is_prompted_with_the_text_before_it(whisper_packages, tmp_path, monkeypatch):
    """condition_on_previous_text: the second window's prompt holds <|startofprev|> and the first
    window's tokens (after initial_prompt's); off, or after a window decoded above
    prompt_reset_on_temperature, only the start-of-transcript sequence."""
    import soundfile

    speech = edge_sdk.load(whisper_packages["int8"])
    parts = [soundfile.read(espeak(text, tmp_path / f"{i}.wav"))[0] for i, text in enumerate(SENTENCES)]
    audio = np.concatenate([np.concatenate([p, np.zeros(8000)]) for p in parts * 3]).astype(np.float32)  # > 30 s
    prompts = []
    original = speech._decode

    def spy(cross, prompt, opts, temperature, rng):
        prompts.append(list(prompt))
        return original(cross, prompt, opts, temperature, rng)

    monkeypatch.setattr(speech, "_decode", spy)
    start = speech.tokenizer.token_id("<|startofprev|>")
    glossary = speech._text_tokens("Stella")
    speech.transcribe(audio, initial_prompt="Stella", beam_size=2)
    assert len(prompts) >= 2 and prompts[0][0] == start and prompts[0][1 : 1 + len(glossary)] == glossary
    assert prompts[1][0] == start and len(prompts[1]) > len(prompts[0]) + 5  # the first window's text came along
    prompts.clear()
    speech.transcribe(audio, condition_on_previous_text=False, beam_size=2)
    assert len(prompts) >= 2 and all(start not in p for p in prompts)


def test_decoding_options_are_validated_in_one_line(whisper_packages, clips):
    from click.testing import CliRunner

    from edge_sdk.cli import main

    package, clip = str(whisper_packages["int8"]), str(clips[0][0])
    for arguments, words in (
        (["--beam-size", "0"], "beam_size must be an integer in [1, 64]"),
        (["--best-of", "100"], "best_of must be an integer in [1, 64]"),
        (["--patience", "0"], "patience must be a number > 0"),
        (["--length-penalty", "-1"], "length_penalty must be None or a number in [0, 10]"),
        (["--temperature", "0,hot"], "--temperature takes a number or comma-separated numbers"),
        (["--temperature", "3"], "temperature must be a number in [0, 2]"),
        (["--compression-ratio-threshold", "0"], "compression_ratio_threshold must be None or a number > 0"),
        (["--no-speech-threshold", "2"], "no_speech_threshold must be a probability in [0, 1]"),
    ):
        done = CliRunner().invoke(main, ["transcribe", package, clip, *arguments])
        lines = [line for line in done.output.strip().splitlines() if line.startswith("Error:")]
        assert done.exit_code != 0 and len(lines) == 1 and words in lines[0], (arguments, done.output)
    with pytest.raises(InvalidInputError, match="prompt_reset_on_temperature"):
        edge_sdk.load(package).transcribe(clip, prompt_reset_on_temperature=-1)
