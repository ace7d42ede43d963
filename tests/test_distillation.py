"""edge-sdk distill: a student learns a trained teacher (4-layer Llama on docstrings, ~10 s to train).

Every run here is seconds: 2-layer students of a 64-wide teacher, 64-token windows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_sdk.cli import main
from edge_sdk.distillation import DistillationOptions, distill
from edge_sdk.errors import EdgeSDKError, InvalidInputError

# one xdist worker runs this module (pytest -n ... --dist loadgroup): the students distilled here are built once
pytestmark = pytest.mark.xdist_group("distillation")

BASE = DistillationOptions(keep_layers=2, steps=40, batch_size=8, sequence_length=64, learning_rate=1e-3, save_every=0)


@pytest.fixture(scope="session")
def teacher(trained_teacher_dir) -> Path:
    return trained_teacher_dir


@pytest.fixture(scope="session")
def data(teacher) -> Path:
    return teacher.parent / "distill-data.txt"


@pytest.fixture(scope="session")
def kd_student(teacher, data, build_dir) -> Path:
    return distill(teacher, build_dir / "student-kd", data, BASE, progress=False)


def _record(student: Path) -> dict:
    return json.loads((student / "distill.json").read_text())


def test_spaced_layers_keep_first_and_last():
    from edge_sdk.distillation.student import spaced_layers

    assert spaced_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice
    assert spaced_layers(4, 2) == [0, 3]
    assert spaced_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(InvalidInputError, match="the teacher has 4 layers"):
        spaced_layers(4, 5)


def test_distillation_lowers_kl_and_beats_cross_entropy_only(kd_student, teacher, data, tmp_path):
    record = _record(kd_student)
    kd = record["heldout"]
    assert record["student"]["layers_kept"] == [0, 3]
    assert kd["final"]["kl_divergence"] < 0.8 * kd["initial"]["kl_divergence"], kd
    assert kd["final"]["top1_agreement"] > kd["initial"]["top1_agreement"]
    ce = _record(distill(teacher, tmp_path / "ce", data, replace(BASE, kd=False), progress=False))["heldout"]
    assert ce["initial"] == kd["initial"]  # same start: the same layer-dropped teacher
    assert kd["final"]["kl_divergence"] < ce["final"]["kl_divergence"], (kd, ce)
    # the student is a Hugging Face directory with what export needs, and the record beside it
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "distill-loss.png", "heldout.txt"):
        assert (kd_student / name).is_file(), name
    assert json.loads((kd_student / "config.json").read_text())["num_hidden_layers"] == 2
    assert record["data"]["files"][0]["sha256"] and len(record["loss_curve"]) == BASE.steps
    assert record["peak_rss_mb"] > 0


def test_on_policy_loss_is_finite_and_decreasing(teacher, data, tmp_path):
    options = replace(BASE, on_policy=1.0, beta=0.5, steps=18, prompt_tokens=16)
    losses = _record(distill(teacher, tmp_path / "gkd", data, options, progress=False))["loss_curve"]
    assert all(np.isfinite(losses)) and min(losses) >= 0
    assert np.mean(losses[-6:]) < np.mean(losses[:6]), losses


def test_teacher_cache_replaces_the_teacher(teacher, data, tmp_path):
    cache = tmp_path / "cache"
    options = replace(BASE, teacher_cache=cache, top_k=64)
    record = _record(distill(teacher, tmp_path / "cached", data, options, progress=False))
    assert record["recipe"]["teacher_outputs"] == "top-64 cache"
    assert record["heldout"]["final"]["kl_divergence"] < record["heldout"]["initial"]["kl_divergence"]
    assert json.loads((cache / "meta.json").read_text())["complete"]
    stamp = (cache / "values.npy").stat().st_mtime_ns
    distill(teacher, tmp_path / "cached-again", data, options, progress=False)
    assert (cache / "values.npy").stat().st_mtime_ns == stamp  # computed once, reused


def test_two_gloo_processes_match_one_at_the_same_global_batch(teacher, data, tmp_path):
    """torchrun (torch.distributed's own launcher) with 2 CPU processes: DDP averages the gradients of
    two half-batches, which is the gradient of the whole batch one process computes."""
    options = replace(BASE, steps=5)
    single = _record(distill(teacher, tmp_path / "one", data, options, progress=False))["loss_curve"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "edge_sdk.distillation", str(teacher), "-o", str(tmp_path / "two"), "--data", str(data),
               "--keep-layers", "2", "--steps", "5", "--batch-size", "8", "--sequence-length", "64",
               "--save-every", "0", "-q"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    record = _record(tmp_path / "two")
    assert (record["processes"], record["backend"], record["device"]) == (2, "gloo", "cpu")
    # float sums in another order: equal to ~1e-6; the tolerance stated here is 1e-4 per step
    np.testing.assert_allclose(record["loss_curve"], single, rtol=0, atol=1e-4)


def test_resume_after_ctrl_c_gives_the_uninterrupted_result(teacher, data, tmp_path):
    from safetensors.numpy import load_file

    options = replace(BASE, steps=8, keep_layers=None, layers=(0, 3))  # explicit layers survive the checkpoint's JSON too
    whole = distill(teacher, tmp_path / "whole", data, options, progress=False)

    def interrupt(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; the run stops after this step

    output = tmp_path / "resumed"
    with pytest.raises(EdgeSDKError, match="--resume"):
        distill(teacher, output, data, options, progress=False, on_step=interrupt)
    assert not output.exists() and (tmp_path / "resumed.checkpoint" / "checkpoint.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    distill(teacher, output, data, options, progress=False, resume=True)
    assert _record(output)["loss_curve"] == pytest.approx(_record(whole)["loss_curve"], abs=1e-6)
    a, b = load_file(whole / "model.safetensors"), load_file(output / "model.safetensors")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6
    assert not (tmp_path / "resumed.checkpoint").exists()  # removed once the student is written


def test_qat_int4_package_holds_integers_and_matches_the_fake_quantized_forward(teacher, data, tmp_path):
    """The QAT student's fake-quantized PyTorch forward against its exported int4 package: with
    MatMulNBits computing in FP32 (accuracy level 1) the logits agree to 1e-3 of their range, so the
    integers in the package are the trained ones; at the default level 4 (int8 activations inside
    MatMulNBits) to 2% of it, with the same greedy choice at >= 95% of positions (near-ties may flip)."""
    import onnx
    import torch
    from transformers import AutoModelForCausalLM

    import edge_sdk
    from edge_sdk.converters.export import ExportOptions, export
    from edge_sdk.distillation import qat
    from edge_sdk.quantization import QuantizationOptions

    options = replace(BASE, steps=20, qat="int4", group_size=32, exports=(("onnxruntime", "int4"),))
    student = distill(teacher, tmp_path / "qat", data, options, progress=False)
    chained = tmp_path / "qat-onnxruntime-int4"
    manifest = json.loads((chained / "manifest.json").read_text())
    assert manifest["precision"]["recipe"]["options"]["group_size"] == 32
    assert manifest["accuracy"]["eval"]["teacher"]["kl_divergence"] > 0  # measured against the teacher too
    exact = export(student, tmp_path / "qat-level1", ExportOptions(quantization=QuantizationOptions(
        weights="int4", group_size=32, accuracy_level=1)), progress=False)

    model = AutoModelForCausalLM.from_pretrained(student)
    assert not model.config.tie_word_embeddings  # the head was untied to be quantized on its own
    qat.attach(model, qat.QATSpec(bits=4, group_size=32, sym=False))
    ids = edge_sdk.load(exact).tokenizer.encode((student / "heldout.txt").read_text())[:96]
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    scale = float(np.abs(reference).max())
    for package, tolerance, agreement in ((exact, 1e-3, 1.0), (chained, 2e-2, 0.95)):
        logits = edge_sdk.load(package).logits(ids)
        assert float(np.abs(logits - reference).max()) <= tolerance * scale, package
        assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= agreement, package
        graph = onnx.load(str(package / "decoder.onnx"), load_external_data=False)
        ops = {node.op_type for node in graph.graph.node}
        assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and not ops & {"QuantizeLinear", "DequantizeLinear"}


def test_fake_quantization_is_onnxruntimes_rounding():
    """The QAT simulation against ONNX Runtime's own blockwise quantizer (MLAS), bit for bit."""
    import torch
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    from edge_sdk.distillation.qat import quantize_matmul_weight

    rng = np.random.default_rng(0)
    for bits, quantize in ((4, quantize_matmul_4bits), (8, quantize_matmul_8bits)):
        for sym, columns in ((False, 64), (True, 64), (False, 80), (True, 80)):  # 80: a partial last block, zero-padded
            weight = (rng.standard_normal((24, columns)) * 0.05).astype(np.float32)  # (out, in) as nn.Linear holds it
            weight[0] = np.abs(weight[0])  # a row with no negative value: the range is stretched to 0
            block, rows = 32, weight.shape[0]
            padded = -(-columns // block) * block
            per_byte = 8 // bits
            packed = np.zeros((rows, padded // block, block // per_byte), np.uint8)
            scales = np.zeros((rows, padded // block), np.float32)
            zeros = np.zeros((rows, (padded // block + per_byte - 1) // per_byte), np.uint8)
            source = np.zeros((padded, rows), np.float32)
            source[:columns] = weight.T  # the quantizer pads K with zeros the same way
            quantize(packed, source, scales, zeros, block, rows, padded, sym)
            if bits == 4:
                q = np.stack([packed & 15, packed >> 4], -1).reshape(rows, -1, block)
                z = np.stack([zeros & 15, zeros >> 4], -1).reshape(rows, -1)[:, :padded // block]
            else:
                q, z = packed.reshape(rows, -1, block), zeros[:, :padded // block]
            if sym:
                z = np.full(scales.shape, 1 << (bits - 1))
            expected = ((q.astype(np.float32) - z[..., None]) * scales[..., None]).reshape(rows, padded)[:, :columns]
            ours = quantize_matmul_weight(torch.from_numpy(weight), bits, block, sym).numpy()
            np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7, err_msg=f"int{bits} sym={sym} in={columns}")


def _run(*args) -> object:
    return CliRunner().invoke(main, ["distill", *map(str, args)])


def test_bad_input_gets_one_line_and_writes_nothing(teacher, data, kd_student, tmp_path):
    from transformers import AutoConfig

    from edge_sdk.converters.tiny import train_tokenizer

    common = ["--steps", "2", "--sequence-length", "64", "-q"]
    other_tokenizer = tmp_path / "other-student"
    other_tokenizer.mkdir()
    train_tokenizer(300, corpus=("completely different words here",), repeats=2).save_pretrained(other_tokenizer)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "short.txt").write_text("Too short.")
    bert = tmp_path / "bert"
    AutoConfig.for_model("bert", architectures=["BertForMaskedLM"], hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64).save_pretrained(bert)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("the user's file")
    cases = [
        ((teacher, "--data", data, "--student", other_tokenizer), "not the teacher's"),
        ((teacher, "--data", data, "--keep-layers", "0"), "--keep-layers must be >= 1"),
        ((teacher, "--data", data, "--keep-layers", "9"), "the teacher has 4 layers"),
        ((teacher, "--data", data, "--layers", "0,7"), "the teacher has 4 layers"),
        ((teacher, "--data", tmp_path / "empty.txt", "--keep-layers", "2"), "contains no text"),
        ((teacher, "--data", tmp_path / "missing.txt", "--keep-layers", "2"), "does not exist"),
        ((teacher, "--data", tmp_path / "short.txt", "--keep-layers", "2"), "fewer than one sequence"),
        ((bert, "--data", data, "--keep-layers", "1"), "not a causal language model"),
        ((teacher, "--keep-layers", "2"), "--data is required"),
    ]
    for args, message in cases:
        output = tmp_path / "student"
        result = _run(*args, "-o", output, *common)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, (message, result.output)
        assert not output.exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name or ".checkpoint" in p.name]
    result = _run(teacher, "--data", data, "--keep-layers", "2", "-o", kd_student, *common)
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = _run(teacher, "--data", data, "--keep-layers", "2", "-o", occupied, "--overwrite", *common)
    assert result.exit_code == 1 and "not a student" in result.output
    assert (occupied / "notes.txt").read_text() == "the user's file"


def test_tradeoffs_puts_teacher_and_student_side_by_side(teacher, kd_student, tmp_path):
    out = tmp_path / "tradeoffs"
    result = CliRunner().invoke(main, ["tradeoffs", str(teacher), "--student", str(kd_student), "--device", "raspberry-pi-5",
                                       "--data", str(kd_student / "heldout.txt"), "-o", str(out), "--weights", "fp32",
                                       "--min-runs", "1", "--new-tokens", "4", "--windows", "2", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "tradeoffs.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"teacher-fp32", "student-kd-fp32"}
    # the teacher's own FP32 package is the teacher: no distance; the student is measurably away from it
    assert rows["teacher-fp32"]["quality"]["kl_divergence"] < 1e-4
    assert rows["student-kd-fp32"]["quality"]["kl_divergence"] > 10 * rows["teacher-fp32"]["quality"]["kl_divergence"]
    assert rows["student-kd-fp32"]["size_mb"] < rows["teacher-fp32"]["size_mb"]
    assert report["device"]["name"] == "raspberry-pi-5" and report["best"] in rows
    assert any(row["pareto"] for row in rows.values())
    assert (out / "tradeoffs.png").stat().st_size > 1000 and "Best fitting" in (out / "tradeoffs.md").read_text()


def test_a_student_config_is_built_with_the_teachers_matching_weights(teacher, data, tmp_path):
    import edge_sdk

    config = json.loads((teacher / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "student.json").write_text(json.dumps(config))
    student = edge_sdk.distill(teacher, tmp_path / "from-config", data, student=tmp_path / "student.json", steps=4,
                               sequence_length=64, save_every=0, progress=False)
    record = _record(student)
    assert record["student"]["num_layers"] == 3 and record["student"]["layers_kept"] is None
    # started from the teacher's embeddings, norms, head and 3 spaced layers: already close to it
    assert record["heldout"]["initial"]["kl_divergence"] < 0.5
