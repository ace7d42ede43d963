"""A student -> teacher cascade: the student answers, and the teacher answers instead when the
student's own confidence in what it produced is below a threshold. numpy and the engine only.

Confidence is read from what the student already computed, so it costs no extra model:

* text: over the answer's tokens, under the student's distribution, one of
  ``mean_logprob`` (the default: the mean log-probability of the tokens it chose),
  ``min_logprob`` (its least likely token) or ``neg_entropy`` (minus the mean entropy of its
  next-token distributions, in nats). Higher is more confident; thresholds are in those units.
* speech: Whisper's own fallback signals per 30-second window, as OpenAI whisper uses them to
  retry a window: the average log-probability of the window's tokens (the confidence, weighted by
  each window's tokens), and the compression ratio of its text (``> 2.4`` is the repetition loop
  Whisper falls into: escalated whatever the log-probability). Windows whose no-speech
  probability is above the recognizer's threshold are silence and do not count.

``calibrate`` measures, on held-back prompts, the quality of the cascade's answers against the
share of requests escalated, for every threshold, next to random routing at the same rates.

Example::

    cascade = edge_sdk.Cascade("out/student-int4", "out/teacher-int8", threshold=-1.2)
    answer = cascade.generate("def parse(path):", max_new_tokens=32)
    print(answer.model, answer.escalated, round(answer.confidence, 2), answer.text)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edge_sdk.errors import InvalidInputError, optional_import
from edge_sdk.runtimes.sampling import log_softmax
from edge_sdk.runtimes.speech_decoding import compression_ratio

TEXT_MEASURES = ("mean_logprob", "min_logprob", "neg_entropy")
COMPRESSION_RATIO_THRESHOLD = 2.4  # OpenAI whisper's: above it a window's text is a repetition loop
DEFAULT_STREAM_TOKENS = 8  # streaming requests: the student's first K tokens decide


def text_confidence(logprobs: Sequence[float], entropies: Sequence[float], measure: str = "mean_logprob") -> float:
    """The student's confidence in an answer from its tokens' log-probabilities and entropies."""
    if measure not in TEXT_MEASURES:
        raise InvalidInputError(f"unknown confidence measure {measure!r}; choose one of {', '.join(TEXT_MEASURES)}")
    if not len(logprobs):
        return 0.0  # nothing generated: nothing to doubt
    if measure == "mean_logprob":
        return float(np.mean(logprobs))
    if measure == "min_logprob":
        return float(np.min(logprobs))
    return -float(np.mean(entropies))


@dataclass(frozen=True)
class SpeechConfidence:
    avg_logprob: float  # token-weighted over the windows with speech
    compression_ratio: float  # of the whole transcript
    no_speech_prob: float  # the largest over the windows

    @property
    def value(self) -> float:
        """The scalar compared with the threshold: the average log-probability, or -inf for a
        repetition loop (compression ratio above 2.4)."""
        return -math.inf if self.compression_ratio > COMPRESSION_RATIO_THRESHOLD else self.avg_logprob


def speech_confidence(transcription) -> SpeechConfidence:
    """Whisper's fallback signals of a ``Transcription`` (its segments carry each window's)."""
    segments = [s for s in transcription.segments if s.text.strip()]
    if not segments:
        return SpeechConfidence(0.0, 0.0, max((s.no_speech_prob for s in transcription.segments), default=0.0))
    weights = np.array([max(len(s.text), 1) for s in segments], dtype=np.float64)
    avg = float(np.average([s.avg_logprob for s in segments], weights=weights))
    return SpeechConfidence(avg, compression_ratio(transcription.text), max(s.no_speech_prob for s in segments))


@dataclass
class CascadeResult:
    """What the cascade answered: the answering model's result and why it was chosen."""

    text: str
    model: str  # "student" or "teacher" (the server puts the served model's name here)
    escalated: bool
    confidence: float  # the student's (for text: in ``measure``'s units)
    result: Any = field(repr=False, default=None)  # the answering runtime's result (GenerationResult, Transcription)
    student_text: str = ""  # what the student said (also when it was not used)


