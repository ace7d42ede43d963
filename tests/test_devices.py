"""Device profiles, host detection, the bench harness, fit checks and reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_sdk.cli import main
from edge_sdk.devices.bench import BenchOptions, bench
from edge_sdk.devices.profiles import ProfileError, detect, load_profile, parse_profile, shipped_profiles

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REQUIRED = ["x86-avx2-laptop", "x86-avx512-vnni", "intel-core-ultra-npu", "raspberry-pi-4", "raspberry-pi-5"]
DOCUMENTED_KEYS = {"schema", "date", "host", "device", "threads", "options", "packages"}
PACKAGE_KEYS = {"package", "task", "runtime", "weights", "activations", "size_mb", "load_seconds", "peak_rss_mb", "threads",
                "workload", "warmup", "runs", "seconds", "latency_ms", "latencies_ms", "metrics", "projection", "fit"}


def test_every_shipped_profile_parses_validates_and_round_trips():
    assert set(REQUIRED) <= set(shipped_profiles())
    for name in shipped_profiles():
        profile = load_profile(name)
        assert profile.name == name and profile.cpu.threads >= 1 and profile.memory.ram_gb > 0
        assert parse_profile(tomllib.loads(profile.to_toml())) == profile
    pi4, pi5, npu = load_profile("raspberry-pi-4"), load_profile("raspberry-pi-5"), load_profile("intel-core-ultra-npu")
    assert (pi4.cpu.cores, pi4.cpu.clock_ghz, pi4.memory.ram_gb) == (4, 1.5, 4) and "asimddp" not in pi4.cpu.isa
    assert (pi5.cpu.cores, pi5.cpu.clock_ghz, pi5.memory.ram_gb) == (4, 2.4, 8) and "asimddp" in pi5.cpu.isa
    assert npu.npu is not None and npu.npu.static_shapes and "int4-sym" in npu.npu.weights


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["cpu"].pop("cores"), "missing field cpu.cores"),
    (lambda d: d["memory"].update(ram_gb="lots"), "memory.ram_gb must be a number"),
    (lambda d: d["cpu"].update(architecture="mips"), "cpu.architecture = 'mips'"),
    (lambda d: d.pop("budgets"), "missing field budgets.max_ram_share"),
    (lambda d: d["runtime"].update(precisions=["int3"]), "runtime.precisions has 'int3'"),
    (lambda d: d["budgets"].update(max_ram_share=1.5), "budgets.max_ram_share = 1.5 is out of range"),
])
def test_a_malformed_profile_names_the_field(edit, field, tmp_path):
    data = tomllib.loads(load_profile("raspberry-pi-5").to_toml())
    edit(data)
    with pytest.raises(ProfileError, match=field.replace("(", r"\(").replace(".", r"\.")):
        parse_profile(data, "my.toml")
    (tmp_path / "broken.toml").write_text("name = \n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(tmp_path / "broken.toml")
    with pytest.raises(ProfileError, match="unknown device profile 'raspberry-pi-9'; shipped: .*raspberry-pi-5"):
        load_profile("raspberry-pi-9")


def test_detect_returns_plausible_values_and_saves_an_editable_profile(tmp_path):
    here = detect(bandwidth_seconds=0.1)
    assert 1 <= here.cpu.cores <= len(os.sched_getaffinity(0)) and here.cpu.threads == here.cpu.cores
    assert here.cpu.simd_bits in (128, 256, 512) and here.cpu.clock_ghz > 0.1
    meminfo_gb = int(Path("/proc/meminfo").read_text().split()[1]) * 1024 / 1e9
    assert abs(here.memory.ram_gb - meminfo_gb) < 0.2
    assert 0.5 < here.memory.bandwidth_gbps < 2000 and here.memory.bandwidth_source == "measured"
    done = CliRunner().invoke(main, ["devices", "detect", "--save", str(tmp_path / "mine.toml"), "--name", "my-box"])
    assert done.exit_code == 0, done.output
    mine = load_profile(tmp_path / "mine.toml")  # a user's file works wherever a name does
    assert mine.name == "my-box" and mine.cpu.cores == here.cpu.cores


@pytest.fixture(scope="module")
def text_package(tiny_package_dir):
    return tiny_package_dir("LlamaForCausalLM")


def test_bench_json_has_the_documented_keys_and_ordered_percentiles(text_package, tmp_path):
    options = BenchOptions(min_runs=5, min_seconds=0, new_tokens=8, threads=1)
    report = bench([str(text_package)], options)
    assert set(report) == DOCUMENTED_KEYS and report["schema"] == "edge-sdk-bench/1"
    row = report["packages"][0]
    assert set(row) == PACKAGE_KEYS and row["runs"] >= 5 and len(row["latencies_ms"]) == row["runs"]
    lat = row["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert row["metrics"]["decode_tokens_per_s"] > 0 and row["metrics"]["first_token_ms"] > 0
    assert row["workload"] == {"prompt_tokens": row["workload"]["prompt_tokens"], "new_tokens": 8}
    assert 1 <= row["workload"]["prompt_tokens"] <= 32
    assert row["peak_rss_mb"] > 10 and row["size_mb"] > 0 and row["projection"] is None
    assert report["device"]["projected"] is False and row["fit"]["verdict"] in ("PASS", "FAIL")


def test_too_big_for_the_budget_fails_and_projections_are_labelled(text_package, tmp_path):
    data = tomllib.loads(load_profile("raspberry-pi-4").to_toml())
    data["name"], data["memory"]["ram_gb"], data["budgets"]["max_ram_share"] = "tiny-board", 0.1, 0.05  # 5 MB
    tiny = tmp_path / "tiny-board.toml"
    tiny.write_text(parse_profile(data).to_toml())
    import dataclasses

    here = detect(bandwidth_seconds=0.1)  # a fixed host shape, so that the projection's direction does not depend on the machine
    host = dataclasses.replace(here, cpu=dataclasses.replace(here.cpu, clock_ghz=3.0, simd_bits=512))
    report = bench([str(text_package)], BenchOptions(min_runs=3, min_seconds=0, new_tokens=4, threads=1), device=str(tiny), host=host)
    row = report["packages"][0]
    assert row["fit"]["verdict"] == "FAIL" and "peak memory" in row["fit"]["reason"] and "> budget 5 MB" in row["fit"]["reason"]
    assert report["device"] == {"name": "tiny-board", "source": str(tiny), "projected": True}
    projection = row["projection"]
    assert projection["projected"] is True and "threads x clock x SIMD" in projection["model"]
    # a Pi 4 at 1.5 GHz with 128-bit NEON is slower than this host: the projected figures say so
    assert projection["metrics"]["first_token_ms"] > row["metrics"]["first_token_ms"]
    from edge_sdk.devices.report import markdown, write_reports

    text = markdown(report)
    assert "(projected)" in text and "FAIL" in text and "not measured" in text
    written = write_reports(report, tmp_path / "report")
    from PIL import Image

    with Image.open(written[2]) as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert json.loads(written[0].read_text())["packages"][0]["projection"]["projected"] is True


def test_cli_bench_prints_a_table_and_refuses_bad_input_in_one_line(text_package, tmp_path):
    runner = CliRunner()
    done = runner.invoke(main, ["bench", str(text_package), "--min-runs", "2", "--min-seconds", "0", "--new-tokens", "4",
                                "--threads", "1", "--json", str(tmp_path / "b.json"), "-q"])
    assert done.exit_code == 0, done.output
    assert "| package |" in done.output and json.loads((tmp_path / "b.json").read_text())["packages"][0]["runs"] >= 2
    for args, message in [([str(tmp_path / "nope")], "does not exist"),
                          ([str(text_package), "--device", "pi-9"], "unknown device profile"),
                          ([str(text_package), "--min-runs", "0"], "--min-runs must be >= 1"),
                          ([str(text_package), "--new-tokens", "1"], "--new-tokens must be >= 2"),
                          ([str(text_package), "--report", str(tmp_path / "no" / "dir")], "does not exist")]:
        done = runner.invoke(main, ["bench", *args, "-q"])
        assert done.exit_code == 1 and message in done.output, done.output
        assert len(done.output.strip().splitlines()) == 1


def test_export_for_a_device_takes_runtime_precision_and_threads_from_its_profile(tiny_model_dir, tmp_path):
    from edge_sdk.converters.export import options_for_device

    options = options_for_device("raspberry-pi-5")
    assert (options.runtime, options.quantization.weights, options.device.threads) == ("onnxruntime", "int8", 4)
    assert options_for_device("raspberry-pi-5", weights="int4", runtime="openvino").runtime == "openvino"  # flags win
    runner = CliRunner()
    done = runner.invoke(main, ["export", str(tiny_model_dir("LlamaForCausalLM")), "-o", str(tmp_path / "pi5"),
                                "--device", "raspberry-pi-5", "-q"])
    assert done.exit_code == 0, done.output
    assert "raspberry-pi-5: runtime onnxruntime, weights int8, 4 threads" in done.output
    manifest = json.loads((tmp_path / "pi5" / "manifest.json").read_text())
    assert manifest["device"]["name"] == "raspberry-pi-5" and manifest["device"]["threads"] == 4
    assert manifest["precision"]["weights"] == "int8" and manifest["runtime"]["name"] == "onnxruntime"
    with pytest.raises(Exception, match="NPU runs OpenVINO graphs"):
        options_for_device("intel-core-ultra-npu", runtime="onnxruntime")


def test_npu_export_has_only_static_shapes_that_compile(tiny_model_dir, package_of, tmp_path, monkeypatch):
    import edge_sdk
    from edge_sdk.converters.export import export, options_for_device
    from edge_sdk.converters.tiny import build_unet
    from edge_sdk.errors import InvalidInputError, PackageError

    options = options_for_device("intel-core-ultra-npu", static_prompt_length=8, static_cache_length=24)
    assert options.runtime == "openvino" and options.quantization.weights == "int4" and options.quantization.sym
    # int8 here (the speech test exports the NPU's int4 sym): the dynamic package to compare is the quantization tests'
    int8 = options_for_device("intel-core-ultra-npu", weights="int8", static_prompt_length=8, static_cache_length=24)
    lm = export(tiny_model_dir("LlamaForCausalLM"), tmp_path / "lm-npu", int8, progress=False)
    unet = export(build_unet(tmp_path / "unet", seed=0), tmp_path / "unet-npu", options, progress=False)
    for package in (lm, unet):
        manifest = json.loads((package / "manifest.json").read_text())
        dims = [d for g in manifest["graphs"] for port in g["inputs"] + g["outputs"] for d in port["shape"]]
        assert dims and all(isinstance(d, int) for d in dims), dims
    inputs = {i["name"]: i["shape"] for i in json.loads((lm / "manifest.json").read_text())["graphs"][0]["inputs"]}
    assert inputs["input_ids"] == [1, 8] and inputs["attention_mask"] == [1, 32] and inputs["past_key_values.0.key"][2] == 24

    # it runs: prompts in chunks of 8 into a 24-slot cache, the same greedy tokens as the dynamic
    # (stateful) package of the same recipe, for a batch whose prompts span one and two chunks.
    # OpenVINO's CPU plugin quantizes activations on the fly for compressed weights, not alike for
    # the two graphs' shapes: off, both compute the same arithmetic
    monkeypatch.setenv("EDGE_SDK_OPENVINO_CONFIG", "[1]")
    with pytest.raises(PackageError, match="EDGE_SDK_OPENVINO_CONFIG must be a JSON object"):
        edge_sdk.load(lm)
    monkeypatch.setenv("EDGE_SDK_OPENVINO_CONFIG", json.dumps({"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}))
    static, dynamic = edge_sdk.load(lm), edge_sdk.load(package_of("LlamaForCausalLM", "openvino", "int8"))
    assert static.context_length == 24
    prompts = ["Hello world", "The quick brown fox jumps over"]
    assert len(static.tokenizer.encode(prompts[1])) > 8
    ours = static.generate(prompts, max_new_tokens=10)
    assert [r.token_ids for r in ours] == [dynamic.generate(p, max_new_tokens=10).token_ids for p in prompts]
    with static.decoder() as a, dynamic.decoder() as b:  # every prompt position's logits, and decode steps
        ids = static.tokenizer.encode(prompts[1])
        np.testing.assert_allclose(a.prefill([ids]), b.prefill([ids]), atol=1e-4)
        np.testing.assert_allclose(a.step([7]), b.step([7]), atol=1e-4)
    assert static.generate("Hello", max_new_tokens=100).finish_reason == "length"  # stops at the fixed cache
    assert len(static.generate("Hello", max_new_tokens=100).token_ids) == 24 - len(static.tokenizer.encode("Hello"))
    with pytest.raises(InvalidInputError, match="context is 24"):
        static.generate("word " * 30, max_new_tokens=2)
    too_long = options_for_device("intel-core-ultra-npu", static_prompt_length=200, static_cache_length=100)
    with pytest.raises(InvalidInputError, match="300 positions, but the model has 256"):  # before any work
        export(tiny_model_dir("LlamaForCausalLM"), tmp_path / "too-long", too_long, progress=False)
    assert not (tmp_path / "too-long").exists()
    images = edge_sdk.load(unet).sample(num_images=3, steps=2, scheduler="ddim")  # batch-1 graph, one image per call
    assert images.shape == (3, 16, 16, 3)


def test_quickstart_table_on_the_bundled_whisper(whisper_packages, monkeypatch):
    from edge_sdk import quickstart

    monkeypatch.setattr(quickstart.shutil, "which", lambda name: None)  # as on a machine without espeak-ng
    result = quickstart.run(packages=whisper_packages, say=lambda line: None)
    assert result["audio_origin"].startswith("the WAV shipped")
    fp32, int8 = result["rows"]
    assert 0.0 <= int8["wer_vs_fp32"] < 50 and int8["size_mb"] < fp32["size_mb"]
    assert "raspberry pi" in fp32["transcript"].lower()
    for row in result["rows"]:
        assert row["real_time_factor"] > 0 and set(row["fit"]) == {"raspberry-pi-4", "raspberry-pi-5"}
        assert row["fit"]["raspberry-pi-4"]["real_time_factor"] > row["fit"]["raspberry-pi-5"]["real_time_factor"]
    text = quickstart.table(result)
    assert "| fp32 |" in text and "| int8 |" in text and "raspberry-pi-4 (projected)" in text
