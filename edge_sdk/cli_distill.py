"""``edge-sdk distill`` and ``edge-sdk tradeoffs``: the distillation lever, and both levers side by side.

Registered on the ``edge-sdk`` group by ``edge_sdk.cli``; ``python -m edge_sdk.distillation`` runs
``distill`` alone (what ``torchrun`` launches once per process).
"""

from __future__ import annotations

from pathlib import Path

import click

from dataclasses import fields

from edge_sdk.distillation.options import DistillationOptions
from edge_sdk.quantization import RUNTIMES, WEIGHTS

D = {f.name: f.default for f in fields(DistillationOptions)}  # the defaults, declared once in the options


@click.command()
@click.argument("teacher")
@click.option("-o", "--output", required=True, type=click.Path(), help="Student directory to write (a Hugging Face model).")
@click.option("--data", default=None, type=click.Path(), help="Training text: a file or a directory of .txt files (Whisper: a directory of audio, optionally with transcripts.tsv; diffusion: images, or none for the teacher's own samples).")
@click.option("--keep-layers", type=int, default=None, help="Student = the teacher with N layers kept, maximally spaced (first and last included).")
@click.option("--layers", default=None, help="Student = the teacher with exactly these layers kept, e.g. 0,3,7.")
@click.option("--student", type=click.Path(), default=None, help="Student = this Hugging Face directory, or a config.json built with the teacher's matching weights.")
@click.option("--keep-decoder-layers", type=int, default=None, help="Whisper: keep the encoder (frozen) and N decoder layers, maximally spaced.")
@click.option("--wer-threshold", type=float, default=D["wer_threshold"], show_default=True, help="Whisper: drop utterances whose pseudo-label's WER against transcripts.tsv is above this.")
@click.option("--layers-per-block", type=int, default=None, help="Diffusion UNet: resnet layers per block the student keeps (fewer than the teacher's).")
@click.option("--drop-mid-block", is_flag=True, help="Diffusion UNet: the student has no mid block.")
@click.option("--denoise-weight", type=float, default=D["denoise_weight"], show_default=True, help="Diffusion: weight of the denoising loss on the data.")
@click.option("--output-weight", type=float, default=D["output_weight"], show_default=True, help="Diffusion: weight of output KD (noise prediction vs the teacher's).")
@click.option("--feature-weight", type=float, default=D["feature_weight"], show_default=True, help="Diffusion: weight of feature KD (each down/up block's output vs the teacher's).")
@click.option("--teacher-samples", type=int, default=D["teacher_samples"], show_default=True, help="Diffusion without --data: images the teacher samples once to train on.")
@click.option("--step-distill", type=int, default=0, help="Diffusion: rounds of progressive distillation, each halving the DDIM steps (student = the teacher).")
@click.option("--teacher-steps", type=int, default=None, help="Step distillation: the teacher's DDIM steps [what it was distilled for, else 64].")
@click.option("--temperature", type=float, default=D["temperature"], show_default=True, help="Softens teacher and student in the KL term; the KL is scaled by T^2.")
@click.option("--alpha", type=float, default=None, help="Weight of the cross-entropy beside the KL to the teacher [0.5; Whisper 0.8, as distil-whisper].")
@click.option("--ce-only", is_flag=True, help="Train on cross-entropy only, no teacher (the baseline distillation must beat).")
@click.option("--on-policy", type=float, default=D["on_policy"], show_default=True, help="Share of steps on continuations the student samples itself, scored by the teacher (GKD).")
@click.option("--beta", type=float, default=D["beta"], show_default=True, help="On-policy loss: generalized JSD mixture; 0 ~ forward KL(teacher||student), 1 ~ reverse KL.")
@click.option("--prompt-tokens", type=int, default=D["prompt_tokens"], show_default=True, help="On-policy: tokens of each window the student continues.")
@click.option("--teacher-cache", type=click.Path(), default=None, help="Cache the teacher's top-k log-probabilities in this directory (reused by later runs); the teacher then leaves memory.")
@click.option("--top-k", type=int, default=D["top_k"], show_default=True, help="Log-probabilities per position in the teacher cache.")
@click.option("--steps", type=int, default=D["steps"], show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=int, default=D["batch_size"], show_default=True, help="Sequences per step over all processes (the global batch).")
@click.option("--sequence-length", type=int, default=D["sequence_length"], show_default=True, help="Tokens per sequence.")
@click.option("--learning-rate", type=float, default=D["learning_rate"], show_default=True, help="Peak AdamW learning rate (warm-up, then cosine decay to a tenth).")
@click.option("--warmup-steps", type=int, default=D["warmup_steps"], show_default=True, help="Linear warm-up steps.")
@click.option("--seed", type=int, default=D["seed"], show_default=True, help="Data order and the student's sampling.")
@click.option("--eval-data", type=click.Path(), default=None, help="Held-back text for distill.json's figures [the data's last --heldout-fraction].")
@click.option("--heldout-fraction", type=float, default=D["heldout_fraction"], show_default=True, help="Tail of --data held back (without --eval-data).")
@click.option("--eval-windows", type=int, default=D["eval_windows"], show_default=True, help="Held-out windows measured before and after training.")
@click.option("--save-every", type=int, default=D["save_every"], show_default=True, help="Write a resumable checkpoint every N steps (0: only on Ctrl-C).")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT.checkpoint/ (same options).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it holds a student from an earlier run.")
@click.option("--qat", type=click.Choice(["int8", "int4"]), default=None, help="Quantization-aware distillation: train with the exporter's weight quantization simulated.")
@click.option("--group-size", type=int, default=None, help="QAT: weights per scale along input channels, as export's --group-size [128].")
@click.option("--sym/--asym", default=False, show_default=True, help="QAT: symmetric or asymmetric quantization, as export's.")
@click.option("--export", "exports", multiple=True, help="Then export the student as RUNTIME:WEIGHTS (repeatable), e.g. onnxruntime:int4, to OUTPUT-RUNTIME-WEIGHTS.")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def distill(teacher: str, output: str, data: str, layers, student, ce_only: bool, teacher_cache, eval_data, resume: bool,
            overwrite: bool, exports, quiet: bool, **fields) -> None:
    """Distill a smaller student from TEACHER: a causal LM (Hugging Face directory or hub id), a
    Whisper model (also an OpenAI .pt or a CTranslate2 directory) or a diffusion UNet.

    A causal LM's student starts as the teacher with layers dropped (or as --student) and learns
    its next-token distributions: T^2 KL(teacher||student) + alpha x cross-entropy. A Whisper
    student keeps the encoder (frozen) and --keep-decoder-layers of the decoder, trained on the
    teacher's own transcripts of --data. A UNet student has fewer layers per block
    (--layers-per-block, --drop-mid-block), trained on denoising + output and feature KD; or
    takes half the sampling steps per --step-distill round (progressive distillation). The
    student is written as a directory `edge-sdk export` takes, with distill.json (teacher, data
    hashes, recipe, loss curve, held-out figures before and after) and a loss-curve PNG. On several
    processes, launch the same command with torchrun.

    \b
    Examples:
      edge-sdk distill out/tiny-lm -o out/student --data corpus/ --keep-layers 2
      edge-sdk distill out/tiny-lm -o out/student-qat --data corpus/ --keep-layers 2 --qat int4 --export onnxruntime:int4
      edge-sdk distill out/tiny-lm -o out/student --data corpus/ --layers 0,3 --on-policy 0.5 --beta 0.5
      edge-sdk distill tiny.en/ -o out/whisper-student --data speech/ --keep-decoder-layers 2
      edge-sdk distill out/ddpm-digits -o out/unet-student --drop-mid-block --steps 500
      edge-sdk distill out/ddpm-digits -o out/unet-fast --step-distill 2 --teacher-steps 40 --steps 500
      torchrun --standalone --nproc-per-node 2 -m edge_sdk.distillation out/tiny-lm -o out/student --data corpus/ --keep-layers 2
    """
    from edge_sdk.distillation import DistillationOptions, distill as run
    from edge_sdk.distillation.options import parse_export, parse_layers

    options = DistillationOptions(
        layers=parse_layers(layers), student=Path(student) if student else None, kd=not ce_only,
        teacher_cache=Path(teacher_cache) if teacher_cache else None, eval_data=Path(eval_data) if eval_data else None,
        exports=tuple(parse_export(e) for e in exports), **fields)
    result = run(teacher, output, data, options, overwrite=overwrite, resume=resume, progress=not quiet)
    _summary(Path(result), options)


