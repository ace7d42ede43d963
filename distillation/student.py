"""Teacher and student: loading a causal-LM teacher, choosing the layers a student keeps, and
initialising the student from the teacher's weights (embeddings, norms, head, kept layers).

Layer choice as DistilBERT and distil-whisper make it: N layers maximally spaced over the
teacher's, the first and the last always kept (``spaced_layers``).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np

from edge_sdk.errors import InvalidInputError, ModelLoadError

log = logging.getLogger("edge_sdk")


def spaced_layers(teacher_layers: int, keep: int) -> list[int]:
    """``keep`` of ``teacher_layers`` layer indices, maximally spaced, first and last included.

    >>> spaced_layers(12, 6), spaced_layers(8, 4), spaced_layers(8, 1)
    ([0, 2, 4, 7, 9, 11], [0, 2, 5, 7], [7])
    """
    if not 1 <= keep <= teacher_layers:
        raise InvalidInputError(f"--keep-layers {keep}: the teacher has {teacher_layers} layers; keep 1 to {teacher_layers}")
    if keep == 1:
        return [teacher_layers - 1]  # distil-whisper keeps the last layer: it feeds the head
    return [int(i) for i in np.linspace(0, teacher_layers - 1, keep).round().astype(int)]


def load_causal_lm(model_dir: Path, role: str):
    """A transformers causal LM in FP32 (SDPA attention), or a clear error; never remote code."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from edge_sdk.converters.causal_lm_torch import quiet_transformers

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except Exception as e:
        raise ModelLoadError(f"cannot read the {role}'s config in {model_dir}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    declared = getattr(config, "architectures", None) or []
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
            declared and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in declared)):
        kind = ", ".join(getattr(config, "architectures", None) or [config.model_type])
        raise InvalidInputError(f"the {role} {model_dir} is a {kind} model, not a causal language model; edge-sdk distill "
                                "takes a text-generation (*ForCausalLM) teacher and student")
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa",
                                                         trust_remote_code=False)
    except Exception as e:
        raise ModelLoadError(f"transformers cannot load the {role} in {model_dir}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    return model


def layer_list(model) -> tuple[str, "torch.nn.ModuleList"]:  # noqa: F821
    """The (name, ModuleList) of a causal LM's decoder layers: the ModuleList as long as the config's layer count."""
    import torch

    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise InvalidInputError(f"cannot find the {count} decoder layers of this {type(model).__name__}; pass --student instead")


def _config_with_layers(config, layers: list[int]):
    """``config`` with only ``layers`` kept (per-layer lists such as ``layer_types`` subset the same way)."""
    student = copy.deepcopy(config)
    teacher_count = config.num_hidden_layers
    student.num_hidden_layers = len(layers)
    for key, value in vars(config).items():
        if isinstance(value, list) and len(value) == teacher_count and key != "architectures":
            setattr(student, key, [value[i] for i in layers])
    return student


def student_from_teacher(teacher, layers: list[int]):
    """A student with the teacher's config but only ``layers``, initialised with the teacher's weights."""
    from transformers import AutoModelForCausalLM

    count = teacher.config.num_hidden_layers
    bad = [i for i in layers if i >= count]
    if bad:
        raise InvalidInputError(f"--layers {','.join(map(str, bad))}: the teacher has {count} layers (0 to {count - 1})")
    student = AutoModelForCausalLM.from_config(_config_with_layers(teacher.config, layers), attn_implementation="sdpa")
    copied = copy_teacher_weights(teacher, student, layers)
    missing = [k for k in student.state_dict() if k not in copied]
    if missing:
        raise InvalidInputError(f"the student's weights {', '.join(missing[:3])} have no counterpart in the teacher")
    return student


def copy_teacher_weights(teacher, student, layers: list[int], path: str | None = None) -> set[str]:
    """Copy every teacher tensor whose name and shape the student shares, student layer i of the
    layer list ``path`` (default: the decoder layers ``layer_list`` finds) from teacher layer
    ``layers[i]``; returns the student's names that were set."""
    import torch

    path = path or layer_list(teacher)[0]
    source = teacher.state_dict()
    target = student.state_dict()
    prefix = f"{path}."
    copied = set()
    with torch.no_grad():
        for name, tensor in target.items():
            origin = name
            if name.startswith(prefix):
                index, _, rest = name[len(prefix):].partition(".")
                if index.isdigit() and int(index) < len(layers):
                    origin = f"{prefix}{layers[int(index)]}.{rest}"
            if origin in source and source[origin].shape == tensor.shape:
                tensor.copy_(source[origin])
                copied.add(name)
    return copied


def given_student(student: Path, teacher):
    """The student of ``--student``: a Hugging Face directory with weights (used as is), or a config
    (a directory without weights, or a config.json) built with the teacher's matching weights copied."""
    from transformers import AutoConfig, AutoModelForCausalLM

    student = Path(student).expanduser()
    if not student.exists():
        raise InvalidInputError(f"--student {student} does not exist; pass a Hugging Face directory or a config.json")
    has_weights = student.is_dir() and any(p.suffix in (".safetensors", ".bin") for p in student.iterdir())
    if has_weights:
        model = load_causal_lm(student, "student")
    else:
        config_file = student if student.is_file() else student / "config.json"
        try:
            config = AutoConfig.from_pretrained(config_file, trust_remote_code=False)
        except Exception as e:
            raise ModelLoadError(f"cannot read the student's config {config_file}: {type(e).__name__}: {e}") from e
        try:
            model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        except ValueError as e:
            raise InvalidInputError(f"the student config {config_file} is not a causal language model "
                                    f"({config.model_type}); give a *ForCausalLM config") from e
        count = config.num_hidden_layers
        layers = spaced_layers(teacher.config.num_hidden_layers, min(count, teacher.config.num_hidden_layers))
        copied = copy_teacher_weights(teacher, model, layers + [layers[-1]] * (count - len(layers)))
        log.info("student built from %s: %d of %d tensors copied from the teacher", config_file, len(copied), len(model.state_dict()))
    if model.config.vocab_size != teacher.config.vocab_size:
        raise InvalidInputError(f"the student's vocabulary has {model.config.vocab_size} entries and the teacher's "
                                f"{teacher.config.vocab_size}: distillation compares their next-token distributions "
                                "entry by entry, so they must share one tokenizer")
    return model


def _vocabulary(tokenizer_json: Path) -> dict[str, int]:
    """token -> id of a tokenizer.json (BPE/WordPiece keep a dict, Unigram a list of [token, score])."""
    try:
        vocab = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("model", {}).get("vocab", {})
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot read {tokenizer_json}: {e}") from e
    if isinstance(vocab, list):
        return {str(entry[0]): index for index, entry in enumerate(vocab)}
    return dict(vocab)


def check_tokenizers(teacher_dir: Path, student_dir: Path | None) -> None:
    """Refuse a student whose tokenizer is not the teacher's (the logits would mean different tokens)."""
    if student_dir is None or not Path(student_dir).is_dir():
        return
    files = [Path(student_dir) / "tokenizer.json", Path(teacher_dir) / "tokenizer.json"]
    if not files[0].is_file():
        return  # the student takes the teacher's tokenizer
    if not files[1].is_file():
        raise InvalidInputError(f"the student {student_dir} has a tokenizer.json and the teacher {teacher_dir} none; "
                                "cannot check they are the same tokenizer")
    vocabularies = [_vocabulary(f) for f in files]
    if vocabularies[0] != vocabularies[1]:
        student_vocab, teacher_vocab = vocabularies
        differing = next((t for t in sorted(set(student_vocab) | set(teacher_vocab), key=str)
                          if student_vocab.get(t) != teacher_vocab.get(t)), None)
        raise InvalidInputError(
            f"the student's tokenizer ({student_dir}) is not the teacher's: {len(student_vocab)} vs {len(teacher_vocab)} "
            f"tokens, first difference at {differing!r} (student id {student_vocab.get(differing)}, teacher id "
            f"{teacher_vocab.get(differing)}); distillation matches next-token distributions id by id, so give the "
            "student the teacher's tokenizer")
