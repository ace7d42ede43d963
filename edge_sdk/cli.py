"""The ``edge-sdk`` command line: export, inspect, generate.

Every failure the user can cause prints one line (``Error: ...``) and exits non-zero; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click

from edge_sdk._version import __version__
from edge_sdk.quantization import HEADS, MODES, RUNTIMES, WEIGHTS
from edge_sdk.errors import EdgeSDKError
from edge_sdk.package import write_atomically
from edge_sdk.tasks import get_task

_DEBUG_KEY = "edge_sdk.debug"


class _Group(click.Group):
    """Turns edge-sdk errors (and unexpected ones) into click's one-line error and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except EdgeSDKError as e:
            if ctx.meta.get(_DEBUG_KEY):
                raise
            raise click.ClickException(_one_line(str(e))) from None
        except Exception as e:
            if ctx.meta.get(_DEBUG_KEY):
                raise
            raise click.ClickException(
                _one_line(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback and report it)")
            ) from None


def _load_for(command: str, package: str, threads: int | None, role: str = ""):
    """Load ``package`` for ``command``; a package of a task another command runs gets a clear error."""
    import edge_sdk
    from edge_sdk.errors import InvalidInputError
    from edge_sdk.package import Package
    from edge_sdk.tasks import tasks

    task = get_task(Package.open(package, verify=False).task)
    if task.command != command:
        wanted = " or ".join(t.name for t in tasks() if t.command == command)
        raise InvalidInputError(f"{role + ' ' if role else ''}{package} is a {task.name} package; {command} needs a {wanted} "
                                f"package (run this one with: edge-sdk {task.command})")
    return edge_sdk.load(package, threads=threads)


def _warn_numerics(package) -> None:
    """Warn (stderr) when a quantized package's accuracy was measured on another int8 path than this CPU's."""
    from edge_sdk.devices.numerics import numerics_warning
    from edge_sdk.package import read_manifest

    try:
        warning = numerics_warning(read_manifest(Path(package)))
    except EdgeSDKError:
        return  # the command itself reports a package it cannot read
    if warning:
        click.echo(f"warning: {Path(package).name}: {warning}", err=True)