def _summary(student: Path, options) -> None:
    import json
    import os

    from edge_sdk.distillation.train import REPORT_FILE

    if os.environ.get("RANK", "0") != "0":  # a process other than rank 0 of a torchrun launch
        return
    record = student / REPORT_FILE
    report = json.loads(record.read_text())
    click.echo(f"Student written to {student} ({report['student']['parameters'] / 1e6:.2f} M parameters, "
               f"{report['steps']} steps in {report['training_seconds']:.0f} s, peak RSS {report['peak_rss_mb']:.0f} MB)")
    click.echo(f"  {report['summary']}")
    for runtime, weights in options.exports:
        click.echo(f"  package: {student.with_name(f'{student.name}-{runtime}-{weights}')}")
    from edge_sdk.distillation.train import teacher_kind

    kind = teacher_kind(student)  # the student is of its teacher's kind
    if kind == "images":
        click.echo(f"Next: edge-sdk export {student} -o {student}-pkg && edge-sdk sample {student}-pkg -o grid.png")
    else:
        weights = "int8" if kind == "speech" else "int4"  # int4 breaks small Whisper models (BENCHMARKS.md)
        click.echo(f"Next: edge-sdk export {student} -o {student}-{weights} --weights {weights}")


@click.command()
@click.argument("teacher", type=click.Path())
@click.option("--student", "students", multiple=True, type=click.Path(), help="A student directory (repeatable).")
@click.option("--package", "packages", multiple=True, type=click.Path(), help="A ready package to include, e.g. a QAT student's (repeatable).")
@click.option("--device", required=True, help="Device profile (name or .toml) the packages are judged against.")
@click.option("--data", default=None, type=click.Path(), help="What all models are measured on: held-back text (text), a directory of audio with optional transcripts.tsv (speech); none for image models.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory for the packages and tradeoffs.{json,md,png}.")
@click.option("--weights", "precisions", default="fp32,int8,int4", show_default=True, help="Precisions each model is exported at.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True)
@click.option("--windows", type=int, default=16, show_default=True, help="Text: held-out windows of 128 tokens measured.")
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Text bench: tokens decoded per run.")
@click.option("--images", type=int, default=32, show_default=True, help="Images: samples compared from the same noise.")
@click.option("--steps", type=int, default=None, help="Images: the teacher's DDIM steps [its own default: 50 unless step-distilled]; a step-distilled student samples at its own.")
@click.option("--min-runs", type=int, default=5, show_default=True, help="Bench: runs per package at least.")
@click.option("--threads", type=int, default=None, help="Bench threads (default: the profile's, capped at this machine's cores).")
@click.option("-q", "--quiet", is_flag=True, help="No progress.")
def tradeoffs(teacher: str, students, packages, device: str, data, output: str, precisions: str, runtime: str,
              windows: int, new_tokens: int, images: int, steps, min_runs: int, threads, quiet: bool) -> None:
    """Both levers side by side: the TEACHER and each --student at every precision (plus any
    --package), their quality against the teacher and their speed on this machine projected to
    --device, in one table and one plot with the Pareto front and the profile's budgets. Says which
    packages fit the device and which fitting one is best.

    Quality against the teacher: text — perplexity, KL, top-1 on --data; speech — WER against the
    teacher's transcripts of the audio in --data (and against transcripts.tsv when there is one);
    images — PSNR against the teacher's samples from the same noise, each model at its own steps,
    and the digits judge where it applies. Speed: decode tok/s, real-time factor, seconds per image.

    \b
    Examples:
      edge-sdk tradeoffs out/tiny-lm --student out/student --device raspberry-pi-5 --data out/tiny-lm/heldout.txt -o out/tradeoffs
      edge-sdk tradeoffs out/tiny-lm --student out/student --package out/student-qat-onnxruntime-int4 \\
          --device raspberry-pi-4 --data heldout.txt -o out/tradeoffs --weights fp32,int4
      edge-sdk tradeoffs tiny.en/ --student out/whisper-student --device raspberry-pi-5 --data speech/ -o out/tradeoffs-asr
      edge-sdk tradeoffs out/ddpm-digits --student out/unet-student --student out/unet-fast --device raspberry-pi-5 \\
          -o out/tradeoffs-images --weights fp32,int8
    """
    from edge_sdk.distillation.tradeoffs import TradeoffOptions, run

    weights = tuple(w.strip() for w in precisions.split(",") if w.strip())
    bad = [w for w in weights if w not in WEIGHTS]
    if bad or not weights:
        raise click.BadParameter(f"{','.join(bad) or precisions!r}; give a comma-separated list of {', '.join(WEIGHTS)}",
                                 param_hint="--weights")
    options = TradeoffOptions(weights=weights, runtime=runtime, windows=windows, new_tokens=new_tokens, min_runs=min_runs,
                              threads=threads, images=images, steps=steps)
    say = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    report, written = run(teacher, list(students), list(packages), device, data, output, options, say=say)
    from edge_sdk.distillation.tradeoffs import markdown

    click.echo(markdown(report))
    click.echo("Written: " + ", ".join(str(p) for p in written))
