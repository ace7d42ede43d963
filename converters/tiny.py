"""Small local models built from configs: seeded random weights and a tokenizer trained on the spot.

Tests, samples and benchmarks use these instead of downloading: the architecture is real (a
transformers class saved with ``save_pretrained``), only the weights are random.

Example::

    from edge_sdk.converters.tiny import build_causal_lm
    build_causal_lm("LlamaForCausalLM", "models/tiny-llama", seed=0)
"""

from __future__ import annotations

import os
from pathlib import Path

# Enough varied English for a byte-level BPE tokenizer to learn some merges.
CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices run small models: laptops, Raspberry Pis and NPUs.",
    "A distilled student learns the behaviour of a large teacher model.",
    "Quantization stores weights in eight or four bits to save memory and time.",
    "Once upon a time there was a little robot who wanted to read every book.",
    "The capital of France is Paris; the capital of Italy is Rome.",
    "Numbers like 3.14159, 42 and 2026 appear in text too.",
    "def add(a, b):\n    return a + b\n",
    "Speech recognition turns audio into words; diffusion turns noise into images.",
    "Hello, world! How are you today? I am fine, thank you.",
)
SPECIAL_TOKENS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}

# Tiny configurations of each architecture (2 layers, vocab from the tokenizer). Llama-style models
# use hidden 64 with 4 heads: head size 16, the smallest ONNX Runtime's fused attention accepts.
# initializer_range 0.5 (not the usual 0.02) gives random models peaked, varied next-token
# distributions: greedy output changes token to token, so token-for-token parity means something.
TINY_CONFIGS = {
    "GPT2LMHeadModel": dict(n_embd=32, n_layer=2, n_head=4, n_positions=256, initializer_range=0.5),
    "LlamaForCausalLM": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.5,
    ),
    "Qwen2ForCausalLM": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.5,
    ),
}
# SmolLM2-135M's shape: the benchmark model (random weights; speed does not depend on them).
SMOLLM2_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, vocab_size=49152, tie_word_embeddings=True,
    rope_theta=100000.0, rms_norm_eps=1e-5,
)


def train_tokenizer(vocab_size: int = 512, add_bos: bool = True, corpus=CORPUS, repeats: int = 4):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus`` (any text encodes).

    ``repeats`` repeats a small corpus so that rare merges still reach the trainer's frequency floor.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus) * repeats, trainer=trainer)
    if add_bos:
        bos = SPECIAL_TOKENS["bos"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
    )


def build_causal_lm(
    architecture: str,
    output: str | os.PathLike,
    seed: int = 0,
    config_overrides: dict | None = None,
    tokenizer_vocab_size: int = 512,
) -> Path:
    """Save a seeded random-weight causal LM of ``architecture`` with a trained tokenizer to ``output``.

    ``config_overrides`` replace entries of the tiny config (e.g. ``SMOLLM2_135M`` for full size);
    a ``vocab_size`` larger than the tokenizer's is allowed (the extra rows are never produced by it).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edge_sdk.converters.causal_lm_torch import quiet_transformers

    output = Path(output)
    tokenizer = train_tokenizer(tokenizer_vocab_size, add_bos=architecture != "GPT2LMHeadModel")
    settings = {**TINY_CONFIGS[architecture], **(config_overrides or {})}
    settings.setdefault("vocab_size", len(tokenizer))
    if settings["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {settings['vocab_size']} is smaller than the tokenizer's {len(tokenizer)}")
    model_type = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}[architecture]
    config = AutoConfig.for_model(
        model_type,
        architectures=[architecture],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with quiet_transformers():
        model.save_pretrained(output)
        tokenizer.save_pretrained(output)
    return output
