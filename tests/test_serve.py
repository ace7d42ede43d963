"""`edge-sdk serve`: a real server (the CLI in a child process, on a free loopback port) driven by
the official `openai` client and plain HTTP; the batching engine and the cascade in-process.

One server for the module: a trained docstring LM at INT8 as the student with its FP32 package as
the --fallback teacher, a tiny chat Llama, Whisper tiny.en INT8 and a tiny image package.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from openai import OpenAI

# one xdist worker runs this module (pytest -n ... --dist loadgroup): the server this module starts is started once
pytestmark = pytest.mark.xdist_group("serve")

try:  # the openai client's own HTTP library: httpx2 in openai 3, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

ROOT = Path(__file__).resolve().parent.parent
IMAGE_PACKAGE = ROOT / "tests" / "data" / "legacy-packages" / "image-generation"
KEY = "test-key-7f3a"
PROMPTS = ["Return the number of", "Open a file and", "The class", "def parse(path):", "Create a new", "If the value is",
           "This module provides", "Raise an error"]
MAX_BODY = 2 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _espeak(text: str, path: Path) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install -y espeak-ng (.ci/run does this)")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def text_pair(trained_packages):
    """A student and its teacher: the trained docstring LM at INT8 and at FP32 (ONNX Runtime), the
    packages the quantization tests export (the quantization lever's cascade)."""
    return trained_packages("onnxruntime", "int8"), trained_packages("onnxruntime", "fp32")


@pytest.fixture(scope="module")
def confidences(text_pair):
    """The student's confidence (mean token log-probability) on PROMPTS, and a threshold between them."""
    import edge_sdk

    cascade = edge_sdk.Cascade(text_pair[0], text_pair[1], threshold=0.0)
    values = [cascade.generate(p, max_new_tokens=12, temperature=0.0).confidence for p in PROMPTS]
    ordered = sorted(values)
    middle = len(ordered) // 2
    return values, (ordered[middle - 1] + ordered[middle]) / 2


@pytest.fixture(scope="module")
def server(text_pair, confidences, tiny_package_dir, whisper_packages, sd_package, tmp_path_factory):
    """The server, started as a user starts it, and its log file; stopped at the end."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    student, teacher = text_pair
    command = [sys.executable, "-m", "edge_sdk.cli", "serve", f"student={student}", f"teacher={teacher}",
               f"chat={tiny_package_dir('LlamaForCausalLM')}", f"whisper={whisper_packages['int8']}", f"digits={IMAGE_PACKAGE}",
               f"sd={sd_package()}",
               "--fallback", "student=teacher", "--threshold", repr(confidences[1]), "--port", str(port),
               "--parallel", "4", "--max-queue", "0", "--max-body-bytes", str(MAX_BODY), "--max-images", "2",
               "--max-tokens", "240", "--threads", "1", "--cascade-tokens", "4"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "EDGE_SDK_API_KEY": KEY})
    base = f"http://127.0.0.1:{port}"
    saw_loading = False
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, log.read_text()
            try:
                health = httpx.get(base + "/health", timeout=2)
                if health.status_code == 200:
                    break
                assert health.status_code == 503 and health.json()["status"] == "loading"
                saw_loading = True
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the server did not come up: " + log.read_text()
            time.sleep(0.05)
        yield {"base": base, "log": log, "saw_loading": saw_loading, "process": process}
    finally:
        process.terminate()
        process.wait(timeout=30)


def _client(server) -> OpenAI:
    return OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _get(server, path: str, key: str | None = KEY) -> httpx.Response:
    return httpx.get(server["base"] + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


def _post(server, path: str, key: str | None = KEY, **kwargs) -> httpx.Response:
    return httpx.post(server["base"] + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60, **kwargs)


def _metrics(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(_get(server, "/metrics").text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _metric(values: dict, name: str, **labels) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def _log_lines(server) -> list[dict]:
    return [json.loads(line) for line in server["log"].read_text().splitlines() if line.startswith("{")]


def _assert_serving(server) -> None:
    """The server still answers a completion (after a bad request)."""
    reply = _client(server).completions.create(model="chat", prompt="Hello", max_tokens=2, temperature=0)
    assert reply.usage.completion_tokens == 2


# ---------------------------------------------------------------------- the OpenAI endpoints
def test_health_models_and_completions_with_the_openai_client(server, tiny_package_dir):
    import edge_sdk

    assert _get(server, "/health", key=None).json()["status"] == "ok"  # /health needs no key
    client = _client(server)
    assert {m.id for m in client.models.list().data} == {"student", "teacher", "chat", "whisper", "digits", "sd"}
    lm = edge_sdk.load(tiny_package_dir("LlamaForCausalLM"), threads=1)
    expected = lm.generate("Once upon a time", max_new_tokens=12, temperature=0.0, ignore_eos=True)
    reply = client.completions.create(model="chat", prompt="Once upon a time", max_tokens=12, temperature=0,
                                      logprobs=2, extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    assert choice.text == expected.text and choice.finish_reason == "length" and reply.model == "chat"
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids) and reply.usage.completion_tokens == 12
    assert len(choice.logprobs.token_logprobs) == 12 and all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert all(len(top) == 2 and max(top.values()) >= lp - 1e-9  # the chosen (greedy) token is the most likely
               for top, lp in zip(choice.logprobs.top_logprobs, choice.logprobs.token_logprobs))


def test_streamed_chat_joins_to_the_non_streamed_reply(server):
    client = _client(server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is an NPU?"}]
    whole = client.chat.completions.create(model="chat", messages=messages, max_tokens=24, temperature=0, seed=0)
    stream = client.chat.completions.create(model="chat", messages=messages, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].message.content and whole.choices[0].message.role == "assistant"
    assert reasons[-1] == whole.choices[0].finish_reason and all(r is None for r in reasons[:-1])
    assert usage.completion_tokens == whole.usage.completion_tokens and usage.prompt_tokens == whole.usage.prompt_tokens


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, text_pair):
    """Four greedy requests at once (rows join the running batch at different steps) give exactly
    the tokens each gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    import edge_sdk

    lm = edge_sdk.load(text_pair[1], threads=1)
    lengths = [30, 9, 21, 14]
    expected = [lm.generate(p, max_new_tokens=n, temperature=0.0, ignore_eos=True).text for p, n in zip(PROMPTS, lengths)]
    client = _client(server)

    def ask(i):
        return client.completions.create(model="teacher", prompt=PROMPTS[i], max_tokens=lengths[i], temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, range(4))) == expected


