"""Whisper students, distil-whisper's recipe on the distillation loop of ``run.py``.

Whisper's cost on a device is the decoder, run once per token, while the encoder runs once per
30 s window: the student keeps the teacher's encoder (copied and frozen) and ``keep_decoder_layers``
of its decoder layers, maximally spaced with the first and last kept. The targets are the teacher's
own greedy transcripts (pseudo-labels) with their timestamps where the teacher predicts them,
computed once; half of the training labels keep the timestamps (under the prompt that asks for
them) and half drop them (under <|notimestamps|>), as distil-whisper trains, so that the student
transcribes either way. When ``transcripts.tsv`` is given, an
utterance whose pseudo-label's WER against it exceeds ``wer_threshold`` (normalised as ``eval``
normalises) is dropped. Loss: ``alpha (0.8) x cross-entropy on the pseudo-labels + T^2 KL(teacher ||
student)`` at T = 2. The encoder is frozen, so its outputs are computed once per utterance and
shared by teacher and student.

Not here: QAT, the teacher cache and on-policy steps (the text student's), refused with a message.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from edge_sdk.distillation.data import Items
from edge_sdk.distillation.losses import cross_entropy, heldout_figures, soft_label_kl
from edge_sdk.distillation.student import copy_teacher_weights, spaced_layers
from edge_sdk.distillation.run import Run
from edge_sdk.errors import InvalidInputError
from edge_sdk.package import sha256_file

log = logging.getLogger("edge_sdk")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aiff", ".aif")
WINDOW_SAMPLES = 30 * 16000  # one Whisper window: 30 s at 16 kHz
_BATCH = 8  # utterances per teacher pass while labelling
TIMESTAMP_SHARE = 0.5  # share of training labels with the teacher's timestamps (distil-whisper's timestamp_probability)


def audio_dataset(directory: Path) -> tuple[list[Path], dict[Path, str]]:
    """The audio files of ``directory`` (sorted) and, with ``transcripts.tsv``, their given transcripts."""
    from edge_sdk.evaluation import read_transcripts

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise InvalidInputError(f"--data {directory}: a Whisper teacher takes a directory of audio files "
                                "(optionally with transcripts.tsv: file<TAB>text per line)")
    transcripts = dict(read_transcripts(directory)) if (directory / "transcripts.tsv").is_file() else {}
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise InvalidInputError(f"{directory} holds no audio files ({', '.join(AUDIO_SUFFIXES)}); give a directory of speech")
    return files, transcripts


def _features(files: list[Path], num_mels: int) -> np.ndarray:
    """Whisper's log-mel features of each file's first 30 s, (n, mels, 3000), by the runtime's own front end."""
    from edge_sdk.converters.whisper_torch import _mel_filters
    from edge_sdk.runtimes.audio import AudioSource, log_mel

    filters = _mel_filters(num_mels)
    features = []
    for path in files:
        try:
            source = AudioSource.open(path)
            samples = source.read(0, WINDOW_SAMPLES)
            source.close()
        except Exception as e:  # an unreadable file names itself
            raise InvalidInputError(f"cannot read audio {path}: {type(e).__name__}: {e}") from e
        features.append(log_mel(samples, filters, WINDOW_SAMPLES))
    return np.stack(features)