def _loaded(model, threads):
    from edge_sdk.runtimes import load

    return load(model, threads=threads) if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__") else model


class Cascade:
    """A student that hands what it is unsure of to its teacher (the server's ``--fallback``, in Python).

    ``student``/``teacher``: package paths or loaded runtimes of one task (text generation or speech
    recognition). ``threshold``: escalate when the student's confidence is below it (see the module
    for the measures; ``edge-sdk cascade calibrate`` picks one). ``measure``: text only.
    """

    def __init__(self, student, teacher, threshold: float, measure: str = "mean_logprob", threads: int | None = None):
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or math.isnan(threshold):
            raise InvalidInputError(f"threshold must be a number, got {threshold!r}")
        if measure not in TEXT_MEASURES:
            raise InvalidInputError(f"unknown confidence measure {measure!r}; choose one of {', '.join(TEXT_MEASURES)}")
        self.student, self.teacher = _loaded(student, threads), _loaded(teacher, threads)
        kinds = {type(self.student).__name__, type(self.teacher).__name__}
        if len(kinds) != 1 or kinds & {"ImageGenerator"}:
            raise InvalidInputError("a cascade pairs a student and a teacher of one task: text generation or speech "
                                    f"recognition (got {' and '.join(sorted(kinds))})")
        self.threshold, self.measure = float(threshold), measure
        self._engines: dict[int, Any] = {}

    @property
    def is_text(self) -> bool:
        return type(self.student).__name__ == "TextGenerator"

    def engine(self, model):
        """The ``TextEngine`` that runs ``model`` here (stepped by the caller: no thread)."""
        from edge_sdk.serving.engine import TextEngine

        if id(model) not in self._engines:
            self._engines[id(model)] = TextEngine(model, parallel=1)
        return self._engines[id(model)]

    def generate(self, prompt: str, **options) -> CascadeResult:
        """Complete ``prompt`` (options as ``TextGenerator.generate``)."""
        return self._text(lambda lm: lm._encode(prompt), options)

    def chat(self, messages: Sequence[dict], **options) -> CascadeResult:
        """Reply to ``messages`` (each model renders them with its own chat template)."""
        return self._text(lambda lm: lm._chat_ids(messages, None), options)

    def _text(self, encode, options: dict) -> CascadeResult:
        if not self.is_text:
            raise InvalidInputError("this cascade is for speech recognition: use transcribe()")
        student = self.engine(self.student).generate(encode(self.student), self.student.options(**options), scores=True)
        confidence = text_confidence(student.logprobs, student.entropies, self.measure)
        if confidence >= self.threshold:
            return CascadeResult(student.text, "student", False, confidence, student, student.text)
        teacher = self.engine(self.teacher).generate(encode(self.teacher), self.teacher.options(**options))
        return CascadeResult(teacher.text, "teacher", True, confidence, teacher, student.text)

    def transcribe(self, audio, **options) -> CascadeResult:
        """Transcribe ``audio`` (a path or samples; options as ``SpeechRecognizer.transcribe``)."""
        if self.is_text:
            raise InvalidInputError("this cascade is for text generation: use generate() or chat()")
        student = self.student.transcribe(audio, **options)
        confidence = speech_confidence(student).value
        if confidence >= self.threshold:
            return CascadeResult(student.text, "student", False, confidence, student, student.text)
        teacher = self.teacher.transcribe(audio, **options)
        return CascadeResult(teacher.text, "teacher", True, confidence, teacher, student.text)


