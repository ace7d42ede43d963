"""``text-generation``: a causal LM continuing a prompt (decoder graph with a KV cache)."""

from __future__ import annotations

from edge_sdk.tasks import Budget, Metric, Projection, Task, register

FIRST_TOKEN = Metric("first_token_ms", "first token ms", "ms", higher_is_better=False)
PREFILL = Metric("prefill_tokens_per_s", "prefill tok/s", "tok/s", higher_is_better=True)
DECODE = Metric("decode_tokens_per_s", "decode tok/s", "tok/s", higher_is_better=True)
DECODE_SECONDS = Metric("decode_seconds", "decode s", "s", higher_is_better=False)


def workload(model, options):
    """Generate ``options.new_tokens`` tokens (greedy, EOS ignored) after a prompt of
    ``options.prompt_tokens`` tokens cut from the bundled evaluation text."""
    from edge_sdk.texts import BUNDLED_EVAL_TEXT

    words = BUNDLED_EVAL_TEXT.read_text(encoding="utf-8").split()
    encode = model.tokenizer.encode
    count = options.prompt_tokens
    while count > 1 and len(encode(" ".join(words[:count]))) > options.prompt_tokens:
        count -= 1
    prompt = " ".join(words[:count])
    settings = model.options(max_new_tokens=options.new_tokens, ignore_eos=True, temperature=0.0)

    def run() -> dict:
        s = model.generate(prompt, settings).stats
        return {FIRST_TOKEN.key: s.first_token_seconds * 1e3, DECODE.key: s.decode_tokens_per_second,
                PREFILL.key: s.prompt_tokens / s.first_token_seconds if s.first_token_seconds else 0.0,
                DECODE_SECONDS.key: s.total_seconds - s.first_token_seconds}

    return run, {"prompt_tokens": len(encode(prompt)), "new_tokens": options.new_tokens}


def figures(metrics: dict) -> str:
    return (f"first token {metrics[FIRST_TOKEN.key]:.1f} ms, prefill {metrics[PREFILL.key]:.1f} tok/s, "
            f"decode {metrics[DECODE.key]:.1f} tok/s")


def _decode_share(metrics: dict) -> float:
    """Share of a run spent decoding (bound by reading the weights once per token)."""
    first = metrics[FIRST_TOKEN.key] / 1e3
    decode = metrics[DECODE_SECONDS.key]
    return decode / (first + decode) if first + decode > 0 else 0.0


TASK = register(Task(
    name="text-generation",
    summary="continue a prompt with a causal language model",
    runtime="edge_sdk.runtimes.text_generation:TextGenerator",
    headline=DECODE,
    metrics=(FIRST_TOKEN, PREFILL, DECODE, DECODE_SECONDS),
    workload=workload,
    figures=figures,
    # prefill is compute-bound; decode reads every weight once per token: bandwidth-bound
    projection=Projection(compute_bound=(FIRST_TOKEN.key, PREFILL.key), memory_bound=(DECODE.key,),
                          memory_share=_decode_share),
    budgets=(Budget("text_first_token_ms", FIRST_TOKEN), Budget("text_decode_tokens_per_s", DECODE)),
    exporter="edge_sdk.converters.causal_lm:export_causal_lm",
    accuracy="edge_sdk.evaluation:text_package_accuracy",
    command="generate",
    try_it='edge-sdk generate {path} "Hello"',
    calibration="text",
))
