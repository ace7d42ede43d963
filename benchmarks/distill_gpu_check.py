"""Distillation on a CUDA GPU: the single-process path and the DDP path over nccl, checked against CPU.

    python benchmarks/distill_gpu_check.py prepare DIR     # here, on CPU: teachers, data, CPU references
    python benchmarks/distill_gpu_check.py check DIR [--out RESULTS.json]   # on the GPU machine

``prepare`` trains the 4-layer docstring Llama the test suite uses as a teacher (~10 s), builds the
random Whisper and UNet teachers, speaks the Whisper training audio with espeak-ng, and records
each kind's CPU loss curve. ``check`` repeats those runs on the GPU and adds what only a GPU
machine can show:

- text, Whisper and UNet students trained on cuda: the record says so, and the loss curve equals
  the CPU one (float sums in another order; cuDNN's TF32 convolutions make the UNet's looser);
- ``torchrun --nproc-per-node 1``: the student wrapped in DDP over nccl, the loss curve equal to
  the single-process GPU run; the same with the teacher's top-k cache (rank 0 fills it behind a
  barrier);
- Ctrl-C on the GPU and ``--resume`` from the checkpoint (cuda tensors saved, read back with
  ``weights_only=True``) give the uninterrupted result;
- on-policy and QAT int4 steps run on cuda and lower the held-out KL;
- ``torchrun --nproc-per-node 2`` on a one-GPU machine is refused in one line, nothing written.

With one GPU, DDP's gradient all-reduce between two nccl ranks cannot run (nccl refuses two ranks
on one device); the two-process equality is the gloo test in tests/test_distillation.py.
Prints one JSON record; exits non-zero if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

SENTENCES = ("The lamp on the desk is bright.", "Seven ships sailed at dawn.", "Please close the window now.",
             "A river runs under the old bridge.", "We bake bread every morning.", "The clock struck nine.")


def _options():
    from edge_sdk.distillation import DistillationOptions

    text = DistillationOptions(keep_layers=2, steps=12, batch_size=8, sequence_length=64, learning_rate=1e-3,
                               save_every=0)
    whisper = DistillationOptions(keep_decoder_layers=1, steps=6, batch_size=2, learning_rate=3e-3, warmup_steps=2,
                                  save_every=0, heldout_fraction=0.34)
    unet = DistillationOptions(layers_per_block=1, steps=6, batch_size=8, learning_rate=2e-3, warmup_steps=2,
                               save_every=0, teacher_samples=16, denoise_weight=0.0)
    return {"text": text, "whisper": whisper, "unet": unet}


def _record(student: Path) -> dict:
    return json.loads((student / "distill.json").read_text())


def _inputs(root: Path) -> dict:
    return {"text": (root / "teacher-4l", root / "distill-data.txt"), "whisper": (root / "whisper" / "hf", root / "speech"),
            "unet": (root / "unet" / "ddpm", None)}


def prepare(root: Path) -> None:
    from edge_sdk.converters.tiny import build_unet, build_whisper
    from edge_sdk.converters.training import TrainingOptions, split_heldout, stdlib_docstrings, train_causal_lm
    from edge_sdk.distillation import distill

    root.mkdir(parents=True, exist_ok=True)
    train, heldout = split_heldout(stdlib_docstrings(max_files=120))
    config = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    train_causal_lm(root / "teacher-4l", train, heldout, config, 512,
                    TrainingOptions(steps=400, max_seconds=None, batch_size=8, sequence_length=64, learning_rate=1e-2,
                                    warmup_steps=20))
    (root / "distill-data.txt").write_text("\n\n".join(train[:60]), encoding="utf-8")
    build_whisper(root / "whisper" / "hf", seed=0, multilingual=False)
    (root / "speech").mkdir(exist_ok=True)
    for number, sentence in enumerate(SENTENCES):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(140 + 10 * number), "-w",
                        str(root / "speech" / f"u{number}.wav"), sentence], check=True, capture_output=True)
    build_unet(root / "unet" / "ddpm", seed=0, config_overrides={"layers_per_block": 2})
    reference = {}
    scratch = root / "cpu-runs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for kind, options in _options().items():
        teacher, data = _inputs(root)[kind]
        record = _record(distill(teacher, scratch / kind, data, options, progress=False))
        reference[kind] = record["loss_curve"]
        if kind == "whisper":
            reference["whisper_pseudo_labels"] = record["data"]["pseudo_labels"]
    shutil.rmtree(scratch)
    (root / "cpu-reference.json").write_text(json.dumps(reference))
    print(json.dumps({"prepared": str(root), "cpu_loss_curves": reference}))


def _max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max(abs(x - y) for x, y in zip(a, b))


def _torchrun(processes: int, teacher: Path, output: Path, data: Path, extra: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "edge_sdk.distillation", str(teacher), "-o", str(output), "--data", str(data), "--keep-layers", "2",
               "--steps", "12", "--batch-size", "8", "--sequence-length", "64", "--learning-rate", "1e-3",
               "--save-every", "0", "-q", *extra]
    # run outside the checkout: `-m` puts the working directory first on sys.path, where the source
    # tree's edge_sdk/ (without its package-dir mapping) would shadow the installed package
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=output.parent)


def check(root: Path, out: Path | None, cpu: bool = False) -> int:
    import torch

    from edge_sdk.distillation import distill
    from edge_sdk.errors import EdgeSDKError

    assert cpu or torch.cuda.is_available(), "no CUDA device: run this on the GPU machine (or --cpu for a dry run)"
    device, backend = ("cpu", "gloo") if cpu else ("cuda", "nccl")
    root = root.resolve()
    reference = json.loads((root / "cpu-reference.json").read_text())
    options = _options()
    inputs = _inputs(root)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "distill-gpu-check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results = {"machine": {"torch": torch.__version__, "cuda": torch.version.cuda} if cpu else
               {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
                "cuda": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version()))},
               "checks": {}}
    failed = []

    def checked(name):
        def wrap(function):
            started = time.perf_counter()
            try:
                figures = function() or {}
                results["checks"][name] = {"ok": True, **figures}
            except Exception as e:  # record and go on: one run shows every check
                failed.append(name)
                results["checks"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                           "traceback": traceback.format_exc()[-3000:]}
            results["checks"][name]["seconds"] = round(time.perf_counter() - started, 1)
            print(name, json.dumps(results["checks"][name])[:400], flush=True)
            return function
        return wrap

    gpu_curves = {}
    tolerance = {"text": 1e-3, "whisper": 1e-3, "unet": 2e-2}

    for kind in ("text", "whisper", "unet"):
        @checked(f"{kind}_single_gpu_matches_cpu")
        def _(kind=kind):
            teacher, data = inputs[kind]
            record = _record(distill(teacher, work / f"{kind}-gpu", data, options[kind], progress=False))
            assert record["device"] == device and record["backend"] is None, (record["device"], record["backend"])
            gpu_curves[kind] = record["loss_curve"]
            difference = _max_diff(record["loss_curve"], reference[kind])
            if kind == "whisper":
                # a random teacher's pseudo-labels are near-ties: the GPU's argmax may pick other tokens,
                # and the two runs then train on different targets; compare the curves only on equal labels
                labels = record["data"]["pseudo_labels"]
                differing = sum(a != b for a, b in zip(labels, reference["whisper_pseudo_labels"]))
                if differing:
                    key = "kl_divergence"
                    assert record["heldout"]["final"][key] < record["heldout"]["initial"][key], record["heldout"]
                    return {"pseudo_labels_differing_from_cpu": differing, "of": len(labels),
                            "max_loss_difference_vs_cpu": difference, "curve": record["loss_curve"]}
            assert difference < tolerance[kind], (f"GPU loss curve differs from CPU by {difference}: "
                                                  f"GPU {record['loss_curve']}, CPU {reference[kind]}, "
                                                  f"held-out GPU {record['heldout']}, record {json.dumps(record)[:1500]}")
            key = "output_kd_mse" if kind == "unet" else "kl_divergence"
            assert record["heldout"]["final"][key] < record["heldout"]["initial"][key], record["heldout"]
            return {"max_loss_difference_vs_cpu": difference, "final_loss": record["loss_curve"][-1],
                    "training_seconds": record["training_seconds"]}

    teacher, data = inputs["text"]

    @checked("torchrun_1_process_ddp_nccl_matches_single_gpu")
    def _():
        done = _torchrun(1, teacher, work / "ddp1", data, [])
        assert done.returncode == 0, done.stderr[-2000:]
        record = _record(work / "ddp1")
        assert (record["processes"], record["device"], record["backend"]) == (1, device, backend), record
        difference = _max_diff(record["loss_curve"], gpu_curves["text"])
        assert difference < 1e-4, f"DDP over nccl differs from the single-process GPU run by {difference}"
        return {"max_loss_difference_vs_single_gpu": difference}

    @checked("torchrun_1_process_teacher_cache_nccl")
    def _():
        done = _torchrun(1, teacher, work / "ddp1-cache", data, ["--teacher-cache", str(work / "cache"), "--top-k", "64"])
        assert done.returncode == 0, done.stderr[-2000:]
        record = _record(work / "ddp1-cache")
        assert record["recipe"]["teacher_outputs"] == "top-64 cache" and record["backend"] == backend
        assert json.loads((work / "cache" / "meta.json").read_text())["complete"]
        single = _record(distill(teacher, work / "cache-single", data,
                                 replace(options["text"], teacher_cache=work / "cache-single.cache", top_k=64), progress=False))
        difference = _max_diff(record["loss_curve"], single["loss_curve"])
        assert difference < 1e-4, f"DDP with the cache differs from one process with it by {difference}"
        return {"max_loss_difference_vs_single_gpu": difference}

    @checked("torchrun_2_processes_on_1_gpu_refused")
    def _():
        if cpu or torch.cuda.device_count() > 1:
            return {"skipped": "not a one-GPU machine"}
        done = _torchrun(2, teacher, work / "ddp2", data, [])
        assert done.returncode != 0 and "one process per GPU" in done.stderr, done.stderr[-2000:]
        assert not (work / "ddp2").exists()
        lines = [line for line in done.stderr.splitlines() if "one process per GPU" in line]
        return {"message": lines[0][:300]}

    @checked("ctrl_c_then_resume_on_gpu_matches_uninterrupted")
    def _():
        def interrupt(step, loss):
            if step == 4:
                os.kill(os.getpid(), signal.SIGINT)

        output = work / "resumed"
        try:
            distill(teacher, output, data, options["text"], progress=False, on_step=interrupt)
            raise AssertionError("the interrupted run did not stop")
        except EdgeSDKError as e:
            assert "--resume" in str(e), e
        state = torch.load(work / "resumed.checkpoint" / "checkpoint.pt", map_location="cpu", weights_only=True)
        distill(teacher, output, data, options["text"], progress=False, resume=True)
        difference = _max_diff(_record(output)["loss_curve"], gpu_curves["text"])
        assert difference < 1e-5, f"resumed run differs by {difference}"
        return {"checkpoint_entries": len(state), "max_loss_difference": difference}

    @checked("on_policy_on_gpu")
    def _():
        record = _record(distill(teacher, work / "on-policy", data,
                                 replace(options["text"], on_policy=1.0, beta=0.5, steps=18, prompt_tokens=16), progress=False))
        assert record["device"] == device
        assert all(map(lambda v: v == v and abs(v) < 1e6, record["loss_curve"]))
        first, last = sum(record["loss_curve"][:4]) / 4, sum(record["loss_curve"][-4:]) / 4
        assert last < first, (first, last)
        return {"first_4_mean": first, "last_4_mean": last}

    @checked("qat_int4_on_gpu")
    def _():
        record = _record(distill(teacher, work / "qat", data, replace(options["text"], steps=20, qat="int4", group_size=32),
                                 progress=False))
        heldout = record["heldout"]
        assert record["device"] == device
        assert heldout["final"]["kl_divergence"] < heldout["initial"]["kl_divergence"], heldout
        return {"kl_initial": heldout["initial"]["kl_divergence"], "kl_final": heldout["final"]["kl_divergence"]}

    results["failed"] = failed
    text = json.dumps(results, indent=1)
    if out:
        out.write_text(text)
    print(json.dumps({"failed": failed, "passed": [k for k in results["checks"] if k not in failed]}))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("prepare", "check"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cpu", action="store_true", help="check: a dry run of this script on CPU (gloo)")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.dir)
        return 0
    return check(args.dir, args.out, args.cpu)


if __name__ == "__main__":
    sys.exit(main())