class WhisperRun(Run):
    """A Whisper student with the teacher's encoder (frozen) and fewer decoder layers."""

    def __init__(self, teacher_dir: Path, output: Path, data: Path, options, place, resume: bool, progress: bool):
        from edge_sdk.converters.whisper_sources import whisper_source_kind
        from edge_sdk.converters.whisper_torch import load_whisper

        super().__init__(teacher_dir, output, options, place, resume, progress)
        if options.keep_decoder_layers is None:
            raise InvalidInputError(f"{teacher_dir} is a Whisper model: choose its student with --keep-decoder-layers N "
                                    "(the encoder is kept whole and frozen)")
        self._refuse("Whisper", {"--qat": options.qat, "--teacher-cache": options.teacher_cache, "--on-policy": options.on_policy})
        self.alpha = 0.8 if options.alpha is None else options.alpha
        files, transcripts = audio_dataset(data)
        kind = whisper_source_kind(Path(teacher_dir)) or "huggingface"
        self.teacher, self.tokenizer_path, _ = load_whisper(str(teacher_dir), kind)
        self.teacher.eval().requires_grad_(False).to(place.device)
        count = self.teacher.config.decoder_layers
        if options.keep_decoder_layers > count:
            raise InvalidInputError(f"--keep-decoder-layers {options.keep_decoder_layers}: the teacher has {count} decoder "
                                    f"layers; keep 1 to {count}")
        self.layers = spaced_layers(count, options.keep_decoder_layers)
        self.student = self._make_student()
        self.sources = [{"path": str(p.absolute()), "sha256": sha256_file(p)} for p in files]
        self._label(files, transcripts)

    def _make_student(self):
        import copy

        from transformers import WhisperForConditionalGeneration

        config = copy.deepcopy(self.teacher.config)
        config.decoder_layers = len(self.layers)
        torch.manual_seed(self.options.seed)
        student = WhisperForConditionalGeneration(config).to(self.place.device)
        copied = copy_teacher_weights(self.teacher, student, self.layers, path="model.decoder.layers")
        missing = [k for k in student.state_dict() if k not in copied]
        if missing:
            raise InvalidInputError(f"the student's weights {', '.join(missing[:3])} have no counterpart in the teacher")
        student.generation_config = copy.deepcopy(self.teacher.generation_config)
        student.model.encoder.requires_grad_(False)  # frozen: its outputs are computed once and shared
        return student

    @torch.no_grad()
    def _label(self, files: list[Path], transcripts: dict[Path, str]) -> None:
        """Encoder outputs and the teacher's greedy transcripts of every file; the WER filter; the split."""
        import jiwer
        from tokenizers import Tokenizer

        from edge_sdk.evaluation import normalize_transcript

        features = torch.from_numpy(_features(files, self.teacher.config.num_mel_bins)).to(self.place.device)
        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        eot = self.teacher.generation_config.eos_token_id
        eot = eot[0] if isinstance(eot, list) else eot
        self.eot = int(eot)
        no_timestamps = getattr(self.teacher.generation_config, "no_timestamps_token_id", None)
        self.timestamps = no_timestamps is not None  # the teacher predicts timestamps: label with them
        self.timestamp_begin = int(no_timestamps) + 1 if self.timestamps else None
        encoded, labels, timed_labels, texts = [], [], [], []
        with self._bar("Labelling with the teacher", len(files)) as advance:
            for start in range(0, len(files), _BATCH):
                batch = features[start:start + _BATCH]
                encoded.append(self.teacher.model.encoder(batch).last_hidden_state.to(torch.float16).cpu())
                sequences = self.teacher.generate(input_features=batch, return_timestamps=self.timestamps,
                                                  max_length=self.teacher.config.max_target_positions)
                prompts = self._prompts(batch)
                limit = self.teacher.config.max_target_positions + 1  # decoder inputs are the label less its last token
                for prompt, sequence in zip(prompts, sequences.tolist()):
                    # generate returns the transcript's tokens (transformers 5 drops the prompt), end-padded
                    text = [t for t in sequence if t < self.eot]
                    labels.append((prompt + text)[:limit - 1] + [self.eot])
                    if self.timestamps:  # the same transcript with its timestamps, under the prompt that asks for them
                        timed = [t for t in sequence if t < self.eot or t >= self.timestamp_begin]
                        timed_labels.append((prompt[:-1] + timed)[:limit - 1] + [self.eot])
                    texts.append(tokenizer.decode(text, skip_special_tokens=True).strip())
                advance(min(start + _BATCH, len(files)))
        self.encoded = torch.cat(encoded)
        self.utterances = []
        dropped = []
        for index, (path, text) in enumerate(zip(files, texts)):
            entry = {"file": path.name, "pseudo_label": text}
            given = transcripts.get(path)
            if given is not None:
                reference, hypothesis = normalize_transcript(given), normalize_transcript(text)
                if reference:
                    entry["wer"] = float(jiwer.wer(reference, hypothesis or "<empty>"))
                else:  # nothing to compare once normalised: agreement only if the teacher heard nothing either
                    entry["wer"] = 0.0 if not hypothesis else 1.0
                if entry["wer"] > self.options.wer_threshold:
                    dropped.append(entry)
                    continue
            self.utterances.append((index, entry))
        if dropped:
            log.warning("dropped %d of %d utterances whose pseudo-label's WER is above %.0f%%", len(dropped), len(files),
                        100 * self.options.wer_threshold)
        self.dropped = dropped
        self.labels = labels
        self.timed_labels = timed_labels or None
        if len(self.utterances) < 2:
            raise InvalidInputError(f"{len(self.utterances)} utterance(s) left after the WER filter ({len(dropped)} dropped "
                                    f"above {self.options.wer_threshold:.0%}); give at least 2 (one is held back)")
        held = max(1, round(len(self.utterances) * self.options.heldout_fraction))
        self.heldout = [index for index, _ in self.utterances[-held:]]
        self.train = [index for index, _ in self.utterances[:-held]]
        self.batches = Items(len(self.train))

    def _prompts(self, features: torch.Tensor) -> list[list[int]]:
        """The decoder prompt the teacher transcribed under, per utterance: start of transcript, for a
        multilingual model the detected language and the transcribe task, then no timestamps."""
        config = self.teacher.generation_config
        prompt = [int(config.decoder_start_token_id)]
        if getattr(config, "is_multilingual", False):
            languages = self.teacher.detect_language(input_features=features).tolist()
            task = int(config.task_to_id["transcribe"])
            return [prompt + [int(language), task, int(config.no_timestamps_token_id)] for language in languages]
        return [prompt + [int(config.no_timestamps_token_id)]] * len(features)

    def _batch(self, indices: list[int], timed: list[bool] | None = None):
        """Encoder outputs, decoder inputs (the label shifted right), targets and the mask of real
        positions; ``timed[i]``: the i-th utterance's label with timestamps."""
        from transformers.modeling_outputs import BaseModelOutput

        device = self.place.device
        timed = timed or [False] * len(indices)
        sequences = [self.timed_labels[i] if with_time else self.labels[i] for i, with_time in zip(indices, timed)]
        length = max(len(s) for s in sequences) - 1
        inputs = torch.full((len(sequences), length), self.eot, dtype=torch.long)
        targets = torch.full((len(sequences), length), self.eot, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.bool)
        for row, sequence in enumerate(sequences):
            n = len(sequence) - 1
            inputs[row, :n] = torch.tensor(sequence[:-1])
            targets[row, :n] = torch.tensor(sequence[1:])
            mask[row, :n] = True
        hidden = self.encoded[indices].float().to(device)
        return BaseModelOutput(last_hidden_state=hidden), inputs.to(device), targets.to(device), mask.to(device)

    def _loss(self, model, step: int, rows: list[int]) -> torch.Tensor:
        timed = None
        if self.timed_labels is not None:  # distil-whisper's timestamp_probability 0.5: half the labels keep their timestamps
            timed = (np.random.default_rng([self.options.seed, step, 7]).random(len(rows)) < TIMESTAMP_SHARE).tolist()
        encoder, inputs, targets, mask = self._batch([self.train[r] for r in rows], timed)
        logits = model(encoder_outputs=encoder, decoder_input_ids=inputs).logits[mask]
        ce = cross_entropy(logits, targets[mask])
        if not self.options.kd:
            return ce
        with torch.no_grad():
            teacher = self.teacher(encoder_outputs=encoder, decoder_input_ids=inputs).logits[mask]
        return soft_label_kl(logits, teacher, self.options.temperature) + self.alpha * ce

    @torch.no_grad()
    def _figures(self) -> dict:
        self.student.eval()
        student, teacher, targets = [], [], []
        for index in self.heldout:
            encoder, inputs, target, mask = self._batch([index])
            student.append(self.student(encoder_outputs=encoder, decoder_input_ids=inputs).logits[mask])
            teacher.append(torch.log_softmax(self.teacher(encoder_outputs=encoder, decoder_input_ids=inputs).logits[mask].float(), -1))
            targets.append(target[mask])
        self.student.train()
        self.student.model.encoder.eval()
        figures = heldout_figures(student, teacher, targets)
        figures["note"] = "teacher-forced on the teacher's own transcripts of the held-back utterances"
        return figures

    def _save_files(self, staging: Path) -> None:
        from edge_sdk.converters.causal_lm_torch import quiet_transformers

        with quiet_transformers():
            self.student.save_pretrained(staging)
        shutil.copyfile(self.tokenizer_path, staging / "tokenizer.json")

    def _sections(self) -> dict:
        return {
            "teacher": {"decoder_layers": self.teacher.config.decoder_layers, "encoder_layers": self.teacher.config.encoder_layers},
            "student": {"decoder_layers_kept": self.layers, "num_decoder_layers": len(self.layers),
                        "encoder": "the teacher's, copied and frozen",
                        "parameters": sum(p.numel() for p in self.student.parameters()),
                        "decoder_parameters": sum(p.numel() for p in self.student.model.decoder.parameters())},
            "data": {"files": self.sources, "utterances": len(self.labels), "training": len(self.train),
                     "heldout": [self.utterances_by_index(i)["file"] for i in self.heldout],
                     "wer_threshold": self.options.wer_threshold, "dropped_by_wer": self.dropped,
                     "labels_with_timestamps": TIMESTAMP_SHARE if self.timed_labels is not None else 0.0,
                     "timestamped_transcripts": sum(any(t >= self.timestamp_begin for t in label)
                                                    for label in self.timed_labels or []),
                     "pseudo_labels": [entry for _, entry in self.utterances]},
        }

    def utterances_by_index(self, index: int) -> dict:
        return next(entry for i, entry in self.utterances if i == index)
