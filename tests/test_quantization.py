"""Quantized and OpenVINO packages: every runtime x weights combination, sizes, accuracy, recipes, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edge_sdk
from edge_sdk.cli import main
from edge_sdk.converters.export import ExportOptions, export
from edge_sdk.converters.quantize import plan_group_size
from edge_sdk.quantization import QuantizationOptions
from edge_sdk.errors import InvalidInputError
from edge_sdk.evaluation import evaluate_package

from conftest import CALIBRATION_TEXT

RUNTIMES = ["onnxruntime", "openvino"]
WEIGHTS = ["fp32", "fp16", "int8", "int4"]
PROMPTS = ["The quick brown fox", "Once upon a time there was", "Hello"]


@pytest.mark.parametrize("architecture", ["GPT2LMHeadModel", "LlamaForCausalLM"])
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_every_runtime_and_precision_exports_and_generates(architecture, runtime, weights, package_of, tiny_package_dir):
    package = package_of(architecture, runtime, weights)
    lm = edge_sdk.load(package, threads=1)
    manifest = lm.package.manifest
    assert manifest["runtime"]["name"] == runtime and manifest["precision"]["weights"] == weights
    expected_suffix = ".xml" if runtime == "openvino" else ".onnx"
    assert manifest["graphs"][0]["path"].endswith(expected_suffix)
    result = lm.generate(PROMPTS[0], max_new_tokens=16, ignore_eos=True)
    assert len(result.token_ids) == 16 and result.text
    evaluation = manifest["accuracy"]["eval"]
    assert evaluation["tokens"] > 100 and np.isfinite(evaluation["perplexity"])
    if not (runtime == "onnxruntime" and weights == "fp32"):  # the FP32 ONNX Runtime package *is* the reference
        assert evaluation["kl_divergence"] >= 0 and 0 <= evaluation["top1_agreement"] <= 1
    if weights == "fp32":  # FP32 on either engine: the same greedy tokens as the ONNX Runtime FP32 package
        reference = edge_sdk.load(tiny_package_dir(architecture))
        for prompt in PROMPTS:
            assert lm.generate(prompt, max_new_tokens=24).token_ids == reference.generate(prompt, max_new_tokens=24).token_ids


def _linear_heavy_model(build_dir: Path) -> Path:
    """A Llama whose weights are ~95% in Linear layers (wide MLP, small vocabulary)."""
    from edge_sdk.converters.tiny import build_causal_lm

    path = build_dir / "hf-linear-heavy"
    if not path.exists():
        build_causal_lm("LlamaForCausalLM", path, seed=1, config_overrides=dict(
            hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        ))
    return path


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_and_int4_packages_shrink_by_the_expected_factor(runtime, build_dir):
    model = _linear_heavy_model(build_dir)
    sizes = {}
    for weights in ("fp32", "int8", "int4"):
        engine = "onnxruntime" if weights == "fp32" else runtime  # the FP32 weights take the same bytes on both engines
        out = build_dir / f"size-{engine}-{weights}"
        if not out.exists():
            export(model, out, ExportOptions(runtime=engine, quantization=QuantizationOptions(weights=weights)), progress=False)
        sizes[weights] = edge_sdk.load(out).package.size_bytes
    assert sizes["int8"] <= 0.30 * sizes["fp32"], sizes  # 8 bits + scales: ~0.26x
    assert sizes["int4"] <= 0.35 * sizes["fp32"], sizes  # the bound; 4 bits + scales, zero points: ~0.15x


def _greedy_agreement(reference, candidate, prompts: list[str], new_tokens: int = 32) -> float:
    """Share of the reference's greedy tokens the candidate also picks as its greedy token.

    Each position is judged on the reference's own greedy prefix (teacher forcing): comparing two
    free-running generations would count every token after one early near-tie flip as a miss.
    """
    same = total = 0
    for prompt in prompts:
        result = reference.generate(prompt, max_new_tokens=new_tokens, ignore_eos=True)
        sequence = result.prompt_token_ids + result.token_ids
        picks = candidate.logits(sequence)[len(result.prompt_token_ids) - 1 : -1].argmax(-1)
        same += int((picks == np.array(result.token_ids)).sum())
        total += len(result.token_ids)
    return same / total


TRAINED_PROMPTS = ["Return the", "This module provides", "If the value is", "Create a new", "The default is"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_weight_only_greedy_tokens_match_fp32(runtime, trained_packages):
    reference = edge_sdk.load(trained_packages("onnxruntime", "fp32"))
    int8 = edge_sdk.load(trained_packages(runtime, "int8"))
    assert _greedy_agreement(reference, int8, TRAINED_PROMPTS) >= 0.9
    evaluation = int8.package.manifest["accuracy"]["eval"]
    assert evaluation["top1_agreement"] >= 0.95 and evaluation["kl_divergence"] < 0.01
    assert evaluation["perplexity"] < 1.02 * evaluation["reference_perplexity"]


def test_int4_accuracy_is_measured_and_close(trained_packages):
    int4 = edge_sdk.load(trained_packages("onnxruntime", "int4"))
    evaluation = int4.package.manifest["accuracy"]["eval"]
    assert evaluation["top1_agreement"] >= 0.75 and evaluation["kl_divergence"] < 0.05
    assert evaluation["perplexity"] < 1.1 * evaluation["reference_perplexity"]


@pytest.mark.parametrize("runtime, mode", [("onnxruntime", "dynamic"), ("onnxruntime", "static"), ("openvino", "static")])
def test_activation_quantization_modes(runtime, mode, trained_packages):
    lm = edge_sdk.load(trained_packages(runtime, "int8", mode))
    manifest = lm.package.manifest
    assert manifest["precision"]["activations"].startswith("int8")
    assert manifest["precision"]["recipe"]["options"]["mode"] == mode
    assert manifest["accuracy"]["eval"]["top1_agreement"] > 0.85
    assert len(lm.generate(TRAINED_PROMPTS[0], max_new_tokens=8, ignore_eos=True).token_ids) == 8


def test_calibration_covers_prefill_and_decode_steps(tiny_package_dir, build_dir):
    from edge_sdk.converters.causal_lm import calibration_feeds
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    # calibration runs on the FP32 graph torch exported (attention mask and cache inputs); Gemma 2's
    # package keeps that interface (its soft-capped attention is not rewritten to a shared cache)
    package = edge_sdk.load(tiny_package_dir("Gemma2ForCausalLM")).package
    assert package.graph("decoder")["kv_cache"] == "inputs"
    (build_dir / "calibration-feeds.txt").write_text(CALIBRATION_TEXT)
    options = ExportOptions(quantization=QuantizationOptions(
        weights="int8", mode="static", calibration=build_dir / "calibration-feeds.txt", num_samples=3))
    tokenizer = TextTokenizer.from_file(package.path("tokenizer.json"))
    feeds = calibration_feeds(package.graph_path("decoder"), package.manifest["model"], tokenizer, options)
    past_lengths = [feed["past_key_values.0.key"].shape[2] for feed in feeds]
    sequence_lengths = [feed["input_ids"].shape[1] for feed in feeds]
    assert past_lengths.count(0) == 3 and sequence_lengths.count(64) == 3  # one prefill per sample
    assert sum(1 for p, s in zip(past_lengths, sequence_lengths) if p > 0 and s == 1) == 9  # 3 decode steps each
    again = calibration_feeds(package.graph_path("decoder"), package.manifest["model"], tokenizer, options)
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(feeds, again))  # deterministic


def test_group_size_falls_back_per_layer_and_is_recorded(build_dir):
    """Hidden 96 is not divisible by 64: those layers get 32; the MLP's 128 input channels keep 64.
    The embedding table and LM head are INT8 unless --head-weights int4, and a tied table is stored
    once: on ONNX Runtime the lookup reads the head's quantized blocks; in OpenVINO's IR the head's
    compressed rows and the table's are one stretch of the weights file."""
    import onnx

    from edge_sdk.converters.tiny import build_causal_lm

    assert plan_group_size(576, 128) == 64 and plan_group_size(1536, 128) == 128 and plan_group_size(24, 128) == -1
    model = build_causal_lm("LlamaForCausalLM", build_dir / "hf-96", config_overrides=dict(
        hidden_size=96, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2))
    for runtime, head in (*((r, None) for r in RUNTIMES), ("onnxruntime", "int4")):
        out = export(model, build_dir / f"g96-{runtime}-{head}", ExportOptions(
            runtime=runtime, quantization=QuantizationOptions(weights="int4", group_size=64, head=head)), progress=False)
        manifest = json.loads((out / "manifest.json").read_text())
        layers = manifest["precision"]["recipe"]["layers"]
        # q, k and v share their input and are merged into one product (see onnx_graph.merge_parallel_matmuls)
        assert layers["model.layers.*.self_attn.q_proj+k_proj+v_proj"]["group_size"] == 32, (runtime, layers)
        assert layers["model.layers.*.mlp.down_proj"]["group_size"] == 64, (runtime, layers)
        assert layers["model.layers.*.mlp.gate_proj+up_proj"]["count"] == 2 and layers["model.layers.*.mlp.down_proj"]["bits"] == 4
        head_bits = 4 if head == "int4" else 8
        assert manifest["precision"]["recipe"]["options"]["head"] == (head or "int8")
        assert layers["lm_head"]["bits"] == head_bits and layers["model.embed_tokens"]["bits"] == head_bits, (runtime, layers)
        if runtime == "onnxruntime":
            # 4-bit lookups of the head's blocks compute wrong values before 1.28; 8-bit ones run from 1.23
            assert manifest["runtime"]["min_version"] == ("1.28" if head == "int4" else "1.23")
            graph = onnx.load(str(out / "decoder.onnx"), load_external_data=False).graph
            producer = {o: n for n in graph.node for o in n.output}
            lookup = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
            quantized = {n.input[1] for n in graph.node if n.op_type == "MatMulNBits"}
            assert producer[lookup.input[0]].op_type == "Reshape" and producer[lookup.input[0]].input[0] in quantized
        else:
            vocab = json.loads((model / "config.json").read_text())["vocab_size"]
            tables = _stored_constants(out / "decoder.xml", shape=(vocab, 96))
            assert len(tables) == 2 and len(set(tables)) == 1, tables  # two users, one (offset, size) in decoder.bin