def _remote_options(purpose: str, setup: bool = True, directory: bool = True):
    """--remote USER@HOST[:PORT] and the options that reach it (bench, eval, devices detect)."""
    options = [
        click.option("--remote", default=None, metavar="USER@HOST[:PORT]", help=purpose),
        click.option("--identity", type=click.Path(dir_okay=False), default=None, help="--remote: the ssh private key."),
        click.option("--ssh-config", type=click.Path(dir_okay=False), default=None, help="--remote: an ssh config file (ssh -F)."),
        click.option("--remote-python", default=None,
                     help="--remote: the Python with edge-sdk there [~/.cache/edge-sdk/venv/bin/python]."),
    ]
    if setup:
        options.append(click.option("--remote-setup", is_flag=True,
                                    help="--remote: create that venv and pip install the lean runtime (and extras) from PyPI."))
    if directory:
        options.append(click.option("--remote-dir", default=None, help="--remote: where the packages go there [~/.cache/edge-sdk]."))

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _one_line(message: str) -> str:
    return " ".join(message.split())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-sdk")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log what each step does (to stderr).")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Put small models on laptops, Raspberry Pis and NPUs.

    \b
    Examples:
      edge-sdk quickstart                                   # the whole journey, offline, ~1 minute
      edge-sdk export ./my-hf-model -o out/lm --device raspberry-pi-5
      edge-sdk inspect out/lm
      edge-sdk generate out/lm "Once upon a time" --max-new-tokens 32
      edge-sdk bench out/lm --device raspberry-pi-4 --report reports/
    """
    ctx.meta[_DEBUG_KEY] = debug
    if not debug:  # libraries' deprecation notices are for their developers, not for CLI users
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    if verbose or debug:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(name)s: %(message)s")
        logging.getLogger("edge_sdk").setLevel(logging.DEBUG if debug else logging.INFO)


@main.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Package directory to write.")
@click.option("--task", default=None, help="Task of the package, e.g. text-generation (default: from the architecture).")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None, help="Engine the package runs on [onnxruntime, or the --device's].")
@click.option("--weights", type=click.Choice(WEIGHTS), default=None, help="Precision of the weights [fp32, or the --device's].")
@click.option("--device", default=None, help="Device profile (name or .toml) choosing runtime, precision and threads.")
@click.option("--static-prompt-length", type=int, default=64, show_default=True, help="NPU profiles: tokens per call (static).")
@click.option("--static-cache-length", type=int, default=384, show_default=True, help="NPU profiles: KV-cache positions (static).")
@click.option("--quant-mode", type=click.Choice(MODES), default=None, help="int8: weight-only (default), dynamic or static (calibrated) activations.")
@click.option("--group-size", type=int, default=None, help="Weights per scale along input channels (power of two >= 16; -1 per-channel) [128].")
@click.option("--sym/--asym", default=False, show_default=True, help="Symmetric (no zero points) or asymmetric quantization.")
@click.option("--calibration", type=click.Path(), default=None, help="Data for --quant-mode static: text file/dir (LLMs), audio file/dir (speech), 'sampling' (diffusion).")
@click.option("--num-samples", type=int, default=32, show_default=True, help="Calibration samples (windows, audio files, or UNet inputs).")
@click.option("--accuracy-level", type=int, default=4, show_default=True, help="ONNX Runtime MatMulNBits compute type (4: int8).")
@click.option("--ratio", type=float, default=1.0, show_default=True, help="OpenVINO int4: share of layers in 4 bits (rest INT8).")
@click.option("--head-weights", "head", type=click.Choice(HEADS), default=None,
              help="int4: precision of the embedding table and LM head [int8, as llama.cpp and NNCF keep them].")
@click.option("--eval-data", type=click.Path(), default=None, help="Held-back text for the accuracy figures [bundled text].")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it already holds a package.")
@click.option("--atol", type=float, default=1e-3, show_default=True, help="Largest |ONNX - PyTorch| accepted at validation.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def export(model: str, output: str, task, runtime, weights, device, static_prompt_length, static_cache_length, quant_mode,
           group_size, sym, calibration, num_samples, accuracy_level, ratio, head, eval_data, overwrite: bool, atol: float,
           quiet: bool) -> None:
    """Export MODEL (a Hugging Face directory or hub id) to an edge package.

    The FP32 graph is validated against the PyTorch model; quantized packages are derived from it
    and their accuracy against it is measured and written to the manifest. A failed export leaves
    nothing behind.

    \b
    Examples:
      edge-sdk export ./SmolLM2-135M -o out/smollm
      edge-sdk export ./SmolLM2-135M -o out/smollm-int4 --weights int4 --group-size 64
      edge-sdk export ./SmolLM2-135M -o out/smollm-ov --runtime openvino --weights int8
      edge-sdk export ./SmolLM2-135M -o out/smollm-static --weights int8 --quant-mode static --calibration texts/
      edge-sdk export ./ddpm-digits -o out/digits-static --weights int8 --quant-mode static --calibration sampling
      edge-sdk export ./SmolLM2-135M -o out/smollm-pi5 --device raspberry-pi-5
      edge-sdk export ./SmolLM2-135M -o out/smollm-npu --device intel-core-ultra-npu --static-prompt-length 128
    """
    import edge_sdk
    from edge_sdk.converters.export import options_for_device
    from edge_sdk.quantization import QuantizationOptions

    quantization_fields = dict(mode=quant_mode, group_size=group_size, accuracy_level=accuracy_level, ratio=ratio, head=head,
                               calibration=Path(calibration) if calibration else None, num_samples=num_samples)
    if sym:
        quantization_fields["sym"] = True
    common = dict(task=task, atol=atol, eval_data=Path(eval_data) if eval_data else None)
    if device:
        options = options_for_device(device, runtime=runtime, weights=weights, static_prompt_length=static_prompt_length,
                                     static_cache_length=static_cache_length, quantization_fields=quantization_fields, **common)
        chosen = options.device
        click.echo(f"{chosen.name}: runtime {options.runtime}, weights {options.quantization.weights}"
                   f"{' (symmetric)' if options.quantization.sym else ''}, {chosen.threads} threads"
                   + (f", static shapes {chosen.static_shapes}" if chosen.static_shapes else "") + " (from the profile)", err=True)
    else:
        quantization = QuantizationOptions(weights=weights or "fp32", **quantization_fields)
        options = _export_options(runtime=runtime or "onnxruntime", quantization=quantization, **common)
    path = edge_sdk.export(model, output, options, overwrite=overwrite, progress=not quiet)
    from edge_sdk.package import Package

    package = Package.open(path, verify=False)
    accuracy = package.manifest.get("accuracy", {})
    figures = []
    differences = accuracy.get("max_abs_diff") or {}
    if differences:
        figures.append(f"FP32 graph max |ONNX - PyTorch| {max(differences.values()):.2g}")
    if (accuracy.get("eval") or {}).get("summary"):
        figures.append(accuracy["eval"]["summary"])
    precision = package.manifest["precision"]["weights"]
    click.echo(f"Wrote {package.task} package {path} ({package.runtime}, {precision}, {_megabytes(package.size_bytes)})")
    for figure in figures:
        click.echo(f"  {figure}")
    device = package.manifest.get("device") or {}
    if device.get("static_shapes"):
        click.echo(f"Static shapes for {device['name']}: runs here on OpenVINO's CPU device; on the device set "
                   "EDGE_SDK_OPENVINO_DEVICE=NPU")
    click.echo(f"Try it: {get_task(package.task).try_it.format(path=path)}")


def _export_options(**fields):
    from edge_sdk.converters.export import ExportOptions

    return ExportOptions(**fields)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@main.command()
@click.argument("package", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip checking the files' sha256.")
def inspect(package: str, as_json: bool, no_verify: bool) -> None:
    """Show what PACKAGE holds: task, source, precision, graphs, files and accuracy.

    \b
    Examples:
      edge-sdk inspect out/smollm
      edge-sdk inspect out/smollm --json | jq .accuracy
    """
    from edge_sdk.describe import render_manifest
    from edge_sdk.package import Package

    pkg = Package.open(package, verify=not no_verify)
    if as_json:
        click.echo(json.dumps(pkg.manifest, indent=2))
        return
    _warn_numerics(package)
    from rich.console import Console

    Console().print(render_manifest(pkg, verified=not no_verify))


def _sampling_options(function):
    """The generation options ``generate`` and ``chat`` share (unset: the package's defaults)."""
    for option in reversed([
        click.option("-n", "--max-new-tokens", type=int, default=None, help="Tokens to generate at most [package default]."),
        click.option("-t", "--temperature", type=float, default=None, help="0 is greedy; > 0 samples [package default]."),
        click.option("--top-k", type=int, default=None, help="Sample among the k most likely tokens (0: off)."),
        click.option("--top-p", type=float, default=None, help="Nucleus sampling threshold in (0, 1] (1: off)."),
        click.option("--repetition-penalty", type=float, default=None,
                     help="> 1 discourages repeating tokens (1: off) [package default, from generation_config.json]."),
        click.option("--seed", type=int, default=None, help="Seed of the sampling RNG (reproducible samples)."),
        click.option("--stop", multiple=True, help="Stop before this string (repeatable)."),
        click.option("--threads", type=int, default=None, help="Engine threads (default: one per physical core)."),
    ]):
        function = option(function)
    return function


def _generation_setup(command: str, package: str, threads: int | None, overrides: dict):
    """The loaded generator and its validated options (before anything is printed)."""
    if threads is not None and threads < 1:
        raise click.BadParameter("must be at least 1", param_hint="--threads")
    # shells pass "\n" literally; stop strings are mostly newlines, so unescape the common escapes
    overrides["stop"] = tuple(s.replace("\\n", "\n").replace("\\t", "\t") for s in overrides["stop"]) or None
    generator = _load_for(command, package, threads)
    return generator, generator.options(**overrides)


def _read_messages(path: str) -> list:
    from edge_sdk.errors import InvalidInputError

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"cannot read the chat messages in {path}: {e}; give a JSON list like "
                                '[{"role": "user", "content": "Hi"}]') from e


