"""Load benchmark of `edge-sdk serve` beside llama.cpp's `llama-server`, and the cascade's curve.

    python benchmarks/serve_load.py [--out out/serve-bench] [--clients 1,8,32] [--seconds 60]
        [--package out/bench-peers2/edge-onnxruntime-int8]
        [--llama-server /tmp/peers/llama.cpp/build/bin/llama-server --gguf out/bench-peers2/llama.cpp/model-Q8_0.gguf]
        [--student PKG --teacher PKG --heldout FILE]

Load: both servers run at once on loopback (each with --threads threads and 8 parallel rows:
ours `--parallel 8 --ctx-size 512`, llama-server `--parallel 8 -c 4096` with continuous batching,
i.e. 512 tokens per slot), and the phases interleave (ours at 1 client, llama-server at 1 client,
ours at 8, ...), so machine drift hits both. In a phase, N clients each send streamed completions
back to back for --seconds: a prompt of --prompt-tokens tokens (held-back docstrings cut to length
with the package's tokenizer), --max-tokens new tokens, greedy, end-of-sequence ignored. A request
started before the phase's end runs to its end and counts. Per phase: errors, completed requests
per second, generated tokens per second (the usage the server reports, over the phase's wall time
until the last completion), time to first token and end-to-end latency p50/p99, and the server's
RSS (/proc) at the start and the end. The package and the GGUF are the same random-weight
SmolLM2-135M-shaped model (text_generation.py builds both; INT8 and Q8_0).

Cascade: `cascade.calibrate_text` on held-back docstrings for a distilled student and its teacher
(the distillation benchmark's packages), once over all prompts; then the threshold is chosen on
the first half of the prompts (at most 30% escalated) and applied to the second half, so the
quoted recovery is out of sample.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

try:
    import httpx2 as httpx
except ImportError:  # openai < 3 ships httpx
    import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_healthy(base: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{base} did not become healthy")


def one_request(client, base: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, chunks, usage = None, 0, None
    with client.stream("POST", base + "/v1/completions", json=body, timeout=300) as response:
        if response.status_code != 200:
            response.read()
            return {"error": f"{response.status_code} {response.text[:200]}"}
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]
            if data.get("choices"):  # a chunk per token (its text may be empty: random weights, partial UTF-8)
                chunks += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else chunks
    return {"ttft": (first or end) - start, "e2e": end - start, "tokens": tokens}


def phase(base: str, model: str, pid: int, prompts: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds
    rss_start = rss_mb(pid)

    def client_loop(index: int) -> None:
        i = index
        while time.perf_counter() < deadline:
            try:  # a connection per request: llama-server closes kept-alive ones between requests
                with httpx.Client() as client:
                    result = one_request(client, base, model, prompts[i % len(prompts)], max_tokens)
            except Exception as e:  # counted, not fatal
                result = {"error": f"{type(e).__name__}: {e}"}
            result["done"] = time.perf_counter()
            with lock:
                results.append(result)
            i += clients

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss_end = rss_mb(pid)
    ok = [r for r in results if "error" not in r]
    wall = max((r["done"] for r in results), default=deadline) - start

    def pct(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")

    return {
        "clients": clients, "requests": len(ok), "errors": len(results) - len(ok),
        "error_samples": [r["error"] for r in results if "error" in r][:3],
        "requests_per_second": len(ok) / wall, "tokens_per_second": sum(r["tokens"] for r in ok) / wall,
        "tokens_per_request": statistics.mean(r["tokens"] for r in ok) if ok else 0,
        "ttft_p50": pct([r["ttft"] for r in ok], 0.5), "ttft_p99": pct([r["ttft"] for r in ok], 0.99),
        "e2e_p50": pct([r["e2e"] for r in ok], 0.5), "e2e_p99": pct([r["e2e"] for r in ok], 0.99),
        "rss_start_mb": rss_start, "rss_end_mb": rss_end, "wall_seconds": wall,
    }


def make_prompts(package: Path, heldout: Path, tokens: int, count: int = 64) -> list[str]:
    from edge_sdk.runtimes.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_file(package / "tokenizer.json")
    prompts = []
    for paragraph in heldout.read_text(encoding="utf-8").split("\n\n"):
        ids = tokenizer.encode(paragraph.strip(), add_special_tokens=False)
        if len(ids) >= tokens:
            prompts.append(tokenizer.decode(ids[:tokens]))
        if len(prompts) == count:
            break
    return prompts


def cascade_figures(student: Path, teacher: Path, heldout: Path, count: int, threads: int) -> dict:
    import edge_sdk
    from edge_sdk.serving import cascade as cc

    s, t = edge_sdk.load(student, threads=threads), edge_sdk.load(teacher, threads=threads)
    paragraphs = [p.strip() for p in heldout.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    prompts = []
    for paragraph in paragraphs:
        ids = s.tokenizer.encode(paragraph, add_special_tokens=False)
        if len(ids) >= 28:
            prompts.append(s.tokenizer.decode(ids[:24]))
        if len(prompts) == count:
            break
    start = time.perf_counter()
    report = {}
    for metric in ("teacher_loglik", "agreement"):
        full = cc.calibrate_text(s, t, prompts, max_new_tokens=32, metric=metric)
        half = len(full["items"]) // 2
        fit, test = full["items"][:half], full["items"][half:]
        fit_curve = cc._curve(fit, metric, {})["curve"]
        chosen = cc.choose_threshold(fit_curve, max_escalation=0.3)
        escalate = [it["confidence"] < chosen["threshold"] for it in test]
        s_q = statistics.mean(it["student"][metric] for it in test)
        t_q = statistics.mean(it["teacher"][metric] for it in test)
        c_q = statistics.mean(it["teacher" if e else "student"][metric] for it, e in zip(test, escalate))
        rate = sum(escalate) / len(test)
        report[metric] = {
            "in_sample": {"curve": [{k: p[k] for k in ("escalation_rate", "quality", "random_quality")} for p in full["curve"]],
                          "at_30": cc.recovered(full["curve"], 0.3), "student": full["student_quality"],
                          "teacher": full["teacher_quality"]},
            "out_of_sample": {"threshold": chosen["threshold"], "escalation_rate": rate, "student": s_q, "teacher": t_q,
                              "cascade": c_q, "recovered": (c_q - s_q) / (t_q - s_q) if t_q != s_q else 0.0,
                              "random_recovered": rate},
            "prompts": len(full["items"]),
        }
    report["seconds"] = time.perf_counter() - start
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/serve-bench"))
    parser.add_argument("--package", type=Path, default=Path("out/bench-peers2/edge-onnxruntime-int8"))
    parser.add_argument("--llama-server", type=Path, default=Path("/tmp/peers/llama.cpp/build/bin/llama-server"))
    parser.add_argument("--gguf", type=Path, default=Path("out/bench-peers2/llama.cpp/model-Q8_0.gguf"))
    parser.add_argument("--heldout", type=Path, default=Path("out/bench-distill/teacher/heldout.txt"))
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--student", type=Path, default=Path("out/bench-distill/tradeoffs/packages/student-kd-int4"))
    parser.add_argument("--teacher", type=Path, default=Path("out/bench-distill/tradeoffs/packages/teacher-int8"))
    parser.add_argument("--cascade-prompts", type=int, default=200)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-cascade", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "settings": {k: str(v) for k, v in vars(args).items()}}

    if not args.skip_load:
        prompts = make_prompts(args.package, args.heldout, args.prompt_tokens)
        servers = {}
        port = free_port()
        ours = subprocess.Popen([sys.executable, "-m", "edge_sdk.cli", "serve", f"model={args.package}", "--port", str(port),
                                 "--threads", str(args.threads), "--parallel", str(args.parallel), "--ctx-size", "512",
                                 "--max-queue", "256"], stdout=subprocess.DEVNULL, stderr=open(args.out / "ours.log", "w"))
        servers["edge-sdk serve (ORT int8)"] = (f"http://127.0.0.1:{port}", ours)
        if args.llama_server.is_file() and args.gguf.is_file():
            port = free_port()
            llama = subprocess.Popen([str(args.llama_server), "-m", str(args.gguf), "--port", str(port), "--host", "127.0.0.1",
                                      "-t", str(args.threads), "-tb", str(args.threads), "--parallel", str(args.parallel),
                                      "-c", str(512 * args.parallel), "--cont-batching", "--no-webui"],
                                     stdout=subprocess.DEVNULL, stderr=open(args.out / "llama-server.log", "w"))
            servers["llama-server (GGUF Q8_0)"] = (f"http://127.0.0.1:{port}", llama)
        try:
            for base, process in servers.values():
                wait_healthy(base, process)
                for prompt in prompts[:2]:  # warm-up
                    with httpx.Client() as client:
                        one_request(client, base, "model", prompt, args.max_tokens)
            report["load"] = {name: [] for name in servers}
            for clients in [int(c) for c in args.clients.split(",")]:
                for name, (base, process) in servers.items():
                    figures = phase(base, "model", process.pid, prompts, clients, args.seconds, args.max_tokens)
                    report["load"][name].append(figures)
                    print(f"{name:28s} {clients:3d} clients: {figures['requests_per_second']:.2f} req/s "
                          f"{figures['tokens_per_second']:.1f} tok/s ttft p50/p99 {figures['ttft_p50']*1e3:.0f}/"
                          f"{figures['ttft_p99']*1e3:.0f} ms e2e p50/p99 {figures['e2e_p50']:.2f}/{figures['e2e_p99']:.2f} s "
                          f"errors {figures['errors']} rss {figures['rss_start_mb']:.0f}->{figures['rss_end_mb']:.0f} MB",
                          flush=True)
        finally:
            for _, process in servers.values():
                process.terminate()
                process.wait(timeout=30)

    if not args.skip_cascade:
        report["cascade"] = cascade_figures(args.student, args.teacher, args.heldout, args.cascade_prompts, args.threads)
        for metric, figures in report["cascade"].items():
            if metric == "seconds":
                continue
            o = figures["out_of_sample"]
            print(f"cascade {metric}: in-sample at 30%: {figures['in_sample']['at_30']}; out-of-sample threshold "
                  f"{o['threshold']:.3f} escalates {o['escalation_rate']:.0%}, recovers {o['recovered']:.0%} "
                  f"(random {o['random_recovered']:.0%})", flush=True)

    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