def test_transcription_of_speech_with_tiny_en(server, whisper_packages, tmp_path):
    import edge_sdk

    clip = _espeak("The quick brown fox jumps over the lazy dog.", tmp_path / "fox.wav")
    client = _client(server)
    with open(clip, "rb") as f:
        text = client.audio.transcriptions.create(model="whisper", file=f).text
    assert text == edge_sdk.load(whisper_packages["int8"], threads=1).transcribe(clip).text  # the upload is the file
    assert "quick" in text.lower() and "lazy dog" in text.lower()
    with open(clip, "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper", file=f, response_format="verbose_json",
                                                     prompt="Foxes and dogs.")
    assert verbose.language == "en" and 2.0 < verbose.duration < 5.0 and verbose.segments
    assert all(0 <= s.start < s.end <= verbose.duration + 0.5 and s.avg_logprob <= 0 for s in verbose.segments)
    with open(clip, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper", file=f, response_format="srt")
    assert srt.startswith("1\n00:00:0") and "-->" in srt
    with open(clip, "rb") as f:  # word timestamps, in OpenAI's shape
        worded = client.audio.transcriptions.create(model="whisper", file=f, response_format="verbose_json",
                                                    timestamp_granularities=["word", "segment"])
    assert [w.word for w in worded.words] == text.split() and worded.segments
    assert all(a.end <= b.start + 1e-6 and b.start <= b.end for a, b in zip(worded.words, worded.words[1:]))
    with open(clip, "rb") as f:  # an English-only model cannot translate: a 400, not a traceback
        refused = _post(server, "/v1/audio/translations", files={"file": ("fox.wav", f)}, data={"model": "whisper"})
    assert refused.status_code == 400 and "English-only" in refused.json()["error"]["message"]


def test_image_generation(server):
    from PIL import Image

    client = _client(server)
    first = client.images.generate(model="digits", prompt="", n=2, response_format="b64_json", extra_body={"steps": 4, "seed": 5})
    again = client.images.generate(model="digits", prompt="", n=1, extra_body={"steps": 4, "seed": 5, "scheduler": "ddim"})
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in first.data]
    assert len(images) == 2 and images[0].size == images[1].size and images[0].format == "PNG"
    assert np.asarray(images[0]).std() > 0 and again.data[0].b64_json  # an image, not a blank