@main.command()
@click.argument("package", type=click.Path())
@click.argument("prompt", required=False)
@click.option("--chat", "chat_message", default=None, help="Reply to this user message with the package's chat template.")
@click.option("--system", default=None, help="System message for --chat.")
@click.option("--messages", type=click.Path(), default=None, help='JSON file of chat messages to reply to ("-": stdin).')
@_sampling_options
@click.option("--ignore-eos", is_flag=True, default=None, help="Keep generating past end-of-sequence tokens.")
@click.option("--stats/--no-stats", default=True, show_default=True, help="Print timings to stderr at the end.")
def generate(package: str, prompt: str | None, chat_message, system, messages, threads: int | None, stats: bool,
             **overrides) -> None:
    """Continue PROMPT with the text-generation PACKAGE, streaming to stdout ("-" reads the prompt from stdin).

    With --chat (or --messages) the package's chat template turns the conversation into the prompt,
    as transformers' apply_chat_template does, and the assistant's reply is printed.

    \b
    Examples:
      edge-sdk generate out/smollm "The capital of France is" -n 16
      edge-sdk generate out/smollm "Once upon a time" -t 0.8 --top-p 0.95 --seed 1
      echo "def fib(n):" | edge-sdk generate out/smollm - --stop "\\n\\n"
      edge-sdk generate out/qwen-instruct --chat "What is an NPU?" --system "Answer in one sentence."
      edge-sdk generate out/qwen-instruct --messages conversation.json
    """
    chatting = chat_message is not None or messages is not None
    if chatting == (prompt is not None):
        raise click.UsageError("give either a PROMPT to continue or --chat/--messages, not both or neither")
    if chat_message is not None and messages is not None:
        raise click.UsageError("give --chat or --messages, not both")
    if system is not None and chat_message is None:
        raise click.UsageError("--system goes with --chat")
    generator, options = _generation_setup("generate", package, threads, overrides)
    if chatting:
        conversation = _read_messages(messages) if messages is not None else (
            ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": chat_message}])
        pieces = generator.stream_chat(conversation, options)
    else:
        pieces = generator.stream(sys.stdin.read() if prompt == "-" else prompt, options)
    for piece in pieces:
        click.echo(piece, nl=False)
    click.echo()
    if stats and generator.last_stats:
        s = generator.last_stats
        click.echo(
            f"[{s.prompt_tokens} prompt tokens, {s.generated_tokens} generated; first token "
            f"{s.first_token_seconds * 1e3:.0f} ms; decode {s.decode_tokens_per_second:.1f} tok/s]",
            err=True,
        )


@main.command()
@click.argument("package", type=click.Path())
@click.option("--system", default=None, help="System message that starts the conversation (kept through /reset).")
@_sampling_options
def chat(package: str, system: str | None, threads: int | None, **overrides) -> None:
    """Talk with the text-generation PACKAGE in the terminal; replies stream as they are generated.

    Type a message and press Enter. /reset starts the conversation over, /exit (or Ctrl-D) ends
    the session, Ctrl-C stops a reply (the session goes on). The oldest turns are dropped when the
    conversation outgrows the model's context. The package needs a chat template.

    \b
    Examples:
      edge-sdk chat out/qwen-instruct
      edge-sdk chat out/qwen-instruct --system "You are a terse assistant." -t 0.7 --seed 1
    """
    generator, options = _generation_setup("generate", package, threads, overrides)
    generator.chat_template  # noqa: B018  (no template: a clear error before the session starts)
    start = [{"role": "system", "content": system}] if system is not None else []
    history = list(start)
    click.echo("Chatting with " + package + ": /reset starts over, /exit or Ctrl-D ends, Ctrl-C stops a reply.", err=True)
    while True:
        try:
            click.echo(">>> ", nl=False, err=True)
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            click.echo("\n(/exit or Ctrl-D ends the session)", err=True)
            continue
        if not line:  # end of input (Ctrl-D)
            click.echo(err=True)
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if text in ("/exit", "/quit"):
                return
            if text == "/reset":
                history = list(start)
                click.echo("(history cleared)", err=True)
            else:
                click.echo(f"(unknown command {text}: /reset, /exit)", err=True)
            continue
        history = _chat_turn(generator, options, history, text)


def _chat_turn(generator, options, history: list[dict], text: str) -> list[dict]:
    """One exchange: the reply streamed to stdout; returns the history with both messages (or unchanged on an error)."""
    from edge_sdk.errors import InvalidInputError

    try:
        messages = generator.fit_chat(history + [{"role": "user", "content": text}], options.max_new_tokens)
        if len(messages) < len(history) + 1:
            click.echo("(the oldest turns no longer fit the context and were dropped)", err=True)
        pieces = []
        try:
            for piece in generator.stream_chat(messages, options):
                click.echo(piece, nl=False)
                pieces.append(piece)
        except KeyboardInterrupt:
            click.echo(" (stopped)", nl=False, err=True)
        click.echo()
    except InvalidInputError as e:  # too long for the context, or the template refuses the conversation
        click.echo(f"error: {_one_line(str(e))}", err=True)
        return history
    return messages + [{"role": "assistant", "content": "".join(pieces)}]


@main.command("eval")
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
@_remote_options("--device: measure on this board over ssh (copies the package there).")
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

    \b
    Examples:
      edge-sdk eval out/smollm-int4 --data held-out.txt --reference out/smollm
      edge-sdk eval out/smollm-int4 --json
      edge-sdk eval out/whisper-int8 --data speech/
      edge-sdk eval out/digits-static --reference out/digits-fp32 --digits
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


@main.command("_measure", hidden=True)
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
    with _progress_bar("Transcribing", "utterances") as advance:
        result = evaluate_speech(recognizer, data, progress=advance)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(f"{result.utterances} utterances, {result.audio_seconds:.1f} s of audio")
    click.echo(f"WER                 {result.wer:.2f}%")
    click.echo(f"real-time factor    {result.real_time_factor:.4f}")
    click.echo(f"total time          {result.total_seconds:.2f} s (features {result.features_seconds:.2f}, "
               f"encoder {result.encoder_seconds:.2f}, decoder {result.decoder_seconds:.2f})")


def _evaluate_images(package: str, reference: str | None, num: int, steps: int, digits: bool, threads, as_json: bool) -> None:
    import edge_sdk
    from edge_sdk.evaluation import evaluate_images

    candidate = edge_sdk.load(package, threads=threads)
    other = _load_for("sample", reference, threads, role="--reference") if reference else None
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


class _progress_bar:
    """A rich progress bar on stderr; ``advance(done, total)`` moves it."""

    def __init__(self, title: str, unit: str, enabled: bool = True):
        self.title, self.unit = title, unit
        self.enabled = enabled and sys.stderr.isatty()  # a log file gets no bar
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda done, total: None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn(self.title), BarColumn(), TextColumn("{task.fields[label]}"),
                                  TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._progress.__enter__()
        task = self._progress.add_task(self.title, total=None, label="")

        def advance(done, total):
            self._progress.update(task, completed=done, total=total, label=f"{done:.0f}/{total:.0f} {self.unit}")

        return advance

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)


