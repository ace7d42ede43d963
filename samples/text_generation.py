"""The first journey, offline: build a small causal LM, export it to an edge package, generate.

    python samples/text_generation.py [--out out/sample]

1. builds a tiny Llama-architecture model from a config (seeded random weights, a byte-level BPE
   tokenizer trained on the spot) and saves it as a Hugging Face directory, as a distilled
   student would be saved;
2. exports it with ``edge_sdk.export`` (ONNX + KV cache, validated against PyTorch);
3. loads the package with the torch-free runtime and streams a greedy continuation.

The weights are random, so the text is gibberish; the point is the path, which is the same for a
real checkpoint: ``edge-sdk export HuggingFaceTB/SmolLM2-135M -o out/smollm``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import edge_sdk
from edge_sdk.converters.tiny import build_causal_lm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/sample"), help="working directory")
    parser.add_argument("--prompt", default="Once upon a time")
    args = parser.parse_args()

    model_dir = args.out / "tiny-llama"
    package_dir = args.out / "tiny-llama-package"
    print(f"1/3 building a small Llama model in {model_dir}")
    build_causal_lm(
        "LlamaForCausalLM",
        model_dir,
        seed=0,
        config_overrides=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4),
    )

    print(f"2/3 exporting it to {package_dir}")
    edge_sdk.export(model_dir, package_dir, overwrite=True)
    package = edge_sdk.load(package_dir)
    accuracy = package.package.manifest["accuracy"]["max_abs_diff"]
    print(f"    package size {package.package.size_bytes / 1e6:.1f} MB; max |ONNX - PyTorch| logits {accuracy['logits']:.1e}")

    print(f"3/3 generating (greedy, 32 tokens) from {args.prompt!r}:\n")
    sys.stdout.write(args.prompt)
    for piece in package.stream(args.prompt, max_new_tokens=32, ignore_eos=True):
        sys.stdout.write(piece)
        sys.stdout.flush()
    stats = package.last_stats
    print(f"\n\nfirst token {stats.first_token_seconds * 1e3:.1f} ms, decode {stats.decode_tokens_per_second:.0f} tokens/s")
    print(f"next: edge-sdk inspect {package_dir}   |   edge-sdk generate {package_dir} \"Hello\"")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
