"""Accuracy of a package against its FP32 reference, in numpy (runs on the device side too).

For text generation: on windows of held-back text, teacher-forced, compare next-token distributions
of the candidate with the reference: mean KL(reference || candidate), top-1 agreement, and the
perplexity of both. For speech: WER and real-time factor on transcribed audio. For image
generation: PSNR against the FP32 package's images from the same noise, and for digit models a
classifier trained on scikit-learn's bundled digits judging the samples.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge_sdk.errors import InvalidInputError, optional_import
from edge_sdk.runtimes.sampling import log_softmax
from edge_sdk.tasks import get_task
from edge_sdk.tasks.text_generation import TASK as TEXT_GENERATION
from edge_sdk.texts import BUNDLED_EVAL_TEXT, read_texts

WINDOW_TOKENS = 128  # tokens per teacher-forced window
MAX_WINDOWS = 16  # windows evaluated at most

LogitsFn = Callable[[list[int]], np.ndarray]  # token ids (T,) -> logits (T, vocab)


def token_windows(token_ids: list[int], window: int = WINDOW_TOKENS, max_windows: int = MAX_WINDOWS) -> list[list[int]]:
    """Consecutive non-overlapping windows of ``window`` tokens (a shorter text gives one shorter window)."""
    if len(token_ids) < 2:
        raise InvalidInputError("the evaluation text has fewer than 2 tokens; give more text")
    windows = [token_ids[i : i + window] for i in range(0, len(token_ids) - 1, window)]
    windows = [w for w in windows if len(w) >= 2]
    return windows[:max_windows]


@dataclass(frozen=True)
class TextAccuracy:
    """Teacher-forced next-token accuracy of a candidate against a reference."""

    windows: int  # text windows evaluated
    tokens: int  # next-token predictions compared
    perplexity: float  # of the candidate on the text
    reference_perplexity: float | None  # of the reference (None without one)
    kl_divergence: float | None  # mean KL(reference || candidate), nats per token
    top1_agreement: float | None  # share of positions where both predict the same next token

    def as_dict(self) -> dict:
        return asdict(self)


def text_accuracy(
    open_candidate: Callable[[], LogitsFn],
    windows: list[list[int]],
    open_reference: Callable[[], LogitsFn] | None = None,
    reference_dir: str | os.PathLike | None = None,
) -> TextAccuracy:
    """Compare the candidate with the reference (if any) on each window of token ids.

    Both are opened on demand and one at a time: the reference's log-probabilities are spilled to
    a temporary directory (one file per window, float32) and the reference is released before
    the candidate is opened, so measuring accuracy never holds two models in memory.
    ``reference_dir``: log-probabilities spilled before (``spill_reference``, on another machine:
    ``eval --device``) instead of ``open_reference``.
    """
    with tempfile.TemporaryDirectory(prefix="edge-sdk-eval-") as spill:
        if open_reference is not None:
            spill_reference(open_reference, windows, spill)
            reference_dir = spill
        return _compare(open_candidate, windows, reference_dir)


def spill_reference(open_reference: Callable[[], LogitsFn], windows: list[list[int]], directory: str | os.PathLike) -> None:
    """The reference's log-probabilities of every window, ``{index}.npy`` (float32) in ``directory``."""
    reference = open_reference()
    for index, ids in enumerate(windows):
        np.save(Path(directory) / f"{index}.npy", log_softmax(reference(ids)[:-1]).astype(np.float32))