@main.command()
@click.argument("package", type=click.Path())
@click.argument("audio", nargs=-1, required=True, type=click.Path())
@click.option("-f", "--format", "fmt", type=click.Choice(["txt", "srt", "vtt", "json"]), default="txt", show_default=True,
              help="Output format.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), default=None,
              help="Write <audio name>.<format> files here instead of printing.")
@click.option("--language", default=None, help="Language code for multilingual models (default: detected).")
@click.option("--task", type=click.Choice(["transcribe", "translate"]), default="transcribe", show_default=True)
@click.option("--timestamps/--no-timestamps", default=True, show_default=True, help="Segment times from Whisper's timestamp tokens.")
@click.option("--beam-size", type=int, default=5, show_default=True, help="Beams at temperature 0 (1: greedy).")
@click.option("--best-of", type=int, default=5, show_default=True, help="Candidates sampled at a fallback temperature.")
@click.option("--patience", type=float, default=1.0, show_default=True, help="Beam search: finish at beam size x patience candidates.")
@click.option("--length-penalty", type=float, default=None,
              help="Rank by log-probability / ((5 + length) / 6) ** X [/ length].")
@click.option("--temperature", default="0,0.2,0.4,0.6,0.8,1.0", show_default=True,
              help="Temperature, or comma-separated fallback schedule tried in order.")