# ---------------------------------------------------------------------- calibration
def routing_curve(confidence: Sequence[float], student_quality: Sequence[float], teacher_quality: Sequence[float]) -> list[dict]:
    """Quality against escalation rate for every threshold: escalating the k least confident of n
    items, k = 0..n. Each point: threshold (escalate below it), escalation rate, cascade quality,
    and random routing's expected quality at the same rate. Ties in confidence escalate together."""
    c = np.asarray(confidence, dtype=np.float64)
    s, t = np.asarray(student_quality, np.float64), np.asarray(teacher_quality, np.float64)
    n = len(c)
    if n == 0 or len(s) != n or len(t) != n:
        raise InvalidInputError("calibration needs as many student and teacher qualities as confidences, at least one")
    order = np.argsort(c, kind="stable")
    gain = np.concatenate([[0.0], np.cumsum((t - s)[order])])
    points = []
    for k in range(n + 1):
        if 0 < k < n and c[order[k]] == c[order[k - 1]]:
            continue  # a threshold cannot split tied confidences
        threshold = -math.inf if k == 0 else (math.inf if k == n else float((c[order[k - 1]] + c[order[k]]) / 2))
        rate = k / n
        points.append({"threshold": threshold, "escalation_rate": rate, "quality": float((s.sum() + gain[k]) / n),
                       "random_quality": float((1 - rate) * s.mean() + rate * t.mean())})
    return points


def choose_threshold(points: list[dict], target_quality: float | None = None, max_escalation: float | None = None) -> dict:
    """The point to run at: the least escalation reaching ``target_quality``, or the best quality
    escalating at most ``max_escalation`` of requests (default 0.3)."""
    if target_quality is not None and max_escalation is not None:
        raise InvalidInputError("give either a target quality or a maximum escalation rate, not both")
    if target_quality is not None:
        reached = [p for p in points if p["quality"] >= target_quality]
        if not reached:
            best = max(p["quality"] for p in points)
            raise InvalidInputError(f"no threshold reaches quality {target_quality:g} (the best is {best:.4g}, "
                                    "escalating to the teacher as needed); lower the target")
        return min(reached, key=lambda p: p["escalation_rate"])
    limit = 0.3 if max_escalation is None else max_escalation
    if not 0 <= limit <= 1:
        raise InvalidInputError(f"the maximum escalation rate must be in [0, 1], got {limit}")
    allowed = [p for p in points if p["escalation_rate"] <= limit + 1e-12]
    return max(allowed, key=lambda p: (p["quality"], -p["escalation_rate"]))


def recovered(points: list[dict], rate: float) -> dict:
    """Share of the student -> teacher quality gap recovered at ``rate`` by the cascade and by
    random routing (the cascade's point at the largest rate not above it)."""
    start, end = points[0]["quality"], points[-1]["quality"]
    point = max((p for p in points if p["escalation_rate"] <= rate + 1e-12), key=lambda p: p["escalation_rate"])
    gap = end - start
    if gap == 0:
        return {"escalation_rate": point["escalation_rate"], "cascade": 0.0, "random": 0.0}
    return {"escalation_rate": point["escalation_rate"], "cascade": (point["quality"] - start) / gap,
            "random": (point["random_quality"] - start) / gap}