# ---------------------------------------------------------------------- metrics and logs
def test_text_to_image_with_the_openai_client(server):
    """OpenAI's images request with a prompt, a size and n, and the extensions (steps, seed, negative_prompt,
    guidance_scale): seeded answers repeat, another prompt draws another image, bad requests get 400s."""
    from PIL import Image

    client = _client(server)
    extra = {"steps": 3, "seed": 4, "negative_prompt": "fog", "guidance_scale": 6.0}
    first = client.images.generate(model="sd", prompt="a red fox", n=2, size="48x32", extra_body=extra)
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in first.data]
    assert [i.size for i in images] == [(48, 32)] * 2 and images[0].format == "PNG"
    again = client.images.generate(model="sd", prompt="a red fox", n=2, size="48x32", extra_body=extra)
    other = client.images.generate(model="sd", prompt="a blue boat", n=1, size="48x32", extra_body=extra)
    assert [d.b64_json for d in again.data] == [d.b64_json for d in first.data]
    assert other.data[0].b64_json != first.data[0].b64_json
    default = client.images.generate(model="sd", prompt="a red fox", extra_body={"steps": 2})
    assert Image.open(io.BytesIO(base64.b64decode(default.data[0].b64_json))).size == (32, 32)  # the package's size
    models = {m["id"]: m for m in _get(server, "/v1/models").json()["data"]}
    assert models["sd"]["task"] == "text-to-image"
    for body, param in [({"model": "sd", "n": 1}, "prompt"), ({"model": "sd", "prompt": "x", "size": "30x30"}, None),
                        ({"model": "sd", "prompt": "x", "size": "big"}, "size"),
                        ({"model": "sd", "prompt": "x", "negative_prompt": 5}, "negative_prompt")]:
        response = _post(server, "/v1/images/generations", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and (param is None or error["param"] == param)
    _assert_serving(server)


def test_metrics_count_what_was_served(server, tmp_path):
    before = _metrics(server)
    client = _client(server)
    replies = [client.completions.create(model="chat", prompt=p, max_tokens=5, temperature=0) for p in ("One", "Two words")]
    client.images.generate(model="digits", prompt="", n=2, extra_body={"steps": 2})
    clip = _espeak("Hello there.", tmp_path / "hello.wav")
    with open(clip, "rb") as f:
        client.audio.transcriptions.create(model="whisper", file=f)
    import soundfile

    seconds = soundfile.info(str(clip)).duration
    after = _metrics(server)

    def moved(name, **labels):
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert moved("edge_sdk_requests_total", model="chat", endpoint="completions", status="200") == 2
    assert moved("edge_sdk_generation_tokens_total", model="chat") == sum(r.usage.completion_tokens for r in replies)
    assert moved("edge_sdk_prompt_tokens_total", model="chat") == sum(r.usage.prompt_tokens for r in replies)
    assert moved("edge_sdk_time_to_first_token_seconds_count", model="chat") == 2
    assert moved("edge_sdk_images_generated_total", model="digits") == 2
    assert moved("edge_sdk_audio_seconds_total", model="whisper") == pytest.approx(seconds, abs=1e-3)
    assert moved("edge_sdk_request_duration_seconds_count", model="whisper", endpoint="transcriptions") == 1
    assert _metric(after, "edge_sdk_requests_running", model="chat") == 0
    line = [entry for entry in _log_lines(server) if entry.get("endpoint") == "completions"][-1]
    assert line["status"] == 200 and line["completion_tokens"] == replies[-1].usage.completion_tokens
    assert "prompt" not in line and "output" not in line  # no content without --log-content


# ---------------------------------------------------------------------- errors and limits
def test_errors_are_openai_error_objects_and_the_server_keeps_serving(server, tmp_path):
    import openai

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server["base"] + "/v1", api_key="wrong", max_retries=0).models.list()
    for key in (None, "wrong"):
        response = _get(server, "/v1/models", key=key)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"

    cases = [  # (request, status, the error's param or code)
        (dict(content=b'{"model": "chat", "prompt": '), 400, None),  # malformed JSON
        (dict(json={"model": "chat", "prompt": "Hi", "n": 2}), 400, "n"),
        (dict(json={"model": "chat", "prompt": "Hi", "max_tokens": 241}), 400, "max_tokens"),
        (dict(json={"model": "chat", "prompt": "Hi", "temperature": -1}), 400, "temperature"),
        (dict(json={"model": "nope", "prompt": "Hi"}), 404, "model"),
        (dict(json={"model": "chat", "prompt": "word " * 400}), 400, "context_length_exceeded"),  # context 256
        (dict(content=b"x" * (MAX_BODY + 1)), 413, "request_too_large"),
    ]
    for request, status, tag in cases:
        response = _post(server, "/v1/completions", **request)
        assert response.status_code == status, (request, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert tag is None or tag in (error["param"], error["code"]), error
        assert "Traceback" not in response.text
        _assert_serving(server)
    assert _get(server, "/v1/unknown").status_code == 404 and "error" in _get(server, "/v1/unknown").json()

    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not audio at all " * 50)
    for name in ("empty.wav", "notes.txt"):
        with open(tmp_path / name, "rb") as f:
            response = _post(server, "/v1/audio/transcriptions", files={"file": (name, f)}, data={"model": "whisper"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "file", response.text
    for temperature in ("hot", "3"):
        with open(tmp_path / "notes.txt", "rb") as f:
            response = _post(server, "/v1/audio/transcriptions", files={"file": ("notes.txt", f)},
                             data={"model": "whisper", "temperature": temperature})
        assert response.status_code == 400 and response.json()["error"]["param"] == "temperature", response.text
    response = _post(server, "/v1/images/generations", json={"model": "digits", "n": 3})
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"
    _assert_serving(server)


def test_a_full_queue_answers_429_with_retry_after(server):
    """--max-queue 0: while the image model works on one request, a second is refused at once."""
    import threading

    long = threading.Thread(target=lambda: _post(server, "/v1/images/generations",
                                                 json={"model": "digits", "n": 2, "steps": 1000, "scheduler": "ddpm"}))
    long.start()
    try:
        deadline = time.time() + 30
        while _metric(_metrics(server), "edge_sdk_requests_running", model="digits") < 1:
            assert time.time() < deadline
            time.sleep(0.02)
        response = _post(server, "/v1/images/generations", json={"model": "digits", "n": 1, "steps": 2})
        assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"
    finally:
        long.join()
    assert _post(server, "/v1/images/generations", json={"model": "digits", "n": 1, "steps": 2}).status_code == 200


def test_a_client_leaving_mid_stream_frees_its_batch_row(server):
    before = _metrics(server)
    body = {"model": "teacher", "prompt": "Open a file and", "max_tokens": 240, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", server["base"] + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=30) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # the first token arrived; now leave
    deadline = time.time() + 20
    while _metric(_metrics(server), "edge_sdk_requests_total", model="teacher", endpoint="completions", status="499") \
            <= _metric(before, "edge_sdk_requests_total", model="teacher", endpoint="completions", status="499"):
        assert time.time() < deadline, "the server did not notice the client leaving"
        time.sleep(0.05)
    assert _metric(_metrics(server), "edge_sdk_requests_running", model="teacher") == 0
    line = [e for e in _log_lines(server) if e.get("model") == "teacher" and e.get("status") == 499][-1]
    assert line["completion_tokens"] < 240  # generation stopped when the client left
    _assert_serving(server)


# ---------------------------------------------------------------------- the engine, in-process
def test_engine_frees_a_cancelled_row_and_reuses_it(text_pair):
    """Rows leave the batch (cancelled or finished) and the freed rows serve new requests: every
    request still gets exactly the tokens it gets alone."""
    import edge_sdk
    from edge_sdk.serving.engine import TextEngine

    lm = edge_sdk.load(text_pair[0], threads=1)
    engine = TextEngine(lm, parallel=3)
    assert engine.slots  # ONNX Runtime's shared-cache graph: continuous batching

    def options(n):
        return lm.options(max_new_tokens=n, temperature=0.0, ignore_eos=True)

    alone = {p: lm.generate(p, options(16)).token_ids for p in PROMPTS[:5]}
    a = engine.submit(lm._encode(PROMPTS[0]), options(16))
    b = engine.submit(lm._encode(PROMPTS[1]), options(16))
    c = engine.submit(lm._encode(PROMPTS[2]), options(16))
    for _ in range(3):
        engine.step()
    assert engine.running == 3
    a.cancel()  # the first row leaves: the last row's cache moves into it
    engine.step()
    assert a.finish_reason == "cancelled" and engine.running == 2
    d = engine.submit(lm._encode(PROMPTS[3]), options(16))  # joins mid-generation, in the freed row
    e = engine.submit(lm._encode(PROMPTS[4]), options(16))  # waits: all three rows are busy
    engine.step()
    assert engine.running == 3 and engine.queued == 1
    while not all(r.done.is_set() for r in (b, c, d, e)):
        engine.step()
    for request, prompt in zip((b, c, d, e), PROMPTS[1:5]):
        assert request.token_ids == alone[prompt] and request.finish_reason == "length"
    assert engine.running == 0 and engine.queued == 0


# ---------------------------------------------------------------------- the cascade
def test_cascade_escalates_exactly_the_requests_below_the_threshold(server, text_pair, confidences):
    import edge_sdk

    values, threshold = confidences
    teacher = edge_sdk.load(text_pair[1], threads=1)
    before = _metrics(server)
    escalated = 0
    for prompt, confidence in zip(PROMPTS, values):
        response = _post(server, "/v1/completions", json={"model": "student", "prompt": prompt, "max_tokens": 12, "temperature": 0})
        body = response.json()
        below = confidence < threshold
        escalated += below
        assert response.headers["x-edge-sdk-escalated"] == ("true" if below else "false"), (prompt, confidence, threshold)
        assert float(response.headers["x-edge-sdk-confidence"]) == pytest.approx(confidence, abs=1e-4)
        assert body["model"] == response.headers["x-edge-sdk-model"] == ("teacher" if below else "student")
        if below:
            assert body["choices"][0]["text"] == teacher.generate(prompt, max_new_tokens=12, temperature=0.0).text
    assert 0 < escalated < len(PROMPTS)  # the constructed threshold splits them
    after = _metrics(server)
    assert _metric(after, "edge_sdk_cascade_escalations_total", model="student", teacher="teacher") - \
        _metric(before, "edge_sdk_cascade_escalations_total", model="student", teacher="teacher") == escalated
    assert _metric(after, "edge_sdk_cascade_confidence_count", model="student") - \
        _metric(before, "edge_sdk_cascade_confidence_count", model="student") == len(PROMPTS)
    # streamed: decided on the first --cascade-tokens 4 tokens, and the stream is one model's answer
    stream = _client(server).completions.create(model="student", prompt=PROMPTS[0], max_tokens=12, temperature=0, stream=True)
    chunks = list(stream)
    assert {c.model for c in chunks} <= {"student", "teacher"} and len({c.model for c in chunks}) == 1


def test_cascade_calibrate_curve_ends_at_student_only_and_teacher_only(text_pair, tmp_path, trained_lm_dir):
    from click.testing import CliRunner

    import edge_sdk
    from edge_sdk.cli import main
    from edge_sdk.serving.cascade import teacher_loglik

    student, teacher = text_pair
    out = tmp_path / "curve.json"
    done = CliRunner().invoke(main, ["cascade", "calibrate", str(student), str(teacher), "--data",
                                     str(trained_lm_dir / "heldout.txt"), "--prompts", "6", "--max-new-tokens", "8",
                                     "--prompt-tokens", "12", "-o", str(out), "-q", "--threads", "1"])
    assert done.exit_code == 0, done.output
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0 and "threshold" in done.output
    curve = report["curve"]
    assert curve[0]["escalation_rate"] == 0 and curve[-1]["escalation_rate"] == 1
    # the endpoints, measured independently: the student alone, the teacher alone (teacher log-likelihood of the answer)
    s_lm, t_lm = edge_sdk.load(student, threads=1), edge_sdk.load(teacher, threads=1)
    prompts = [item["prompt"] for item in report["items"]]
    assert len(prompts) == 6

    def quality(model, prompt):
        answer = model.generate(prompt, max_new_tokens=8, temperature=0.0)
        ids = [t for t in t_lm.tokenizer.encode(answer.text, add_special_tokens=False)] if model is s_lm else \
            [t for t in answer.token_ids if t not in t_lm.eos_token_ids]
        return teacher_loglik(t_lm, t_lm._encode(prompt), ids)

    assert curve[0]["quality"] == pytest.approx(np.mean([quality(s_lm, p) for p in prompts]), abs=1e-6)
    assert curve[-1]["quality"] == pytest.approx(np.mean([quality(t_lm, p) for p in prompts]), abs=1e-6)
    assert curve[0]["random_quality"] == pytest.approx(curve[0]["quality"]) and \
        curve[-1]["random_quality"] == pytest.approx(curve[-1]["quality"])
    rates = [p["escalation_rate"] for p in curve]
    assert rates == sorted(rates) and report["chosen"]["escalation_rate"] <= 0.3 + 1e-9


def test_serve_refuses_bad_arguments_in_one_line(tmp_path, text_pair):
    from click.testing import CliRunner

    from edge_sdk.cli import main

    runner = CliRunner()
    for args, words in [([str(tmp_path)], "not an edge-sdk package"),
                        ([str(text_pair[0]), "--fallback", "x=y", "--threshold", "-1"], "not one of the served"),
                        ([str(text_pair[0]), "--fallback", f"{text_pair[0].name}={text_pair[1]}"], "needs --threshold"),
                        ([str(text_pair[0]), "--parallel", "0"], "parallel")]:
        done = runner.invoke(main, ["serve", *args])
        assert done.exit_code != 0 and words in done.output and len(done.output.strip().splitlines()) == 1, done.output


def test_health_is_503_until_the_packages_are_loaded(text_pair):
    import asyncio

    from edge_sdk.serving.app import ModelSpec, Server

    server = Server([ModelSpec("student", text_pair[0])])
    loading = asyncio.run(server.health(None))
    assert loading.status_code == 503 and json.loads(loading.body)["status"] == "loading"
    server.hub.load()  # what the server's startup runs on a background thread
    try:
        ready = asyncio.run(server.health(None))
        assert ready.status_code == 200 and json.loads(ready.body)["models"] == ["student"]
    finally:
        server.hub.stop()


def test_request_timeout_and_audio_length_limits(whisper_packages, tmp_path):
    """A second server with tight limits: a request over --request-timeout gets 408, a recording
    over --max-audio-seconds 413; both as error objects, and the server goes on."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "edge_sdk.cli", "serve", f"whisper={whisper_packages['int8']}",
                                f"digits={IMAGE_PACKAGE}", "--port", str(port), "--request-timeout", "0.5",
                                "--max-audio-seconds", "1.5", "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = {"base": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(server["base"] + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.05)
        slow = _post(server, "/v1/images/generations", key=None, json={"model": "digits", "steps": 1000, "scheduler": "ddpm"})
        assert slow.status_code == 408 and slow.json()["error"]["code"] == "request_timeout"
        clip = _espeak("This sentence is longer than one and a half seconds.", tmp_path / "long.wav")
        with open(clip, "rb") as f:
            long = _post(server, "/v1/audio/transcriptions", key=None, files={"file": ("long.wav", f)})
        assert long.status_code == 413 and long.json()["error"]["code"] == "audio_too_long"
        quick = _post(server, "/v1/images/generations", key=None, json={"model": "digits", "steps": 2})
        assert quick.status_code == 200  # the timed-out work was abandoned (its sampling stops at the next step)
    finally:
        process.terminate()
        process.wait(timeout=30)