@click.option("--compression-ratio-threshold", type=float, default=2.4, show_default=True,
              help="Decode a window again, hotter, when its text's zlib compression ratio is above this (repetition).")
@click.option("--log-prob-threshold", type=float, default=-1.0, show_default=True,
              help="... or its mean token log-probability is below this.")
@click.option("--no-speech-threshold", type=float, default=0.6, show_default=True,
              help="A window is silence when P(no speech) is above this and its log-probability below the above.")
@click.option("--condition-on-previous-text/--no-condition-on-previous-text", default=True, show_default=True,
              help="Prompt each window with the text before it.")
@click.option("--initial-prompt", default=None, help="Text before the first window (names, spellings, style).")
@click.option("--prefix", default=None, help="Text the first window's transcript starts with.")
@click.option("--word-timestamps", is_flag=True, help="Each word's start, end and probability (in JSON; SRT/VTT with --word-cues).")
@click.option("--word-cues", is_flag=True, help="SRT/VTT: one cue per word (implies --word-timestamps).")
@click.option("--vad-filter", is_flag=True, help="Transcribe only the speech the package's Silero VAD finds (times stay the file's).")
@click.option("--vad-parameters", default=None, metavar="K=V,...",
              help="Silero VAD settings, e.g. 'min_silence_duration_ms=500,speech_pad_ms=200' (faster-whisper's names).")
@click.option("--batch-size", type=int, default=4, show_default=True,
              help="Files transcribed side by side, their windows encoded as one batch.")
