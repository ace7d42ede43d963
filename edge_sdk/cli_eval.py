"""``edge-sdk eval``: a package's accuracy (text, speech, images), here or with a device's numerics."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_sdk.cli_common import load_for, progress_bar, remote_options
from edge_sdk.tasks import get_task


@click.command("eval")
@click.argument("package", type=click.Path())
@click.option("--data", type=click.Path(), default=None, help="Text file or directory of .txt files [the bundled text].")
@click.option("--reference", type=click.Path(), default=None,
              help="FP32 package (or model directory) to compare with [the package's source model, if found].")
@click.option("--windows", type=int, default=16, show_default=True, help="Text windows of 128 tokens to evaluate at most.")
@click.option("-n", "--num", type=int, default=32, show_default=True, help="Image generation: images to sample.")
@click.option("--steps", type=int, default=None, help="Image generation: DDIM steps [a step-distilled model's own, else 50].")
@click.option("--digits", is_flag=True, help="Image generation: judge the images with a classifier of real digits.")
@click.option("--threads", type=int, default=None, help="Engine threads (default: one per physical core).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--device", default=None, metavar="PROFILE",
              help="Measure with this device's numerics (its int8 kernels): under emulation of its CPU here (arm64 "
                   "profiles), or on the board with --remote; the figures are recorded in the manifest.")
@remote_options("--device: measure on this board over ssh (copies the package there).")
@click.option("--no-save", is_flag=True, help="--device: print the figures without recording them in the manifest.")
def evaluate(package: str, data: str | None, reference: str | None, windows: int, num: int, steps: int, digits: bool,
             threads: int | None, as_json: bool, device: str | None, remote, identity, ssh_config, remote_python,
             remote_setup, remote_dir, no_save: bool) -> None:
    """Measure PACKAGE's accuracy.

    Text generation: on held-back text against an FP32 reference, the mean KL divergence of
    next-token distributions, top-1 agreement and the perplexity of both (without a reference,
    perplexity only). Speech recognition: --data is a directory of audio files with a
    transcripts.tsv (file<TAB>text per line); prints WER, real-time factor and total time.
    Image generation: samples --num images with --reference (an FP32 package) from the same
    noise and prints the PSNR between them; --digits adds a digit classifier's verdict.
    Text to image: 4 prompts' images against --reference's (PSNR, SSIM, same seeds); --digits: the
    prompt adherence of a digits model (the share of images read as the prompted digit).

    \b
    Examples:
      edge-sdk eval out/smollm-int4 --data held-out.txt --reference out/smollm
      edge-sdk eval out/smollm-int4 --json
      edge-sdk eval out/whisper-int8 --data speech/
      edge-sdk eval out/digits-static --reference out/digits-fp32 --digits
      edge-sdk eval out/sd-int8 --reference out/sd
      edge-sdk eval out/smollm-int8 --reference out/smollm --device raspberry-pi-4
      edge-sdk eval out/whisper-int8 --data speech/ --device raspberry-pi-5 --remote pi@raspberrypi.local

    With --device, text figures are compared with the reference computed here (the device runs only
    the package); speech figures are the device's own WER on --data. Emulating an arm64 core needs
    qemu-user-static and, the first time, deb.debian.org and PyPI (the environment is cached).
    """
    from edge_sdk.errors import InvalidInputError
    from edge_sdk.package import Package

    if device is None and (remote or no_save):
        raise InvalidInputError(f"{'--remote' if remote else '--no-save'} goes with --device PROFILE (the device's numerics)")
    if device is not None:
        _evaluate_on_device(package, device, data, reference, windows, threads, as_json, no_save,
                            remote and {"target": remote, "identity": identity, "ssh_config": ssh_config,
                                        "python": remote_python, "setup": remote_setup, "root": remote_dir})
        return
    task = get_task(Package.open(package, verify=False).task)
    if task.command == "transcribe":
        _evaluate_speech(package, data, threads, as_json)
    elif task.name == "text-to-image":
        _evaluate_text_to_image(package, reference, steps, digits, threads, as_json)
    elif task.command == "sample":
        _evaluate_images(package, reference, num, steps, digits, threads, as_json)
    elif task.command == "generate":
        _evaluate_text(package, data, reference, windows, threads, as_json)
    else:
        raise InvalidInputError(f"eval does not measure {task.name} packages yet; its accuracy at export is in `edge-sdk inspect`")


def _evaluate_on_device(package, device, data, reference, windows, threads, as_json, no_save, remote) -> None:
    from edge_sdk.device_eval import evaluate_on_device
    from edge_sdk.devices.profiles import load_profile

    profile = load_profile(device)
    record = evaluate_on_device(package, profile, data=data, reference=reference, windows=windows, threads=threads,
                                remote=remote or None, save=not no_save, say=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    on = record["measured_on"]
    how = on.get("remote") or on.get("emulated") or "here"
    click.echo(f"{profile.name}: measured on {on.get('cpu')} ({on.get('int8_path')} int8 path, {on.get('engine')}; {how})")
    for key, value in record["eval"].items():
        if value is not None:
            click.echo(f"  {key:22} {value:.4g}" if isinstance(value, float) else f"  {key:22} {value}")
    if not no_save:
        click.echo(f"recorded in {Path(package) / 'manifest.json'} under accuracy.on_devices.{profile.name}")


@click.command("_measure", hidden=True)
@click.argument("package", type=click.Path())
@click.option("--prepared", type=click.Path(), default=None)
@click.option("--data", type=click.Path(), default=None)
@click.option("--threads", type=int, default=None)
@click.option("--no-verify", is_flag=True)
def measure(package: str, prepared: str | None, data: str | None, threads: int | None, no_verify: bool) -> None:
    """What `eval --device` runs on the device (or its emulation): one line of JSON figures."""
    from edge_sdk.device_eval import measure_here

    click.echo(json.dumps(measure_here(package, prepared, data, threads, verify=not no_verify)))


def _evaluate_text(package: str, data, reference, windows: int, threads, as_json: bool) -> None:
    from edge_sdk.evaluation import evaluate_package

    result, reference_name = evaluate_package(package, data, reference, windows, threads)
    if as_json:
        click.echo(json.dumps({"reference": reference_name, **result.as_dict()}, indent=2))
        return
    click.echo(f"{result.windows} windows, {result.tokens} next-token predictions; reference: {reference_name or 'none'}")
    click.echo(f"perplexity          {result.perplexity:.3f}")
    if result.kl_divergence is not None:
        click.echo(f"reference perplexity {result.reference_perplexity:.3f}")
        click.echo(f"KL divergence       {result.kl_divergence:.4g} nats/token")
        click.echo(f"top-1 agreement     {result.top1_agreement:.2%}")


def _evaluate_speech(package: str, data: str | None, threads: int | None, as_json: bool) -> None:
    import edge_sdk
    from edge_sdk.errors import InvalidInputError
    from edge_sdk.evaluation import evaluate_speech

    if data is None:
        raise InvalidInputError("speech packages need --data DIR: audio files and a transcripts.tsv (file<TAB>text)")
    recognizer = edge_sdk.load(package, threads=threads)
    with progress_bar("Transcribing", "utterances") as advance:
        result = evaluate_speech(recognizer, data, progress=advance)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(f"{result.utterances} utterances, {result.audio_seconds:.1f} s of audio")
    click.echo(f"WER                 {result.wer:.2f}%")
    click.echo(f"real-time factor    {result.real_time_factor:.4f}")
    click.echo(f"total time          {result.total_seconds:.2f} s (features {result.features_seconds:.2f}, "
               f"encoder {result.encoder_seconds:.2f}, decoder {result.decoder_seconds:.2f})")


def _evaluate_text_to_image(package: str, reference: str | None, steps: int | None, digits: bool, threads,
                            as_json: bool) -> None:
    import edge_sdk
    from edge_sdk.text_to_image_eval import adherence, compare

    candidate = edge_sdk.load(package, threads=threads)
    other = load_for("sample", reference, threads, role="--reference") if reference else None
    figures = compare(candidate, other, steps=steps)
    if digits:
        figures["adherence"] = {f"guidance {g:g}": adherence(candidate, guidance_scale=g, steps=steps or 10)
                                for g in (1.0, 3.0)}
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    click.echo(f"{figures['prompts']} prompts, {figures['steps']} {figures['scheduler']} steps, guidance "
               f"{figures['guidance_scale']:g}, {figures['size'][1]}x{figures['size'][0]}; reference: {reference or 'none'}")
    if figures.get("identical"):
        click.echo("images identical to the reference's")
    elif "psnr_db" in figures:
        click.echo(f"PSNR vs reference   {figures['psnr_db']:.2f} dB, SSIM {figures['ssim']:.4f}")
    click.echo(f"time per step       {figures['seconds_per_step']:.3f} s")
    for label, result in figures.get("adherence", {}).items():
        click.echo(f"adherence, {label}: {result['adherence']:.0f}% of {result['images']} images")


def _evaluate_images(package: str, reference: str | None, num: int, steps: int, digits: bool, threads, as_json: bool) -> None:
    import edge_sdk
    from edge_sdk.evaluation import evaluate_images

    candidate = edge_sdk.load(package, threads=threads)
    other = load_for("sample", reference, threads, role="--reference") if reference else None
    result = evaluate_images(candidate, other, num_images=num, steps=steps, judge_digits=digits)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(f"{result.images} images, DDIM {result.steps} steps; reference: {reference or 'none'}")
    if result.identical:
        click.echo("images identical to the reference's")
    elif result.psnr_db is not None:
        click.echo(f"PSNR vs reference   {result.psnr_db:.2f} dB (mean |difference| {result.mean_abs_diff:.2f} of 255)")
    click.echo(f"UNet time per step  {result.unet_seconds_per_step * 1e3:.1f} ms (batch of {result.images})")
    for label, quality in (("digits", result.digits), ("reference digits", result.reference_digits)):
        if quality is not None:
            click.echo(f"{label + ':':19} classifier confidence {quality.confidence:.1f}%, {quality.coverage}/10 classes")
