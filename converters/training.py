"""Training small models on CPU from data built locally (no downloads): a causal LM, a DDPM UNet.

Quantization accuracy only means something on a model with real structure; random weights give
near-uniform next-token distributions. This trains one: a byte-level BPE tokenizer and a small
Llama on the docstrings of Python's standard library (parsed with ``ast``, nothing imported), with
a deterministic held-back split for evaluation. Used by ``samples/train_tiny_lm.py`` (the
benchmark's accuracy model, minutes) and by tests (seconds, smaller).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("edge_sdk")

HELDOUT_FILE = "heldout.txt"  # written beside the model: text the model never saw
_SKIPPED_DIRECTORIES = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def stdlib_docstrings(max_files: int | None = None) -> list[tuple[str, str]]:
    """(relative file path, docstrings joined) for the standard library's modules, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not (_SKIPPED_DIRECTORIES & set(p.relative_to(root).parts)))
    corpus = []
    for path in files[:max_files] if max_files else files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        docs = [ast.get_docstring(node) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        text = "\n\n".join(d for d in docs if d and len(d) > 20)
        if text:
            corpus.append((path.relative_to(root).as_posix(), text))
    return corpus


def split_heldout(corpus: list[tuple[str, str]], every: int = 20) -> tuple[list[str], list[str]]:
    """Deterministic split by a hash of the file path: about 1 file in ``every`` is held back."""
    train, heldout = [], []
    for name, text in corpus:
        bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % every
        (heldout if bucket == 0 else train).append(text)
    return train, heldout


@dataclass(frozen=True)
class TrainingOptions:
    """A short pre-training run; the defaults fit in ~10 minutes on 2 cores."""

    steps: int = 1800  # optimizer steps at most (the time budget usually ends it first on 2 cores)
    max_seconds: float | None = 540.0  # stop early when this much time has passed (None: no limit)
    batch_size: int = 16  # sequences per step
    sequence_length: int = 128  # tokens per sequence
    learning_rate: float = 3e-3  # peak AdamW learning rate (cosine decay after warm-up)
    warmup_steps: int = 30  # linear warm-up
    seed: int = 0  # weights, tokenizer-independent sampling of training windows
    threads: int | None = None  # torch intra-op threads (None: torch's default)


def learning_rate(step: int, options) -> float:
    """Linear warm-up to ``options.learning_rate``, then cosine decay to a tenth of it at ``options.steps``."""
    if step < options.warmup_steps:
        return options.learning_rate * (step + 1) / options.warmup_steps
    progress = (step - options.warmup_steps) / max(1, options.steps - options.warmup_steps)
    return options.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_causal_lm(
    output: Path,
    train_texts: list[str],
    heldout_texts: list[str],
    config_overrides: dict,
    tokenizer_vocab_size: int,
    options: TrainingOptions,
    on_step=None,
) -> dict:
    """Train a Llama-architecture LM on ``train_texts`` and save it (with tokenizer) to ``output``.

    Writes ``heldout.txt`` and ``training.json`` (loss curve, tokens seen, time) beside the model.
    ``on_step(step, loss)`` is called after every step (progress reporting).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edge_sdk.converters.causal_lm_torch import quiet_transformers
    from edge_sdk.converters.tiny import TINY_CONFIGS, train_tokenizer

    if options.threads:
        torch.set_num_threads(options.threads)
    start = time.perf_counter()
    tokenizer = train_tokenizer(tokenizer_vocab_size, corpus=train_texts, repeats=1)
    eos = tokenizer.eos_token_id
    tokens = np.array([t for text in train_texts for t in tokenizer(text)["input_ids"] + [eos]], dtype=np.int64)
    settings = {**TINY_CONFIGS["LlamaForCausalLM"], "initializer_range": 0.02, **config_overrides, "vocab_size": len(tokenizer)}
    config = AutoConfig.for_model("llama", architectures=["LlamaForCausalLM"], bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, **settings)
    torch.manual_seed(options.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=0.1, betas=(0.9, 0.95))

    rng = np.random.default_rng(options.seed)
    length = options.sequence_length
    losses = []
    step = 0
    for step in range(options.steps):
        if options.max_seconds is not None and time.perf_counter() - start > options.max_seconds:
            break
        starts = rng.integers(0, len(tokens) - length, size=options.batch_size)
        batch = torch.from_numpy(np.stack([tokens[s : s + length] for s in starts]))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, options)
        loss = model(input_ids=batch, labels=batch).loss  # transformers shifts the labels by one
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    output.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(output)
        tokenizer.save_pretrained(output)
    (output / HELDOUT_FILE).write_text("\n\n".join(heldout_texts), encoding="utf-8")
    report = {
        "steps": len(losses),
        "tokens_seen": len(losses) * options.batch_size * options.sequence_length,
        "corpus_tokens": int(len(tokens)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - start,
        "loss_first_10": float(np.mean(losses[:10])) if losses else None,
        "loss_last_10": float(np.mean(losses[-10:])) if losses else None,
        "options": asdict(options),
        "config": settings,
    }
    (output / "training.json").write_text(json.dumps(report, indent=2))
    return report


@dataclass(frozen=True)
class DDPMTrainingOptions:
    """DDPM training of a small UNet on small images; the defaults fit in ~10 minutes on 2 cores."""

    steps: int = 2200  # optimizer steps at most
    max_seconds: float | None = 660.0  # stop early when this much time has passed (None: no limit)
    batch_size: int = 128
    learning_rate: float = 2e-3  # peak AdamW learning rate (cosine decay after warm-up)
    warmup_steps: int = 50
    ema_decay: float = 0.995  # the saved weights are an exponential moving average of the trained ones
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # diffusers' name; suits small images better than linear
    seed: int = 0
    threads: int | None = None


def optimizer_step(model, optimizer, loss, ema, ema_decay: float) -> None:
    """One step on ``loss`` (gradients clipped to norm 1), then ``ema`` moved towards ``model``."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        for average, current in zip(ema.parameters(), model.parameters()):
            average.lerp_(current, 1 - ema_decay)


def train_ddpm(output: Path, images: np.ndarray, unet_config: dict, options: DDPMTrainingOptions, on_step=None) -> dict:
    """Train a diffusers ``UNet2DModel`` to predict the noise of ``images`` (N, H, W) or (N, H, W, C)
    in [0, 1], and save it with its DDPMScheduler as a diffusers pipeline directory ``output``
    (``unet/`` + ``scheduler/``, the EMA weights) plus ``training.json``.

    ``on_step(step, loss)`` is called after every step (progress reporting).
    """
    import copy

    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    if options.threads:
        torch.set_num_threads(options.threads)
    start = time.perf_counter()
    data = torch.from_numpy(np.asarray(images, np.float32))
    data = (data[:, None] if data.ndim == 3 else data.permute(0, 3, 1, 2)) * 2 - 1  # (N, C, H, W) in [-1, 1]
    torch.manual_seed(options.seed)
    unet = UNet2DModel(**unet_config)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=options.train_timesteps, beta_schedule=options.beta_schedule)
    alphas = scheduler.alphas_cumprod.float()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=options.learning_rate, weight_decay=0.01)
    generator = torch.Generator().manual_seed(options.seed)
    losses = []
    unet.train()
    for step in range(options.steps):
        if options.max_seconds is not None and time.perf_counter() - start > options.max_seconds:
            break
        x0 = data[torch.randint(0, len(data), (options.batch_size,), generator=generator)]
        t = torch.randint(0, options.train_timesteps, (options.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, options)
        loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, noise)
        optimizer_step(unet, optimizer, loss, ema, options.ema_decay)
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step, losses[-1])
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(output)
    report = {
        "steps": len(losses),
        "images": int(len(data)),
        "parameters": sum(p.numel() for p in ema.parameters()),
        "seconds": time.perf_counter() - start,
        "loss_first_50": float(np.mean(losses[:50])) if losses else None,
        "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
        "options": asdict(options),
        "unet": unet_config,
    }
    (Path(output) / "training.json").write_text(json.dumps(report, indent=2))
    return report