@click.option("--threads", type=int, default=None, help="Engine threads (default: one per physical core).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def transcribe(package: str, audio: tuple[str, ...], fmt: str, output_dir, language, task, timestamps, beam_size, best_of,
               patience, length_penalty, temperature, compression_ratio_threshold, log_prob_threshold, no_speech_threshold,
               condition_on_previous_text, initial_prompt, prefix, word_timestamps, word_cues, vad_filter, vad_parameters,
               batch_size, threads, quiet) -> None:
    """Transcribe AUDIO files (any sample rate, mono or stereo; WAV, FLAC, OGG, MP3 ...) with a
    speech-recognition PACKAGE, offline. Decoding follows faster-whisper's defaults: beam search of
    5 at temperature 0, then a fallback to 0.2 ... 1.0 (best of 5 samples) for a window that repeats
    itself or is unlikely, each window prompted with the text before it.

    \b
    Examples:
      edge-sdk transcribe out/whisper-int8 meeting.wav
      edge-sdk transcribe out/whisper-int8 a.wav b.flac -f srt -o subtitles/
      edge-sdk transcribe out/whisper-small talk.mp3 --language de --task translate -f json
      edge-sdk transcribe out/whisper-int8 call.wav --beam-size 1 --temperature 0   # greedy, no fallback
      edge-sdk transcribe out/whisper-int8 talk.wav --initial-prompt "Glossary: ONNX, OpenVINO, NNCF."
      edge-sdk transcribe out/whisper-int8 talk.wav -f srt --word-cues            # one subtitle per word
      edge-sdk transcribe out/whisper-int8 long.wav --vad-filter --vad-parameters min_silence_duration_ms=500
      edge-sdk transcribe out/whisper-int8 calls/*.wav -f json -o out/ --batch-size 8
    """
    from edge_sdk.errors import InvalidInputError
    from edge_sdk.runtimes.speech import TranscriptionOptions

    try:
        temperatures = tuple(float(t) for t in temperature.split(",") if t.strip())
    except ValueError:
        raise InvalidInputError(f"--temperature takes a number or comma-separated numbers, got {temperature!r}") from None
    if word_cues and fmt not in ("srt", "vtt"):
        raise InvalidInputError(f"--word-cues is for subtitles: add -f srt or -f vtt (got -f {fmt})")
    vad = _key_values(vad_parameters, "--vad-parameters") if vad_parameters else None
    if vad is not None and not vad_filter:
        raise InvalidInputError("--vad-parameters needs --vad-filter")
    options = TranscriptionOptions(
        language=language, task=task, timestamps=timestamps, beam_size=beam_size, best_of=best_of, patience=patience,
        length_penalty=length_penalty, temperature=temperatures, compression_ratio_threshold=compression_ratio_threshold,
        logprob_threshold=log_prob_threshold, no_speech_threshold=no_speech_threshold,
        condition_on_previous_text=condition_on_previous_text, initial_prompt=initial_prompt, prefix=prefix,
        word_timestamps=word_timestamps or word_cues, vad_filter=vad_filter, vad_parameters=vad)
    if isinstance(batch_size, bool) or not 1 <= batch_size <= 64:
        raise InvalidInputError(f"--batch-size must be an integer in [1, 64], got {batch_size}")
    recognizer = _load_for("transcribe", package, threads)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    if len(audio) == 1:
        with _progress_bar(f"Transcribing {Path(audio[0]).name}", "s", enabled=not quiet) as advance:
            results = [recognizer.transcribe(audio[0], options, progress=advance)]
    else:
        with _progress_bar(f"Transcribing {len(audio)} files", "files", enabled=not quiet) as advance:
            results = recognizer.transcribe_many(list(audio), options, batch_size=batch_size, progress=advance)
    for path, result in zip(audio, results):
        rendered = {
            "txt": lambda: result.text + "\n",
            "srt": lambda: result.to_srt(words=word_cues),
            "vtt": lambda: result.to_vtt(words=word_cues),
            "json": lambda: json.dumps({"file": path, **result.as_dict()}, indent=2) + "\n",
        }[fmt]()
        if output_dir is None:
            if len(audio) > 1 and fmt == "txt":
                rendered = f"{path}: {rendered}"
            click.echo(rendered, nl=False)
        else:
            target = write_atomically(Path(output_dir) / f"{Path(path).stem}.{fmt}",
                                      lambda tmp: tmp.write_text(rendered, encoding="utf-8"))
            if not quiet:
                click.echo(f"wrote {target}", err=True)


def _key_values(text: str, option: str) -> dict:
    """'a=1,b=2.5' -> {"a": 1, "b": 2.5} (numbers as int or float)."""
    from edge_sdk.errors import InvalidInputError

    values = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        key, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not key.strip() or number is None:
            raise InvalidInputError(f"{option} takes comma-separated NAME=NUMBER pairs, got {item!r}")
        values[key.strip()] = int(number) if number.is_integer() and "." not in value else number
    return values


