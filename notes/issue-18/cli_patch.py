from pathlib import Path

p = Path("/work/main/edge_sdk/cli.py")
s = p.read_text()
old = '''@click.option("--timestamps/--no-timestamps", default=True, show_default=True, help="Segment times from Whisper's timestamp tokens.")
@click.option("--threads", type=int, default=None, help="Engine threads (default: one per physical core).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def transcribe(package: str, audio: tuple[str, ...], fmt: str, output_dir, language, task, timestamps, threads, quiet) -> None:
    """Transcribe AUDIO files (any sample rate, mono or stereo; WAV, FLAC, OGG, MP3 ...) with a
    speech-recognition PACKAGE, offline.

    \\b
    Examples:
      edge-sdk transcribe out/whisper-int8 meeting.wav
      edge-sdk transcribe out/whisper-int8 a.wav b.flac -f srt -o subtitles/
      edge-sdk transcribe out/whisper-small talk.mp3 --language de --task translate -f json
    """

    recognizer = _load_for("transcribe", package, threads)'''
assert old in s
new = '''@click.option("--timestamps/--no-timestamps", default=True, show_default=True, help="Segment times from Whisper's timestamp tokens.")
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
@click.option("--threads", type=int, default=None, help="Engine threads (default: one per physical core).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def transcribe(package: str, audio: tuple[str, ...], fmt: str, output_dir, language, task, timestamps, beam_size, best_of,
               patience, length_penalty, temperature, compression_ratio_threshold, log_prob_threshold, no_speech_threshold,
               condition_on_previous_text, initial_prompt, prefix, threads, quiet) -> None:
    """Transcribe AUDIO files (any sample rate, mono or stereo; WAV, FLAC, OGG, MP3 ...) with a
    speech-recognition PACKAGE, offline. Decoding follows faster-whisper's defaults: beam search of
    5 at temperature 0, then a fallback to 0.2 ... 1.0 (best of 5 samples) for a window that repeats
    itself or is unlikely, each window prompted with the text before it.

    \\b
    Examples:
      edge-sdk transcribe out/whisper-int8 meeting.wav
      edge-sdk transcribe out/whisper-int8 a.wav b.flac -f srt -o subtitles/
      edge-sdk transcribe out/whisper-small talk.mp3 --language de --task translate -f json
      edge-sdk transcribe out/whisper-int8 call.wav --beam-size 1 --temperature 0   # greedy, no fallback
      edge-sdk transcribe out/whisper-int8 talk.wav --initial-prompt "Glossary: ONNX, OpenVINO, NNCF."
    """
    from edge_sdk.errors import InvalidInputError
    from edge_sdk.runtimes.speech import TranscriptionOptions

    try:
        temperatures = tuple(float(t) for t in temperature.split(",") if t.strip())
    except ValueError:
        raise InvalidInputError(f"--temperature takes a number or comma-separated numbers, got {temperature!r}") from None
    options = TranscriptionOptions(
        language=language, task=task, timestamps=timestamps, beam_size=beam_size, best_of=best_of, patience=patience,
        length_penalty=length_penalty, temperature=temperatures, compression_ratio_threshold=compression_ratio_threshold,
        logprob_threshold=log_prob_threshold, no_speech_threshold=no_speech_threshold,
        condition_on_previous_text=condition_on_previous_text, initial_prompt=initial_prompt, prefix=prefix)
    recognizer = _load_for("transcribe", package, threads)'''
s = s.replace(old, new)
old2 = '''            result = recognizer.transcribe(path, language=language, task=task, timestamps=timestamps, progress=advance)'''
assert old2 in s
s = s.replace(old2, '''            result = recognizer.transcribe(path, options, progress=advance)''')
p.write_text(s)
print("cli patched")
