"""edge-sdk distill on a Whisper teacher: a tiny random Whisper (2 decoder layers) -> a 1-layer student,
on espeak-ng speech generated here. Seconds per run."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.cli import main
from edge_sdk.distillation import DistillationOptions, distill

# one xdist worker runs this module (pytest -n ... --dist loadgroup): the Whisper teacher, its speech and student are built once
pytestmark = pytest.mark.xdist_group("whisper_distillation")

SENTENCES = ("The lamp on the desk is bright.", "Seven ships sailed at dawn.", "Please close the window now.",
             "A river runs under the old bridge.", "We bake bread every morning.", "The clock struck nine.")
BASE = DistillationOptions(keep_decoder_layers=1, steps=12, batch_size=2, learning_rate=3e-3, warmup_steps=2,
                           save_every=0, heldout_fraction=0.34)


@pytest.fixture(scope="session")
def whisper_teacher(tmp_path_factory) -> Path:
    from edge_sdk.converters.tiny import build_whisper

    return build_whisper(tmp_path_factory.mktemp("whisper-teacher") / "hf", seed=0, multilingual=False)


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install -y espeak-ng (.ci/run does this)")
    directory = tmp_path_factory.mktemp("speech")
    for number, sentence in enumerate(SENTENCES):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(140 + 10 * number), "-w", str(directory / f"u{number}.wav"),
                        sentence], check=True, capture_output=True)
    return directory


@pytest.fixture(scope="session")
def whisper_student(whisper_teacher, speech_dir, tmp_path_factory) -> Path:
    return distill(whisper_teacher, tmp_path_factory.mktemp("whisper-student") / "student", speech_dir, BASE, progress=False)


def _record(student: Path) -> dict:
    return json.loads((student / "distill.json").read_text())


def test_student_keeps_the_frozen_encoder_and_learns_the_teachers_decoder(whisper_teacher, whisper_student):
    from safetensors.numpy import load_file

    record = _record(whisper_student)
    assert record["student"]["decoder_layers_kept"] == [1] and record["teacher"]["decoder_layers"] == 2
    heldout = record["heldout"]
    assert heldout["final"]["kl_divergence"] < heldout["initial"]["kl_divergence"], heldout
    teacher, student = load_file(whisper_teacher / "model.safetensors"), load_file(whisper_student / "model.safetensors")
    encoder = [name for name in student if name.startswith("model.encoder.")]
    assert encoder and all((student[name] == teacher[name]).all() for name in encoder)  # bit-identical after training
    assert json.loads((whisper_student / "config.json").read_text())["decoder_layers"] == 1
    assert record["data"]["utterances"] == len(SENTENCES) and not record["data"]["dropped_by_wer"]
    # the teacher predicts timestamps (Whisper's rules make the first token one): half the labels keep them
    assert record["data"]["labels_with_timestamps"] == 0.5 and record["data"]["timestamped_transcripts"] == len(SENTENCES)


def test_whisper_student_exports_transcribes_and_tradeoffs_measure_it(whisper_teacher, whisper_student, speech_dir,
                                                                      tmp_path):
    """edge-sdk tradeoffs exports teacher and student and transcribes the audio with each package:
    WER against the teacher's transcripts and against the references, RTF."""
    import jiwer

    import edge_sdk
    from edge_sdk.evaluation import normalize_transcript

    data = tmp_path / "speech"
    shutil.copytree(speech_dir, data)
    (data / "transcripts.tsv").write_text("".join(f"u{n}.wav\t{s}\n" for n, s in enumerate(SENTENCES)))
    out = tmp_path / "tradeoffs"
    result = CliRunner().invoke(main, ["tradeoffs", str(whisper_teacher), "--student", str(whisper_student), "--device",
                                       "raspberry-pi-5", "--data", str(data), "-o", str(out), "--weights", "fp32",
                                       "--min-runs", "1", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "tradeoffs.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert report["kind"] == "speech" and set(rows) == {"teacher-fp32", "student-fp32"}
    manifest = json.loads((out / "packages" / "student-fp32" / "manifest.json").read_text())
    assert manifest["task"] == "automatic-speech-recognition" and manifest["model"]["num_layers"] == 1
    teacher, student = rows["teacher-fp32"]["quality"], rows["student-fp32"]["quality"]
    assert teacher["wer_vs_teacher"] == 0.0 and student["utterances"] == len(SENTENCES)
    # the figures are the packages' own transcripts scored as eval scores them
    texts = {}
    for name in ("teacher-fp32", "student-fp32"):
        recognizer = edge_sdk.load(out / "packages" / name)
        texts[name] = [normalize_transcript(recognizer.transcribe(data / f"u{n}.wav").text) for n in range(len(SENTENCES))]
    references = [normalize_transcript(sentence) for sentence in SENTENCES]
    assert student["wer"] == pytest.approx(100 * jiwer.wer(references, texts["student-fp32"]))
    assert teacher["wer"] == pytest.approx(100 * jiwer.wer(references, texts["teacher-fp32"]))
    pairs = [(t, s) for t, s in zip(texts["teacher-fp32"], texts["student-fp32"]) if t]
    expected = 100 * jiwer.wer([t for t, _ in pairs], [s for _, s in pairs]) if pairs else 0.0
    assert student["wer_vs_teacher"] == pytest.approx(expected)
    assert rows["student-fp32"]["bench"]["device_real_time_factor"] > 0
    assert "WER vs teacher %" in (out / "tradeoffs.md").read_text()


def test_wer_filter_drops_an_utterance_whose_transcript_disagrees_with_the_teacher(whisper_teacher, whisper_student,
                                                                                 speech_dir, tmp_path):
    """transcripts.tsv agrees with the teacher's own transcripts except for one utterance: that one goes."""
    labels = {entry["file"]: entry["pseudo_label"] for entry in _record(whisper_student)["data"]["pseudo_labels"]}
    labelled = tmp_path / "labelled"
    shutil.copytree(speech_dir, labelled)
    lines = [f"{name}\t{labels[name] if name != 'u2.wav' else 'completely different words entirely'}" for name in sorted(labels)]
    (labelled / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    record = _record(distill(whisper_teacher, tmp_path / "filtered", labelled, replace(BASE, steps=2), progress=False))
    assert [entry["file"] for entry in record["data"]["dropped_by_wer"]] == ["u2.wav"]
    assert record["data"]["dropped_by_wer"][0]["wer"] > 0.1


def test_bad_whisper_input_gets_one_line_and_writes_nothing(whisper_teacher, speech_dir, tmp_path):
    empty = tmp_path / "no-audio"
    empty.mkdir()
    (empty / "notes.txt").write_text("no speech here")
    missing = tmp_path / "missing"
    shutil.copytree(speech_dir, missing)
    (missing / "transcripts.tsv").write_text("u0.wav\tThe lamp on the desk is bright.\nnowhere.wav\tgone\n")
    cases = [((empty, "--keep-decoder-layers", "1"), "holds no audio files"),
             ((missing, "--keep-decoder-layers", "1"), "does not exist"),
             ((speech_dir, "--keep-decoder-layers", "0"), "--keep-decoder-layers must be >= 1"),
             ((speech_dir, "--keep-decoder-layers", "3"), "the teacher has 2 decoder layers"),
             ((speech_dir, "--keep-layers", "1"), "--keep-decoder-layers N")]
    for (data, *flags), message in cases:
        output = tmp_path / "student"
        result = CliRunner().invoke(main, ["distill", str(whisper_teacher), "-o", str(output), "--data", str(data),
                                           "--steps", "1", "-q", *flags])
        assert result.exit_code == 1, (flags, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, (message, result.output)
        assert not output.exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]