@main.command()
@click.argument("package", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file for the grid of images.")
@click.option("-n", "--num", "num_images", type=int, default=8, show_default=True, help="Images to generate.")
@click.option("-s", "--steps", type=int, default=None, help="Denoising steps [a step-distilled model's own, else 50].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial and step noise.")
@click.option("--scheduler", type=click.Choice(["ddpm", "ddim"]), default="ddim", show_default=True)
@click.option("--eta", type=float, default=0.0, show_default=True, help="DDIM stochasticity (0: deterministic).")
@click.option("--individual", is_flag=True, help="Also write each image as OUTPUT-<i>.png.")
@click.option("--threads", type=int, default=None, help="Engine threads (default: one per physical core).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def sample(package, output, num_images, steps, seed, scheduler, eta, individual, threads, quiet) -> None:
    """Generate images with an image-generation PACKAGE and write them as a PNG grid.

    \b
    Examples:
      edge-sdk sample out/digits -o grid.png
      edge-sdk sample out/digits-int8 -o grid.png -n 16 --steps 100 --scheduler ddpm --seed 3
    """
    from edge_sdk.errors import InvalidInputError
    from edge_sdk.runtimes.images import image_grid, write_png

    target = Path(output).expanduser()
    if not target.parent.is_dir():
        raise InvalidInputError(f"cannot write {target}: directory {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise InvalidInputError(f"cannot write {target}: directory {target.parent} is not writable")
    generator = _load_for("sample", package, threads)
    with _progress_bar("Sampling", "steps", enabled=not quiet) as advance:
        images = generator.sample(num_images=num_images, steps=steps, seed=seed, scheduler=scheduler, eta=eta, progress=advance)
    write_png(image_grid(images), target)
    written = [target]
    if individual:
        for index, image in enumerate(images):
            path = target.with_name(f"{target.stem}-{index}.png")
            write_png(image, path)
            written.append(path)
    stats = generator.last_stats
    click.echo(f"wrote {', '.join(str(p) for p in written[:3])}{' ...' if len(written) > 3 else ''} "
               f"({num_images} images, {stats.steps} steps, {stats.seconds_per_step * 1e3:.1f} ms per step)")


@main.group()
def devices() -> None:
    """Device profiles: the shipped ones, one in detail, or this machine.

    \b
    Examples:
      edge-sdk devices list
      edge-sdk devices show raspberry-pi-5
      edge-sdk devices detect --save my-laptop.toml
    """


@devices.command("list")
def devices_list() -> None:
    """List the shipped device profiles."""
    from edge_sdk.devices.profiles import load_profile, shipped_profiles

    for name in shipped_profiles():
        profile = load_profile(name)
        npu = f", NPU {profile.npu.device}" if profile.npu else ""
        click.echo(f"{name:22} {profile.cpu.cores} cores {profile.cpu.clock_ghz:g} GHz, {profile.memory.ram_gb:g} GB{npu} — "
                   f"{profile.description}")


@devices.command("show")
@click.argument("profile")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def devices_show(profile: str, as_json: bool) -> None:
    """Show PROFILE (a shipped name or a .toml file) as TOML, or JSON."""
    from edge_sdk.devices.profiles import load_profile

    loaded = load_profile(profile)
    click.echo(json.dumps(loaded.as_dict(), indent=2) if as_json else loaded.to_toml().rstrip())


@devices.command("detect")
@click.option("--save", type=click.Path(dir_okay=False), default=None, help="Write the profile to this TOML file (edit it freely).")
@click.option("--name", default="this-machine", show_default=True, help="Name of the saved profile.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@_remote_options("Detect that machine over ssh instead.", setup=False, directory=False)
def devices_detect(save: str | None, name: str, as_json: bool, remote, identity, ssh_config, remote_python) -> None:
    """Detect this machine (or --remote USER@HOST): cores, ISA flags, RAM, clock and a measured
    memory bandwidth (~0.5 s).

    \b
    Examples:
      edge-sdk devices detect --save my-laptop.toml
      edge-sdk devices detect --remote pi@raspberrypi.local --name my-pi5 --save pi.toml
    """
    import dataclasses

    from edge_sdk.devices.profiles import detect
    from edge_sdk.errors import InvalidInputError

    if remote:
        from edge_sdk.devices.remote import Remote

        profile = Remote(remote, identity=identity, ssh_config=ssh_config, python=remote_python).detect(name)
    else:
        profile = dataclasses.replace(detect(), name=name)
    text = profile.to_toml()
    if save:
        target = Path(save).expanduser()
        if not target.parent.is_dir():
            raise InvalidInputError(f"cannot write {target}: directory {target.parent} does not exist")
        write_atomically(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        click.echo(f"wrote {target}", err=True)
    click.echo(json.dumps(profile.as_dict(), indent=2) if as_json else text.rstrip())


@main.command()
@click.argument("packages", nargs=-1, required=True, type=click.Path())
@click.option("--device", default=None, help="Device profile (name or .toml file) to judge against [this machine].")
@click.option("--threads", type=int, default=None, help="Engine threads [the profile's, at most this machine's cores].")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up runs before measuring.")
@click.option("--min-runs", type=int, default=10, show_default=True, help="Measure at least this many runs ...")
@click.option("--min-seconds", type=float, default=5.0, show_default=True, help="... and for at least this long.")
@click.option("--prompt-tokens", type=int, default=32, show_default=True, help="Text: prompt length.")
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Text: tokens generated per run.")
@click.option("--audio", type=click.Path(), default=None, help="Speech: audio file to transcribe [a bundled 7.8 s sentence].")
@click.option("--steps", type=int, default=10, show_default=True, help="Image generation: DDIM steps per run.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click.option("--report", type=click.Path(file_okay=False), default=None, help="Write bench.json, bench.md and bench.png here.")
@_remote_options("Also measure on this machine over ssh (copies the packages, runs the harness there).")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def bench(packages, device, threads, warmup, min_runs, min_seconds, prompt_tokens, new_tokens, audio, steps, json_out,
          report, remote, identity, ssh_config, remote_python, remote_setup, remote_dir, quiet) -> None:
    """Measure PACKAGES: load time, latency p50/p90/p99, task figures, peak memory, size; and
    whether each fits a device profile (PASS/FAIL with the reason).

    Each package runs in a fresh process. With --device naming another machine, the figures are
    measured here and also projected to it (labelled "projected"; the model is printed).

    \b
    Examples:
      edge-sdk bench out/smollm-int8 out/smollm-int4
      edge-sdk bench out/whisper-int8 --device raspberry-pi-5 --report reports/pi5
      edge-sdk bench out/digits-static --steps 20 --min-runs 20 --json bench.json
      edge-sdk bench out/smollm-pi5 --device raspberry-pi-5 --remote pi@raspberrypi.local --remote-setup
    """
    from edge_sdk.devices.bench import BenchOptions, bench as run_bench
    from edge_sdk.devices.report import markdown, write_json, write_reports

    options = BenchOptions(threads=threads, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds,
                           prompt_tokens=prompt_tokens, new_tokens=new_tokens, audio=audio, steps=steps)
    from edge_sdk.devices.report import check_report_target
    from edge_sdk.errors import InvalidInputError

    if json_out and not Path(json_out).expanduser().parent.is_dir():
        raise InvalidInputError(f"cannot write {json_out}: its directory does not exist")
    if report:
        check_report_target(Path(report))  # before minutes of measuring, not after
    board = None
    if remote:
        from edge_sdk.devices.remote import Remote

        if audio:
            raise InvalidInputError("--audio is a file here; --remote benches speech with the bundled sentence")
        board = Remote(remote, identity=identity, ssh_config=ssh_config, python=remote_python, root=remote_dir)
        board.check()  # before minutes of measuring here
    for package in packages:
        _warn_numerics(package)
    progress = None if quiet else (lambda package: click.echo(f"measuring {package} ...", err=True))
    result = run_bench(list(packages), options, device=device, progress=progress)
    if board is not None:
        from edge_sdk.devices.remote import with_remote

        if not quiet:
            click.echo(f"measuring on {remote} ...", err=True)
        result = with_remote(result, board.bench([Path(p) for p in packages], options, device=device, setup=remote_setup))
    click.echo(markdown(result), nl=False)
    if json_out:
        write_json(result, Path(json_out).expanduser())
    if report:
        for path in write_reports(result, Path(report)):
            click.echo(f"wrote {path}", err=True)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Keep the packages here [a temporary directory].")
@click.option("--threads", type=int, default=None, help="Engine threads [one per physical core].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def quickstart(out, threads, as_json) -> None:
    """The whole journey in one offline command, on the bundled Whisper tiny.en: export FP32 and
    INT8 packages, transcribe a synthesized sentence, benchmark both here, and say whether they fit
    a Raspberry Pi 4 and 5 (projected). About 40 seconds on 2 cores.

    \b
    Examples:
      edge-sdk quickstart
      edge-sdk quickstart --out out/quickstart
    """
    from edge_sdk.quickstart import run, table

    result = run(Path(out) if out else None, threads=threads, say=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(result, indent=2) if as_json else table(result))


from edge_sdk.cli_distill import distill, tradeoffs  # noqa: E402  (the distillation commands, in a module of their own)
from edge_sdk.cli_serve import cascade, serve  # noqa: E402  (serving and cascades, likewise)

main.add_command(distill)
main.add_command(tradeoffs)
main.add_command(serve)
main.add_command(cascade)

if __name__ == "__main__":  # pragma: no cover
    main()
