"""``edge-sdk serve`` and ``edge-sdk cascade calibrate``: serving packages, and choosing a cascade's threshold."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import click

from edge_sdk.errors import InvalidInputError, missing_extra


@click.command()
@click.argument("packages", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 exposes the server to the network).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", envvar="EDGE_SDK_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health [env EDGE_SDK_API_KEY].")
@click.option("--fallback", "fallbacks", multiple=True, metavar="STUDENT=TEACHER",
              help="Cascade: the student answers, the teacher (a served name or a package path) takes what the student is unsure of.")
@click.option("--threshold", type=float, default=None, help="Cascade: escalate when the student's confidence is below this.")
@click.option("--confidence", "measure", type=click.Choice(["mean_logprob", "min_logprob", "neg_entropy"]), default="mean_logprob",
              show_default=True, help="Text cascade: the confidence measure the threshold is in.")
@click.option("--cascade-tokens", type=int, default=8, show_default=True, help="Streamed cascade requests: the student's first K tokens decide.")
@click.option("--parallel", type=int, default=8, show_default=True, help="Text: rows of each model's running batch (llama-server's --parallel).")
@click.option("--ctx-size", "context", type=int, default=None, help="Text: tokens per row of the KV cache [the model's context, at most 4096].")
@click.option("--max-queue", type=int, default=64, show_default=True, help="Requests waiting per model before answering 429.")
@click.option("--max-tokens", type=int, default=4096, show_default=True, help="Largest max_tokens a request may ask for.")
@click.option("--max-images", type=int, default=4, show_default=True, help="Images per request.")
@click.option("--max-pixels", type=int, default=4 * 1024 * 1024, show_default=True,
              help="Text-to-image: width x height x n per request.")
@click.option("--max-body-bytes", type=int, default=25 * 1024 * 1024, show_default=True, help="Largest request body (audio uploads).")
@click.option("--max-audio-seconds", type=float, default=3600, show_default=True, help="Longest recording transcribed.")
@click.option("--request-timeout", type=float, default=600, show_default=True, help="Seconds a request may take (408 after).")
@click.option("--threads", type=int, default=None, help="Engine threads per model [one per physical core].")
@click.option("--log-content", is_flag=True, help="Include prompts and outputs in the request log lines.")
def serve(packages, host, port, api_key, fallbacks, threshold, measure, cascade_tokens, parallel, context, max_queue,
          max_tokens, max_images, max_pixels, max_body_bytes, max_audio_seconds, request_timeout, threads, log_content) -> None:
    """Serve packages over an OpenAI-compatible HTTP API: text (completions, chat, streaming),
    speech (audio/transcriptions) and image (images/generations) packages in one process.

    Each PACKAGE is a directory, or NAME=DIRECTORY to choose the name clients ask for (default: the
    directory's name). Text requests to one model are batched continuously (a request joins the
    running batch at the next decode step); GET /metrics exports Prometheus metrics; one JSON line
    per request goes to stderr.

    \b
    Examples:
      edge-sdk serve out/smollm-int8
      edge-sdk serve out/smollm-int8 out/tiny-en-int8 out/digits --port 8080 --api-key "$KEY"
      edge-sdk serve student=out/student-int4 --fallback student=out/teacher-int8 --threshold -1.2
      curl localhost:8000/v1/completions -H 'content-type: application/json' \\
           -d '{"model": "smollm-int8", "prompt": "Once upon a time", "max_tokens": 32}'
    """
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise missing_extra(e.name or "uvicorn", "serve", "edge-sdk serve") from e
    from edge_sdk.serving.app import ServeOptions, serve as run

    options = ServeOptions(host=host, port=port, api_key=api_key or None, threads=threads, parallel=parallel, context=context,
                           max_queue=max_queue, max_body_bytes=max_body_bytes, max_audio_seconds=max_audio_seconds,
                           max_tokens=max_tokens, max_images=max_images, max_pixels=max_pixels, request_timeout=request_timeout,
                           log_content=log_content, cascade_tokens=cascade_tokens, measure=measure)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    served_log = logging.getLogger("edge_sdk.serving")
    served_log.addHandler(handler)
    served_log.setLevel(logging.INFO)
    served_log.propagate = False
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(f"warning: listening on {host} without --api-key: anyone who reaches this port can use the models", err=True)
    run(list(packages), options, list(fallbacks), threshold, announce=lambda line: click.echo(line, err=True))


@click.group()
def cascade() -> None:
    """Student -> teacher cascades: measure quality against escalation rate and choose a threshold."""


@cascade.command()
@click.argument("student", type=click.Path())
@click.argument("teacher", type=click.Path())
@click.option("--data", type=click.Path(), required=True,
              help="Held-back prompts (text: a file, one per paragraph, or a directory of .txt) or audio (a directory; transcripts.tsv optional).")
@click.option("--target-quality", type=float, default=None, help="Pick the least escalation reaching this quality.")
@click.option("--max-escalation", type=float, default=None, help="Pick the best quality escalating at most this share [0.3].")
@click.option("--confidence", "measure", type=click.Choice(["mean_logprob", "min_logprob", "neg_entropy"]), default="mean_logprob",
              show_default=True, help="Text: the student's confidence measure.")
@click.option("--metric", type=click.Choice(["teacher_loglik", "agreement"]), default="teacher_loglik", show_default=True,
              help="Text: quality of an answer (the teacher's mean log-likelihood of it, or token agreement with the teacher's).")
@click.option("--prompts", "limit", type=int, default=64, show_default=True, help="Held-back items to use at most.")
@click.option("--prompt-tokens", type=int, default=24, show_default=True, help="Text: tokens of each held-back paragraph used as the prompt.")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, help="Text: tokens each model answers with.")
@click.option("-o", "--output", type=click.Path(), default="cascade-curve.json", show_default=True,
              help="The curve as JSON; the PNG plot goes beside it (needs edge-sdk[report]).")
@click.option("--threads", type=int, default=None, help="Engine threads [one per physical core].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def calibrate(student, teacher, data, target_quality, max_escalation, measure, metric, limit, prompt_tokens, max_new_tokens,
              output, threads, quiet) -> None:
    """Measure a cascade on held-back data: for every threshold, the share of requests the student
    would escalate and the quality of the answers, beside random routing at the same rates; pick
    the threshold for --target-quality or --max-escalation; write the curve (JSON and PNG).

    \b
    Examples:
      edge-sdk cascade calibrate out/student-int4 out/teacher-int8 --data heldout.txt
      edge-sdk cascade calibrate out/student-int4 out/teacher-int8 --data heldout.txt --target-quality -2.1
      edge-sdk cascade calibrate out/tiny-en-int8 out/small-en-int8 --data speech/ --max-escalation 0.2
    """
    import edge_sdk
    from edge_sdk.package import write_atomically
    from edge_sdk.serving import cascade as cc

    s_model, t_model = edge_sdk.load(student, threads=threads), edge_sdk.load(teacher, threads=threads)
    kinds = type(s_model).__name__, type(t_model).__name__
    if kinds[0] != kinds[1] or kinds[0] not in ("TextGenerator", "SpeechRecognizer"):
        raise InvalidInputError(f"a cascade pairs two text-generation or two speech-recognition packages; got {kinds[0]} "
                                f"and {kinds[1]}")
    with _progress("calibrating", quiet) as update:
        if kinds[0] == "TextGenerator":
            prompts = _text_prompts(Path(data), s_model, prompt_tokens, limit)
            report = cc.calibrate_text(s_model, t_model, prompts, max_new_tokens=max_new_tokens, measure=measure,
                                       metric=metric, progress=update)
        else:
            clips, references = _audio_items(Path(data), limit)
            report = cc.calibrate_speech(s_model, t_model, clips, references, progress=update)
    chosen = cc.choose_threshold(report["curve"], target_quality, max_escalation)
    report.update(student=str(student), teacher=str(teacher), chosen=chosen,
                  recovered_at_chosen=cc.recovered(report["curve"], chosen["escalation_rate"]))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda tmp: Path(tmp).write_text(json.dumps(_finite(report), indent=2)))
    plot = out.with_suffix(".png")
    try:
        write_atomically(plot, lambda tmp: cc.plot_curve(report, tmp))
    except ImportError:
        plot = None
        click.echo("note: no PNG (matplotlib is not installed: pip install 'edge-sdk[report]')", err=True)
    gap = report["teacher_quality"] - report["student_quality"]
    click.echo(f"{report['metric']}: student only {report['student_quality']:.4f}, teacher only {report['teacher_quality']:.4f} "
               f"({len(report['items'])} items)")
    share = report["recovered_at_chosen"]
    click.echo(f"threshold {chosen['threshold']:.4g}: escalates {chosen['escalation_rate']:.0%}, quality {chosen['quality']:.4f} "
               f"(recovers {share['cascade']:.0%} of the gap{'' if gap else ' (no gap)'}; random routing {share['random']:.0%})")
    click.echo(f"serve it: edge-sdk serve {student} --fallback {Path(student).name}={teacher} --threshold {chosen['threshold']:.4g}")
    click.echo(f"wrote {out}" + (f" and {plot}" if plot else ""), err=True)


def _finite(value):
    """JSON without Infinity: an endpoint's threshold (escalate nothing / everything) becomes a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _text_prompts(path: Path, lm, prompt_tokens: int, limit: int) -> list[str]:
    """Held-back prompts: each paragraph's first ``prompt_tokens`` tokens (paragraphs are separated
    by blank lines; a directory's .txt files are read in name order)."""
    if not path.exists():
        raise InvalidInputError(f"--data {path} does not exist")
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    paragraphs = []
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        paragraphs += [p.strip() for p in text.split("\n\n") if p.strip()]
    prompts = []
    for paragraph in paragraphs:
        ids = lm.tokenizer.encode(paragraph, add_special_tokens=False)
        if len(ids) < prompt_tokens + 4:
            continue  # too short to continue meaningfully
        prompts.append(lm.tokenizer.decode(ids[:prompt_tokens]))
        if len(prompts) == limit:
            break
    if not prompts:
        raise InvalidInputError(f"--data {path} has no paragraph longer than {prompt_tokens + 4} tokens; give held-back text")
    return prompts


def _audio_items(path: Path, limit: int):
    """Audio files of a directory with their reference transcripts (transcripts.tsv), or without
    (the teacher's transcripts are then the reference)."""
    from edge_sdk.evaluation import read_transcripts

    if not path.is_dir():
        raise InvalidInputError(f"--data {path}: speech calibration takes a directory of audio files (transcripts.tsv optional)")
    if (path / "transcripts.tsv").is_file():
        pairs = read_transcripts(path)[:limit]
        return [p for p, _ in pairs], [t for _, t in pairs]
    clips = sorted(p for p in path.iterdir() if p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3"))[:limit]
    if not clips:
        raise InvalidInputError(f"--data {path} has no audio files (.wav, .flac, .ogg, .mp3)")
    return clips, [None] * len(clips)


class _progress:
    """A rich progress bar on stderr; the object it yields is ``update(done, total)``."""

    def __init__(self, title: str, quiet: bool):
        self.title, self.quiet, self._bar = title, quiet, None

    def __enter__(self):
        if self.quiet:
            return lambda done, total: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn(self.title), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             console=Console(stderr=True))
        self._bar.start()
        task = self._bar.add_task(self.title, total=None)
        return lambda done, total: self._bar.update(task, completed=done, total=total)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