def _compare(open_candidate: Callable[[], LogitsFn], windows: list[list[int]], reference_dir) -> TextAccuracy:
    count = sum(len(ids) - 1 for ids in windows)
    nll, ref_nll, kl, agree = 0.0, 0.0, 0.0, 0
    candidate = open_candidate()
    for index, ids in enumerate(windows):
        targets = np.asarray(ids[1:])
        rows = np.arange(len(targets))
        logp = log_softmax(candidate(ids)[:-1])
        nll -= logp[rows, targets].sum()
        if reference_dir is not None:
            ref_logp = log_softmax(np.load(Path(reference_dir) / f"{index}.npy", allow_pickle=False))  # renormalized in float64
            if ref_logp.shape != logp.shape:
                raise InvalidInputError(f"reference log-probabilities of window {index} have shape {ref_logp.shape}, the "
                                        f"package's {logp.shape}: not the same model or text")
            ref_nll -= ref_logp[rows, targets].sum()
            kl += (np.exp(ref_logp) * (ref_logp - logp)).sum()
            agree += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
    has_reference = reference_dir is not None
    return TextAccuracy(
        windows=len(windows),
        tokens=count,
        perplexity=float(np.exp(nll / count)),
        reference_perplexity=float(np.exp(ref_nll / count)) if has_reference else None,
        # float32 spilling leaves ~1e-10 of noise: two equal models can come out a hair below zero
        kl_divergence=max(float(kl / count), 0.0) if has_reference else None,
        top1_agreement=agree / count if has_reference else None,
    )


WINDOWS_FILE = "windows.json"  # beside the spilled log-probabilities: the token windows they belong to


def prepare_device_eval(package: str | os.PathLike, directory: str | os.PathLike, data=None, reference=None,
                        max_windows: int = MAX_WINDOWS, threads: int | None = None, verify: bool = True) -> str | None:
    """Here, before measuring on a device: the evaluation's token windows (``windows.json``) and,
    when a reference is found (as ``evaluate_package`` finds one), its log-probabilities, into
    ``directory``; returns the reference's name. ``evaluate_prepared`` runs on the device."""
    from edge_sdk.runtimes import load

    candidate = load(package, threads=threads, verify=verify)
    if get_task(candidate.package.task) is not TEXT_GENERATION:
        raise InvalidInputError(f"this measures {TEXT_GENERATION.name} packages; {package} is {candidate.package.task}")
    windows = _windows(candidate, data, max_windows)
    open_reference, name = _reference_opener(candidate, reference, threads)
    del candidate
    if open_reference is not None:
        spill_reference(open_reference, windows, directory)
    (Path(directory) / WINDOWS_FILE).write_text(json.dumps({"windows": windows, "reference": name}))
    return name