def _stored_constants(xml: Path, shape: tuple[int, ...]) -> list[tuple[str, str]]:
    """(offset, size) in the IR's weights file of each low-bit Constant of ``shape`` (the first two
    dimensions of a grouped weight's [rows, groups, group])."""
    import xml.etree.ElementTree as ET

    found = []
    for layer in ET.parse(xml).getroot().iter("layer"):
        data = layer.find("data")
        if layer.get("type") != "Const" or data is None or data.get("element_type") not in ("u8", "i8", "u4", "i4"):
            continue
        dims = tuple(int(d) for d in data.get("shape", "").split(",") if d)
        if dims[: len(shape)] == shape or (len(dims) == 3 and (dims[0], dims[1] * dims[2]) == shape):
            found.append((data.get("offset"), data.get("size")))
    return found


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(weights="int3"), "unknown --weights 'int3'; valid: fp32, fp16, int8, int4"),
        (dict(weights="int8", mode="static"), "static quantization calibrates activations on real inputs and needs calibration data"),
        (dict(weights="int4", group_size=48), "group size 48 is not a power of two >= 16: ONNX Runtime's MatMulNBits packs"),
        (dict(weights="int4", group_size=8), "group size 8 is not a power of two >= 16"),
        (dict(weights="int4", mode="dynamic"), "int4 is weight-only"),
        (dict(weights="fp32", mode="static"), "needs --weights int8"),
        (dict(weights="int8", mode="dynamic", group_size=64), "--group-size applies to int8/int4 weight-only"),
        (dict(weights="int8", mode="fancy"), "unknown --quant-mode 'fancy'"),
        (dict(weights="int8", head="int4"), "--head-weights applies to --weights int4"),
        (dict(weights="int4", algorithm=("gptq",)), "--algorithm gptq fits the weights to real activations and needs calibration text"),
        (dict(weights="int4", algorithm=("bogus",)), "unknown --algorithm 'bogus'; valid: rtn, k-quant, hqq, gptq, awq, scale-estimation"),
        (dict(weights="int8", algorithm=("hqq",)), "--algorithm chooses how int4 weights are rounded: it needs --weights int4"),
        (dict(weights="int8", ratio=0.5), "--ratio is the share of int4 layers (the rest int8): it needs --weights int4"),
    ],
)
def test_bad_quantization_options_are_refused_with_the_reason(fields, message):
    with pytest.raises(InvalidInputError) as error:
        QuantizationOptions(**fields)
    assert message in str(error.value)


