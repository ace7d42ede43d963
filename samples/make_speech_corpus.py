"""Make speech training data offline: sentences from the standard library's docstrings, spoken by
espeak-ng in several voices and speeds, written as WAV files and a transcripts.tsv that
``edge-sdk eval`` and ``edge-sdk distill`` read.

    python samples/make_speech_corpus.py --out out/speech-corpus [--utterances 2000]
    edge-sdk distill tiny.en -o out/tiny-student --data out/speech-corpus --keep-decoder-layers 2

Sentences are split from docstrings (read with ``ast``, nothing imported), kept when they are plain
English prose of 4 to 20 words, de-duplicated, and never one of the speech benchmark's or the tests'
sentences. Needs espeak-ng (``apt-get install espeak-ng``).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us+f3", "en-gb-x-gbclan")
SPEEDS = (130, 150, 170)  # words per minute
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PROSE = re.compile(r"^[A-Z][A-Za-z ,;'-]+[.!?]$")  # no digits, brackets, underscores or code


def sentences(limit: int, seed: int = 0, exclude: set[str] = frozenset()) -> list[str]:
    """Up to ``limit`` distinct prose sentences from the standard library's docstrings, shuffled by ``seed``."""
    sys.path.insert(0, str(ROOT))
    from edge_sdk.converters.training import stdlib_docstrings

    seen, found = set(), []
    for _, text in stdlib_docstrings():
        for paragraph in text.split("\n\n"):
            for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
                words = sentence.split()
                key = sentence.lower()
                if 4 <= len(words) <= 20 and _PROSE.match(sentence) and key not in seen and key not in exclude:
                    seen.add(key)
                    found.append(sentence)
    random.Random(seed).shuffle(found)
    return found[:limit]


def _excluded() -> set[str]:
    """The sentences the speech benchmark and the tests speak: never training data."""
    excluded = set()
    for path in [ROOT / "benchmarks" / "speech_recognition.py", *(ROOT / "tests").glob("test_*.py")]:
        excluded |= {m.group(1).lower() for m in re.finditer(r'"([A-Z][^"\n]{10,}[.!?])"', path.read_text(encoding="utf-8"))}
    return excluded


def speak(text: str, path: Path, voice: str, speed: int) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/speech-corpus"))
    parser.add_argument("--utterances", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="espeak-ng processes at once")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install -y espeak-ng")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; choose another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = sentences(args.utterances, args.seed, _excluded())
    rng = random.Random(args.seed)
    plan = [(f"u{i:05d}.wav", text, rng.choice(VOICES), rng.choice(SPEEDS)) for i, text in enumerate(chosen)]
    with ThreadPoolExecutor(args.jobs) as pool:
        for done, _ in enumerate(pool.map(lambda item: speak(item[1], args.out / item[0], item[2], item[3]), plan), 1):
            if done % 200 == 0:
                print(f"{done}/{len(plan)} spoken", file=sys.stderr, flush=True)
    (args.out / "transcripts.tsv").write_text("".join(f"{name}\t{text}\n" for name, text, _, _ in plan), encoding="utf-8")
    print(f"{len(plan)} utterances in {len(VOICES)} voices at {len(SPEEDS)} speeds written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