def evaluate_prepared(package: str | os.PathLike, directory: str | os.PathLike, threads: int | None = None,
                      verify: bool = True) -> TextAccuracy:
    """On the device: the package's accuracy on the windows ``prepare_device_eval`` wrote, against
    the reference log-probabilities beside them (perplexity only when there are none)."""
    from edge_sdk.runtimes import load

    try:
        prepared = json.loads((Path(directory) / WINDOWS_FILE).read_text())
        windows = [[int(t) for t in w] for w in prepared["windows"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidInputError(f"{directory} holds no prepared evaluation ({WINDOWS_FILE}): {e}") from e
    candidate = load(package, threads=threads, verify=verify)
    return _compare(lambda: candidate.logits, windows, directory if prepared.get("reference") else None)


def _windows(candidate, data, max_windows: int) -> list[list[int]]:
    if max_windows < 1:
        raise InvalidInputError(f"--windows must be >= 1, got {max_windows}")
    tokens = [t for text in read_texts(data or BUNDLED_EVAL_TEXT) for t in candidate.tokenizer.encode(text)]
    # a static-shape (NPU) package holds its context in a fixed cache: windows no longer than it
    return token_windows(tokens, window=min(WINDOW_TOKENS, candidate.context_length or WINDOW_TOKENS), max_windows=max_windows)


def evaluate_package(
    package: str | os.PathLike,
    data: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    max_windows: int = MAX_WINDOWS,
    threads: int | None = None,
) -> tuple[TextAccuracy, str | None]:
    """Accuracy of a text-generation package on ``data`` against ``reference``; returns (figures, reference used).

    ``reference`` is an FP32 package or a Hugging Face model directory (the latter needs the
    [convert] extra). Without one, the package's source model is used when it is found locally and
    the conversion stack is installed; otherwise only the package's perplexity is measured.

    Example::

        accuracy, _ = evaluate_package("out/smollm-int4", "held-out.txt", reference="out/smollm")
        print(accuracy.kl_divergence, accuracy.top1_agreement)
    """
    from edge_sdk.runtimes import load

    candidate = load(package, threads=threads)
    if get_task(candidate.package.task) is not TEXT_GENERATION:
        raise InvalidInputError(f"eval measures {TEXT_GENERATION.name} packages here; {package} is {candidate.package.task}")
    windows = _windows(candidate, data, max_windows)
    open_reference, name = _reference_opener(candidate, reference, threads)
    return text_accuracy(lambda: candidate.logits, windows, open_reference), name


def _reference_opener(candidate, reference, threads) -> tuple[Callable[[], LogitsFn] | None, str | None]:
    """How to open the reference (called only when the accuracy pass needs it) and its name."""
    from edge_sdk.package import MANIFEST_NAME, Package
    from edge_sdk.runtimes import load

    if reference is None:
        source = Path(candidate.package.manifest.get("source", {}).get("model", ""))
        if not (source / "config.json").is_file():
            return None, None
        if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers")):
            return None, None  # a device without the conversion stack: perplexity only
        return (lambda: _model_logits(source)), str(source)
    path = Path(reference).expanduser()
    if (path / MANIFEST_NAME).is_file():
        other = Package.open(path, verify=False)  # checked now, loaded when the accuracy pass needs it
        vocab = (other.manifest["model"]["vocab_size"], candidate.package.manifest["model"]["vocab_size"])
        if vocab[0] != vocab[1]:
            raise InvalidInputError(f"reference {path} has a vocabulary of {vocab[0]}, the package {vocab[1]}: not the same model")
        return (lambda: load(path, threads=threads).logits), str(path)
    if (path / "config.json").is_file():
        return (lambda: _model_logits(path)), str(path)
    raise InvalidInputError(f"reference {path} is neither an edge-sdk package nor a Hugging Face model directory")


def _model_logits(model_dir: Path) -> LogitsFn:
    from edge_sdk.converters.causal_lm_torch import model_logits

    return model_logits(model_dir)


# ------------------------------------------------------------------ speech


@dataclass(frozen=True)
class SpeechAccuracy:
    """Word error rate and speed of a speech package on a directory of WAVs with transcripts."""

    utterances: int
    wer: float  # percent, lower-cased, punctuation stripped (jiwer)
    audio_seconds: float
    total_seconds: float  # transcribing all utterances (model load excluded)
    real_time_factor: float  # total_seconds / audio_seconds
    features_seconds: float
    encoder_seconds: float
    decoder_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def normalize_transcript(text: str) -> str:
    """Lower-case, punctuation (but apostrophes) to spaces, single spaces: what WER compares."""
    import re

    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def read_transcripts(directory: Path) -> list[tuple[Path, str]]:
    """``transcripts.tsv`` of ``directory``: one ``file<TAB>text`` line per utterance."""
    directory = Path(directory).expanduser()
    table = directory / "transcripts.tsv"
    if not directory.is_dir() or not table.is_file():
        raise InvalidInputError(f"{directory} must be a directory holding transcripts.tsv (file<TAB>text per line) and the audio files")
    pairs = []
    for number, line in enumerate(table.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, tab, text = line.partition("\t")
        if not tab:
            raise InvalidInputError(f"{table} line {number} has no TAB between the file name and the text")
        path = directory / name.strip()
        if not path.is_file():
            raise InvalidInputError(f"{table} line {number}: {path} does not exist")
        pairs.append((path, text.strip()))
    if not pairs:
        raise InvalidInputError(f"{table} lists no utterances")
    return pairs


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """WER in percent (jiwer) after ``normalize_transcript``, over the utterances whose reference is
    not empty once normalised."""
    jiwer = optional_import("jiwer", "audio", "word error rates")

    pairs = [(normalize_transcript(r), normalize_transcript(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]
    return 100 * jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]) if pairs else 0.0


def evaluate_speech(recognizer, directory: str | os.PathLike, progress=None) -> SpeechAccuracy:
    """WER and real-time factor of a loaded ``SpeechRecognizer`` on ``directory`` (see ``read_transcripts``)."""
    pairs = read_transcripts(Path(directory))
    references, hypotheses = [], []
    totals = dict(audio=0.0, total=0.0, features=0.0, encoder=0.0, decoder=0.0)
    for index, (path, text) in enumerate(pairs):
        result = recognizer.transcribe(path)
        references.append(text)
        hypotheses.append(result.text)
        stats = result.stats
        for key, value in (("audio", stats.audio_seconds), ("total", stats.total_seconds), ("features", stats.features_seconds),
                           ("encoder", stats.encoder_seconds), ("decoder", stats.decoder_seconds)):
            totals[key] += value
        if progress is not None:
            progress(index + 1, len(pairs))
    return SpeechAccuracy(
        utterances=len(pairs), wer=word_error_rate(references, hypotheses), audio_seconds=totals["audio"], total_seconds=totals["total"],
        real_time_factor=totals["total"] / totals["audio"] if totals["audio"] else 0.0,
        features_seconds=totals["features"], encoder_seconds=totals["encoder"], decoder_seconds=totals["decoder"],
    )


# --- image generation: quality of generated digits, fidelity of a package to its FP32 reference ---

DIGITS_SIZE = 16  # scikit-learn's 8x8 digits, upsampled bilinearly


def digits(size: int = DIGITS_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (1797 images, no download) as float images in
    [0, 1] of ``size`` x ``size`` (bilinear upsampling of the 8x8 originals), and their labels."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(np.stack([zoom(image / 16.0, size / 8, order=1) for image in data.images]), 0.0, 1.0)
    return images.astype(np.float32), data.target.astype(np.int64)


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of uint8 ``images`` against ``reference``, over the whole set."""
    if images.shape != reference.shape:
        raise InvalidInputError(f"cannot compare images of shape {images.shape} with {reference.shape}")
    error = np.mean((images.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


@dataclass
class DigitsQuality:
    """How digit-like generated images are, judged by a classifier trained on the real digits."""

    images: int
    confidence: float  # mean top-class probability, percent
    coverage: int  # distinct classes among the predictions (of 10)
    class_counts: list[int]

    def as_dict(self) -> dict:
        return asdict(self)


class DigitsJudge:
    """A logistic-regression classifier of the real digits (trained in about a second, seeded).

    ``held_out_accuracy`` and ``held_out_confidence`` are its figures on real digits it did not
    train on: the ceiling a generator's samples can be compared with.
    """

    def __init__(self, size: int = DIGITS_SIZE, seed: int = 0):
        from sklearn.linear_model import LogisticRegression

        images, labels = digits(size)
        order = np.random.default_rng(seed).permutation(len(images))
        cut = int(0.8 * len(order))
        train, test = order[:cut], order[cut:]
        self.size = size
        self._model = LogisticRegression(max_iter=3000, C=0.5).fit(images[train].reshape(cut, -1), labels[train])
        probabilities = self._model.predict_proba(images[test].reshape(len(test), -1))
        self.held_out_accuracy = float(np.mean(probabilities.argmax(1) == labels[test]) * 100)
        self.held_out_confidence = float(probabilities.max(1).mean() * 100)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """The digit each uint8 image shows: (N, size, size), (N, size, size, 1) or RGB (N, size, size, 3), as the
        image runtimes return them (RGB is averaged to grey)."""
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[-1] in (1, 3):
            images = images.astype(np.float32).mean(-1)
        if images.ndim != 3 or images.shape[1:] != (self.size, self.size):
            raise InvalidInputError(f"the digits judge takes {self.size}x{self.size} images, got {images.shape}")
        return self._model.predict(images.reshape(len(images), -1).astype(np.float32) / 255.0)

    def judge(self, images: np.ndarray) -> DigitsQuality:
        """``images``: uint8 (N, size, size, 1) or (N, size, size), as ``ImageGenerator.sample`` returns."""
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim != 3 or images.shape[1:] != (self.size, self.size):
            raise InvalidInputError(f"the digits judge takes {self.size}x{self.size} single-channel images, got {images.shape}")
        probabilities = self._model.predict_proba(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        counts = np.bincount(probabilities.argmax(1), minlength=10)
        return DigitsQuality(images=len(images), confidence=float(probabilities.max(1).mean() * 100),
                             coverage=int((counts > 0).sum()), class_counts=counts.tolist())


@dataclass
class ImageFidelity:
    """A diffusion package's images against its reference's from the same noise (and, for digit
    models, how digit-like both are)."""

    images: int
    steps: int
    scheduler: str
    psnr_db: float | None  # None without a reference or when identical (see ``identical``)
    mean_abs_diff: float | None  # in [0, 255]
    identical: bool | None  # the images equal the reference's bit for bit (PSNR infinite)
    unet_seconds_per_step: float  # the candidate's UNet time per step (the whole batch), sampling loop excluded
    digits: DigitsQuality | None = None
    reference_digits: DigitsQuality | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_images(candidate, reference=None, num_images: int = 32, steps: int | None = None, scheduler: str = "ddim",
                    seed: int = 0, judge_digits: bool = False) -> ImageFidelity:
    """Sample ``num_images`` from the same initial noise with loaded ``ImageGenerator``s
    ``candidate`` and ``reference`` (optional) and compare; ``judge_digits``: also judge both with
    ``DigitsJudge`` (16x16 single-channel models, e.g. samples/train_digits_ddpm.py). ``steps``:
    the candidate's default (a step-distilled model's own, else 50) unless given."""
    steps = candidate.default_steps if steps is None else steps
    model = candidate.package.manifest["model"]
    shape = (num_images, int(model["channels"]), *model["sample_size"])
    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    images = candidate.sample(num_images, steps, seed=seed, scheduler=scheduler, noise=noise)
    unet_seconds_per_step = candidate.last_stats.unet_seconds_per_step
    others = reference.sample(num_images, steps, seed=seed, scheduler=scheduler, noise=noise) if reference else None
    judge = DigitsJudge() if judge_digits else None
    identical = None if others is None else bool(np.array_equal(images, others))
    return ImageFidelity(
        images=num_images, steps=steps, scheduler=scheduler,
        psnr_db=None if others is None or identical else psnr(images, others),
        identical=identical,
        mean_abs_diff=float(np.abs(images.astype(np.float64) - others).mean()) if others is not None else None,
        unet_seconds_per_step=unet_seconds_per_step,
        digits=judge.judge(images) if judge else None,
        reference_digits=judge.judge(others) if judge and others is not None else None,
    )


# ------------------------------------------------------------------ accuracy at export, one measure per task
# Each runs in a fresh process (edge_sdk.worker) on a request {"candidate": package directory,
# "reference": FP32 package directory or None (the package is the FP32 graph), "data": path or None}
# and returns the manifest's ``accuracy.eval``: its figures and a one-line ``summary``.

def text_package_accuracy(request: dict, step=None) -> dict:
    """Teacher-forced next-token accuracy against the FP32 graph on held-back text (16 windows of 128)."""
    from edge_sdk.package import Package
    from edge_sdk.runtimes import load
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    data, reference, candidate = request.get("data"), request.get("reference"), request["candidate"]
    package = Package.open(candidate, verify=False)
    tokenizer = TextTokenizer.from_file(package.path(package.manifest["tokenizer"]["path"]))
    tokens = [t for text in read_texts(data or BUNDLED_EVAL_TEXT) for t in tokenizer.encode(text)]
    # one model in memory at a time: text_accuracy opens the reference, spills it, then the candidate
    open_reference = (lambda: load(reference, verify=False).logits) if reference else None
    windows = token_windows(tokens)
    result = text_accuracy(lambda: load(candidate, verify=False).logits, windows, open_reference)
    figures = {"data": data or f"bundled edge_sdk/data/{BUNDLED_EVAL_TEXT.name}", "reference": "FP32 ONNX graph" if reference else None,
               **result.as_dict()}
    if result.kl_divergence is None:
        figures["summary"] = f"perplexity {result.perplexity:.2f} (the package is the FP32 graph)"
    else:
        figures["summary"] = (f"vs FP32: KL {result.kl_divergence:.3g}, top-1 {result.top1_agreement:.1%}, "
                              f"perplexity {result.perplexity:.2f} (FP32 {result.reference_perplexity:.2f})")
    if request.get("teacher"):  # a distilled student: how far the package is from its teacher
        teacher = request["teacher"]
        against = text_accuracy(lambda: load(candidate, verify=False).logits, windows, lambda: _model_logits(Path(teacher)))
        figures["teacher"] = {"model": teacher, **against.as_dict()}
        figures["summary"] += (f"; vs teacher: KL {against.kl_divergence:.3g}, top-1 {against.top1_agreement:.1%}, "
                               f"perplexity {against.perplexity:.2f} (teacher {against.reference_perplexity:.2f})")
    return figures


def speech_package_accuracy(request: dict, step=None) -> dict:
    """The package's transcript of the bundled clip against the FP32 graphs': WER and token agreement."""
    jiwer = optional_import("jiwer", "audio", "word error rates")

    from edge_sdk.runtimes import load
    from edge_sdk.tasks.speech_recognition import SPEECH_SAMPLE

    audio = Path(request.get("data") or SPEECH_SAMPLE)
    candidate = load(request["candidate"], verify=False)
    text = candidate.transcribe(audio).text
    figures = {"data": str(audio) if request.get("data") else "bundled edge_sdk/data/speech-sample.wav", "transcript": text}
    if not request.get("reference"):
        return {**figures, "reference": None, "summary": "the package is the FP32 graphs (transcript in accuracy.eval)"}
    del candidate
    reference = load(request["reference"], verify=False)
    expected = reference.transcribe(audio).text
    ids, reference_ids = reference.tokenizer.encode(text), reference.tokenizer.encode(expected)
    # tokens in the longest matching runs of the two sequences (an inserted comma shifts, not breaks, the rest)
    same = sum(block.size for block in difflib.SequenceMatcher(None, ids, reference_ids, autojunk=False).get_matching_blocks())
    agreement = same / max(len(ids), len(reference_ids)) if ids or reference_ids else 1.0
    truth, hypothesis = normalize_transcript(expected), normalize_transcript(text)
    wer = 100 * jiwer.wer(truth, hypothesis) if truth else (0.0 if not hypothesis else 100.0)
    return {**figures, "reference": "FP32 ONNX graphs", "reference_transcript": expected, "token_agreement": agreement,
            "wer_vs_reference": wer,
            "summary": f"vs FP32 on the bundled clip: WER {wer:.1f}%, token agreement {agreement:.1%}"}


ACCURACY_IMAGES, ACCURACY_STEPS = 4, 20  # images sampled from the same noise by package and FP32 graph, DDIM steps


def image_package_accuracy(request: dict, step=None) -> dict:
    """PSNR of the package's images against the FP32 graph's, from the same noise (DDIM, deterministic)."""
    from edge_sdk.runtimes import load

    candidate = load(request["candidate"], verify=False)
    reference = load(request["reference"], verify=False) if request.get("reference") else None
    # a step-distilled model at the steps it was trained for
    result = evaluate_images(candidate, reference, num_images=ACCURACY_IMAGES, steps=candidate.distilled_steps or ACCURACY_STEPS)
    figures = {"reference": "FP32 ONNX graph" if reference else None, "images": result.images, "steps": result.steps,
               "scheduler": result.scheduler, "psnr_db": result.psnr_db, "mean_abs_diff": result.mean_abs_diff,
               "identical": result.identical}
    if reference is None:
        figures["summary"] = "the package is the FP32 graph"
    elif result.identical:
        figures["summary"] = f"vs FP32: {result.images} images identical ({result.steps} DDIM steps, same noise)"
    else:
        figures["summary"] = (f"vs FP32: PSNR {result.psnr_db:.1f} dB over {result.images} images "
                              f"({result.steps} DDIM steps, same noise)")
    return figures