def test_openvino_refuses_dynamic_mode():
    with pytest.raises(InvalidInputError, match="dynamic is an ONNX Runtime mode"):
        ExportOptions(runtime="openvino", quantization=QuantizationOptions(weights="int8", mode="dynamic"))


@pytest.mark.parametrize(
    "runtime, fields, message",
    [
        ("onnxruntime", dict(algorithm=("awq",), calibration=Path(__file__)),
         "--algorithm awq is not available for --runtime onnxruntime; onnxruntime has: rtn, k-quant, hqq"),
        ("openvino", dict(algorithm=("hqq",)), "--algorithm hqq is not available for --runtime openvino; openvino has: rtn, gptq, awq"),
        ("onnxruntime", dict(algorithm=("hqq", "k-quant")), "--runtime onnxruntime takes one --algorithm"),
        ("onnxruntime", dict(ratio=0.8), "--ratio below 1 keeps the layers whose 4-bit rounding moves the output most in INT8, "
                                         "measured on calibration text: pass --calibration PATH"),
    ],
)
def test_int4_algorithms_are_checked_against_the_engine(runtime, fields, message):
    with pytest.raises(InvalidInputError) as error:
        ExportOptions(runtime=runtime, quantization=QuantizationOptions(weights="int4", **fields))
    assert message in str(error.value)


