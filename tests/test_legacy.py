"""Packages written before the task registry (old task names, old Whisper cache names) load and
run unchanged: the same tokens, transcript and image as the code that wrote them produced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edge_sdk
from edge_sdk.devices.bench import SPEECH_SAMPLE

LEGACY = Path(__file__).parent / "data" / "legacy-packages"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    # a copy: loading must not need (or make) any change to the package directory
    return Path(shutil.copytree(LEGACY, tmp_path_factory.mktemp("legacy") / "packages"))


def test_old_text_package_generates_the_same_tokens(legacy):
    lm = edge_sdk.load(legacy / "text-generation", threads=1)
    assert lm.generate("Hello", max_new_tokens=8, ignore_eos=True).token_ids == EXPECTED["text_tokens"]


def test_old_speech_package_loads_under_the_new_task_name_and_transcribes_the_same(legacy):
    asr = edge_sdk.load(legacy / "speech-recognition", threads=1)
    assert json.loads((legacy / "speech-recognition" / "manifest.json").read_text())["task"] == "speech-recognition"
    assert asr.package.task == "automatic-speech-recognition"
    # the decoding it was recorded with (greedy, no fallback; beam 5 with fallback is today's default)
    result = asr.transcribe(SPEECH_SAMPLE, beam_size=1, temperature=0.0, condition_on_previous_text=False)
    assert result.text == EXPECTED["transcript"] and len(result.segments) == EXPECTED["segments"]


def test_old_image_package_samples_the_same_image(legacy):
    generator = edge_sdk.load(legacy / "image-generation", threads=1)
    assert generator.package.task == "unconditional-image-generation"
    image = generator.sample(num_images=1, steps=3, seed=0, scheduler="ddim")
    assert np.array_equal(image.reshape(-1), np.array(EXPECTED["image"], dtype=np.uint8))
