"""Train a small Llama-architecture LM on CPU, on a corpus built locally, in under 10 minutes.

    python samples/train_tiny_lm.py [--out out/tiny-lm] [--minutes 9] [--threads 2]

The corpus is the docstrings of Python's standard library (read with ``ast``, nothing is imported
or downloaded); about 1 file in 20 is held back and written to ``OUT/heldout.txt``. The result is
a Hugging Face directory: export it like any other model and measure quantization on real
structure, e.g.

    edge-sdk export out/tiny-lm -o out/tiny-lm-int4 --weights int4 --eval-data out/tiny-lm/heldout.txt
    edge-sdk generate out/tiny-lm-int4 "Return the"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_sdk.converters.training import TrainingOptions, split_heldout, stdlib_docstrings, train_causal_lm

# ~4.6 M parameters: wide enough to learn docstring English, small enough for 2 cores.
MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
VOCABULARY = 2048


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/tiny-lm"))
    parser.add_argument("--minutes", type=float, default=9.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=TrainingOptions.steps)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    corpus = stdlib_docstrings()
    train, heldout = split_heldout(corpus)
    print(f"corpus: {len(corpus)} files of docstrings, {sum(map(len, train)) / 1e6:.1f} M characters to train on, "
          f"{len(heldout)} files held back", file=sys.stderr)
    options = TrainingOptions(steps=args.steps, max_seconds=args.minutes * 60, threads=args.threads)

    def on_step(step: int, loss: float) -> None:
        if step % 25 == 0:
            print(f"step {step:4d}  loss {loss:.3f}", file=sys.stderr, flush=True)

    report = train_causal_lm(args.out, train, heldout, MODEL, VOCABULARY, options, on_step)
    print(f"trained {report['parameters'] / 1e6:.1f} M parameters for {report['steps']} steps "
          f"({report['tokens_seen'] / 1e6:.1f} M tokens) in {report['seconds'] / 60:.1f} min: "
          f"loss {report['loss_first_10']:.2f} -> {report['loss_last_10']:.2f}; saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