def test_cli_refuses_bad_quantization_in_one_line(tiny_model_dir, tmp_path):
    runner = CliRunner()
    model = str(tiny_model_dir("LlamaForCausalLM"))
    cases = [
        (["--weights", "int3"], "'int3' is not one of 'fp32', 'fp16', 'int8', 'int4'"),
        (["--weights", "int8", "--quant-mode", "static"], "needs calibration data: pass --calibration PATH"),
        (["--weights", "int4", "--group-size", "100"], "not a power of two >= 16"),
        (["--weights", "int4", "--algorithm", "awq", "--calibration", __file__], "--algorithm awq is not available for --runtime onnxruntime"),
        (["--weights", "int4", "--algorithm", "gptq", "--runtime", "openvino"], "needs calibration text: pass --calibration PATH"),
    ]
    for args, fragment in cases:
        result = runner.invoke(main, ["export", model, "-o", str(tmp_path / "out"), "-q", *args])
        assert result.exit_code != 0 and fragment in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_inspect_shows_precision_recipe_size_and_accuracy(package_of):
    result = CliRunner().invoke(main, ["inspect", str(package_of("LlamaForCausalLM", "onnxruntime", "int4"))])
    assert result.exit_code == 0, result.output
    for expected in ("weights int4", "MatMulNBits", "quantized layers", "lm_head", "eval: kl_divergence", "eval: top1_agreement", "kB"):
        assert expected in result.stdout, expected


def test_eval_recomputes_accuracy_against_a_reference(package_of, tiny_package_dir, tmp_path):
    package = package_of("LlamaForCausalLM", "openvino", "int4")
    recorded = edge_sdk.load(package).package.manifest["accuracy"]["eval"]
    accuracy, reference = evaluate_package(package, reference=tiny_package_dir("LlamaForCausalLM"))
    assert reference == str(tiny_package_dir("LlamaForCausalLM"))
    assert accuracy.tokens == recorded["tokens"]
    assert accuracy.kl_divergence == pytest.approx(recorded["kl_divergence"], rel=0.05, abs=1e-6)
    assert accuracy.top1_agreement == pytest.approx(recorded["top1_agreement"], abs=0.01)

    data = tmp_path / "held-out.txt"
    data.write_text("A different text, written only for this test, about rivers, trains and bread. " * 20)
    result = CliRunner().invoke(main, ["eval", str(package), "--data", str(data), "--reference",
                                       str(tiny_package_dir("LlamaForCausalLM")), "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["tokens"] > 100 and figures["kl_divergence"] >= 0 and 0 <= figures["top1_agreement"] <= 1
    assert figures["tokens"] != recorded["tokens"]  # really measured on the new data


def test_text_accuracy_opens_one_model_at_a_time_and_is_exact():
    """The reference is released before the candidate opens; KL and agreement are computed exactly."""
    from edge_sdk.evaluation import log_softmax, text_accuracy

    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 50)).astype(np.float32)
    noisy = table + rng.normal(scale=0.3, size=table.shape).astype(np.float32)
    alive = []

    def opener(name, weights):
        def open_logits():
            assert not alive, f"{name} opened while {alive} is still open"
            alive.append(name)
            logits = lambda ids: weights[np.asarray(ids)]  # noqa: E731
            return _Closing(logits, lambda: alive.remove(name))

        return open_logits

    windows = [list(rng.integers(0, 50, size=20)) for _ in range(3)]
    same = text_accuracy(opener("candidate", table), windows, opener("reference", table))
    assert same.kl_divergence == pytest.approx(0.0, abs=1e-9) and same.top1_agreement == 1.0 and same.tokens == 57
    assert same.perplexity == pytest.approx(same.reference_perplexity)
    alive.clear()
    other = text_accuracy(opener("candidate", noisy), windows, opener("reference", table))
    positions = np.concatenate([np.asarray(w[:-1]) for w in windows])
    p, q = log_softmax(table[positions]), log_softmax(noisy[positions])
    assert other.kl_divergence == pytest.approx(float((np.exp(p) * (p - q)).sum(-1).mean()), rel=1e-5)
    assert other.top1_agreement == pytest.approx(float((p.argmax(-1) == q.argmax(-1)).mean()))


class _Closing:
    """A logits function that reports when it is garbage-collected (the model being released)."""

    def __init__(self, fn, on_close):
        self.fn, self.on_close = fn, on_close

    def __call__(self, ids):
        return self.fn(ids)

    def __del__(self):
        self.on_close()
