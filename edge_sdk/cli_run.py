"""The run commands: ``generate``, ``chat``, ``transcribe`` and ``sample`` (torch-free: they import no converter)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edge_sdk.cli_common import load_for, one_line, progress_bar
from edge_sdk.package import write_atomically


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
    generator = load_for(command, package, threads)
    return generator, generator.options(**overrides)


def _read_messages(path: str) -> list:
    from edge_sdk.errors import InvalidInputError

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"cannot read the chat messages in {path}: {e}; give a JSON list like "
                                '[{"role": "user", "content": "Hi"}]') from e


@click.command()
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


@click.command()
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
        click.echo(f"error: {one_line(str(e))}", err=True)
        return history
    return messages + [{"role": "assistant", "content": "".join(pieces)}]


@click.command()
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
    recognizer = load_for("transcribe", package, threads)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    if len(audio) == 1:
        with progress_bar(f"Transcribing {Path(audio[0]).name}", "s", enabled=not quiet) as advance:
            results = [recognizer.transcribe(audio[0], options, progress=advance)]
    else:
        with progress_bar(f"Transcribing {len(audio)} files", "files", enabled=not quiet) as advance:
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


def _size(text: str | None) -> tuple[int | None, int | None]:
    """--size WIDTHxHEIGHT (or one number for a square) -> (width, height)."""
    from edge_sdk.errors import InvalidInputError

    if text is None:
        return None, None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise InvalidInputError(f"--size takes WIDTHxHEIGHT in pixels (e.g. 512x512) or one number, got {text!r}")
    return values[0], values[-1]


@click.command()
@click.argument("package", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file for the grid of images.")
@click.option("-p", "--prompt", default=None, help="Text-to-image: what to draw.")
@click.option("--negative-prompt", default=None, help="Text-to-image: what to steer away from (needs guidance > 1).")
@click.option("-g", "--guidance-scale", type=float, default=None,
              help="Text-to-image: classifier-free guidance [the package's: 7.5, an LCM's 8.5; <= 1 turns it off].")
@click.option("--size", default=None, metavar="WxH", help="Text-to-image: image size in pixels, multiples of 8 [the package's].")
@click.option("--init-image", type=click.Path(dir_okay=False), default=None,
              help="Text-to-image: start from this image (image-to-image); resized to --size when given.")
@click.option("--strength", type=float, default=0.8, show_default=True,
              help="Image-to-image: how much of the init image is noised away (1: all of it).")
@click.option("-n", "--num", "num_images", type=int, default=None,
              help="Images to generate [8; text-to-image: 1].")
@click.option("-s", "--steps", type=int, default=None,
              help="Denoising steps [a step-distilled model's own, an LCM's 4, else 50].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the noise (text-to-image: diffusers' torch.Generator(\"cpu\").manual_seed(SEED) noise).")
@click.option("--scheduler", type=click.Choice(["ddpm", "ddim", "pndm", "euler", "euler-ancestral", "dpm++2m",
                                                 "dpm++2m-karras", "lcm"]), default=None,
              help="Sampler [ddim; text-to-image: the package's own].")
@click.option("--eta", type=float, default=0.0, show_default=True, help="DDIM stochasticity (0: deterministic).")
@click.option("--individual", is_flag=True, help="Also write each image as OUTPUT-<i>.png.")
@click.option("--threads", type=int, default=None, help="Engine threads (default: one per physical core).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def sample(package, output, prompt, negative_prompt, guidance_scale, size, init_image, strength, num_images, steps, seed,
           scheduler, eta, individual, threads, quiet) -> None:
    """Generate images with an image-generation or text-to-image PACKAGE and write them as a PNG grid.

    \b
    Examples:
      edge-sdk sample out/digits -o grid.png
      edge-sdk sample out/digits-int8 -o grid.png -n 16 --steps 100 --scheduler ddpm --seed 3
      edge-sdk sample out/sd-int8 -p "a watercolor fox" --negative-prompt blurry -g 7 --steps 25 -o fox.png
      edge-sdk sample out/sd-int8 -p "the same fox at night" --init-image fox.png --strength 0.6 -o night.png
    """
    from edge_sdk.errors import InvalidInputError
    from edge_sdk.runtimes.images import image_grid, write_png

    target = Path(output).expanduser()
    if not target.parent.is_dir():
        raise InvalidInputError(f"cannot write {target}: directory {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise InvalidInputError(f"cannot write {target}: directory {target.parent} is not writable")
    width, height = _size(size)
    generator = load_for("sample", package, threads)
    conditional = generator.package.task == "text-to-image"
    if conditional:
        if prompt is None:
            raise InvalidInputError(f"{package} is a text-to-image package: give a --prompt")
        options = generator.options(prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                                    width=width, height=height, init_image=init_image, strength=strength,
                                    num_images=1 if num_images is None else num_images, steps=steps, seed=seed,
                                    scheduler=scheduler, eta=eta)
    else:
        given = [flag for flag, value in (("--prompt", prompt), ("--negative-prompt", negative_prompt),
                                          ("--guidance-scale", guidance_scale), ("--size", size),
                                          ("--init-image", init_image)) if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)}: {package} is an unconditional image model; it takes no prompt")
        options = generator.options(num_images=8 if num_images is None else num_images, steps=steps, seed=seed,
                                    scheduler=scheduler or "ddim", eta=eta)
    with progress_bar("Sampling", "steps", enabled=not quiet) as advance:
        images = generator.generate(options, progress=advance).images
    write_png(image_grid(images), target)
    written = [target]
    if individual:
        for index, image in enumerate(images):
            path = target.with_name(f"{target.stem}-{index}.png")
            write_png(image, path)
            written.append(path)
    stats = generator.last_stats
    click.echo(f"wrote {', '.join(str(p) for p in written[:3])}{' ...' if len(written) > 3 else ''} "
               f"({len(images)} images, {stats.steps} steps, {stats.seconds_per_step * 1e3:.1f} ms per step)")