def teacher_loglik(teacher, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """The teacher's mean log-likelihood per token of ``answer_ids`` after ``prompt_ids``."""
    if not answer_ids:
        return 0.0
    ids = list(prompt_ids) + list(answer_ids)
    limit = teacher.context_length
    if limit and len(ids) > limit:
        ids = ids[-limit:]
    logp = log_softmax(teacher.logits(ids)[:-1])
    targets = np.asarray(ids[1:], dtype=np.int64)
    chosen = logp[np.arange(len(targets)), targets][-len(answer_ids):]
    return float(chosen.mean())


def agreement(answer: Sequence[int], reference: Sequence[int]) -> float:
    """Share of the reference's tokens the answer matches position by position."""
    if not reference:
        return 1.0 if not answer else 0.0
    return sum(1 for a, b in zip(answer, reference) if a == b) / len(reference)


def calibrate_text(student, teacher, prompts: Sequence[str], *, max_new_tokens: int = 32, measure: str = "mean_logprob",
                   metric: str = "teacher_loglik", progress=None) -> dict:
    """Per held-back prompt: the student's greedy answer and confidence, the teacher's greedy answer,
    and both answers' quality (``teacher_loglik``: the teacher's mean log-likelihood of the answer's
    tokens; ``agreement``: position-wise token agreement with the teacher's answer, in the teacher's
    tokens). Returns the items and the curve of ``metric``."""
    from edge_sdk.serving.engine import TextEngine

    if metric not in ("teacher_loglik", "agreement"):
        raise InvalidInputError(f"unknown quality metric {metric!r}; choose teacher_loglik or agreement")
    engines = TextEngine(student, parallel=1), TextEngine(teacher, parallel=1)
    items = []
    for i, prompt in enumerate(prompts):
        s_req = engines[0].generate(student._encode(prompt), student.options(max_new_tokens=max_new_tokens, temperature=0.0), scores=True)
        t_ids = teacher._encode(prompt)
        t_req = engines[1].generate(t_ids, teacher.options(max_new_tokens=max_new_tokens, temperature=0.0))
        # the student's answer in the teacher's tokens (the two may tokenize differently)
        s_in_t = teacher.tokenizer.encode(s_req.text, add_special_tokens=False)
        t_answer = [t for t in t_req.token_ids if t not in teacher.eos_token_ids]
        items.append({
            "prompt": prompt,
            "confidence": text_confidence(s_req.logprobs, s_req.entropies, measure),
            "student": {"text": s_req.text, "teacher_loglik": teacher_loglik(teacher, t_ids, s_in_t),
                        "agreement": agreement(s_in_t, t_answer)},
            "teacher": {"text": t_req.text, "teacher_loglik": teacher_loglik(teacher, t_ids, t_answer), "agreement": 1.0},
        })
        if progress is not None:
            progress(i + 1, len(prompts))
    return _curve(items, metric, {"task": "text-generation", "measure": measure, "metric": metric,
                                  "max_new_tokens": max_new_tokens})


def calibrate_speech(student, teacher, audio: Sequence, references: Sequence[str | None] | None = None, progress=None) -> dict:
    """Per held-back recording: both transcripts, the student's confidence, and quality as minus the
    word error rate against the reference transcript (or the teacher's where there is none)."""
    from edge_sdk.evaluation import normalize_transcript as _normalize

    jiwer = optional_import("jiwer", "audio", "word error rates")

    items = []
    references = list(references or [None] * len(audio))
    for i, (clip, reference) in enumerate(zip(audio, references)):
        s, t = student.transcribe(clip), teacher.transcribe(clip)
        truth = _normalize(reference if reference is not None else t.text)

        def quality(text: str) -> float:
            if not truth:
                return 0.0 if not _normalize(text) else -1.0
            return -float(jiwer.wer(truth, _normalize(text) or "<empty>"))

        items.append({"audio": str(clip), "confidence": speech_confidence(s).value,
                      "student": {"text": s.text, "neg_wer": quality(s.text)},
                      "teacher": {"text": t.text, "neg_wer": quality(t.text)}})
        if progress is not None:
            progress(i + 1, len(audio))
    metric = "neg_wer"
    return _curve(items, metric, {"task": "automatic-speech-recognition", "measure": "avg_logprob", "metric": metric,
                                  "reference": "transcripts" if any(r is not None for r in references) else "teacher"})


def _curve(items: list[dict], metric: str, settings: dict) -> dict:
    confidence = [it["confidence"] if math.isfinite(it["confidence"]) else -1e30 for it in items]
    points = routing_curve(confidence, [it["student"][metric] for it in items], [it["teacher"][metric] for it in items])
    return {**settings, "items": items, "curve": points, "student_quality": points[0]["quality"],
            "teacher_quality": points[-1]["quality"]}


def plot_curve(report: dict, path) -> None:
    """The curve as a PNG: cascade and random routing, quality against escalation rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["curve"]
    rates = [p["escalation_rate"] * 100 for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rates, [p["quality"] for p in points], marker=".", label="cascade (student confidence)")
    ax.plot(rates, [p["random_quality"] for p in points], linestyle="--", label="random routing")
    chosen = report.get("chosen")
    if chosen:
        ax.scatter([chosen["escalation_rate"] * 100], [chosen["quality"]], color="red", zorder=3,
                   label=f"threshold {chosen['threshold']:.3g}")
    ax.set_xlabel("requests escalated to the teacher (%)")
    ax.set_ylabel(report["metric"].replace("_", " "))
    ax.set_title("student -> teacher cascade")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
