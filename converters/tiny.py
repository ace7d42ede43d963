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


WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
TINY_WHISPER = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                    encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=1500,
                    max_target_positions=64, init_std=0.5)


def build_whisper(output: str | os.PathLike, seed: int = 0, multilingual: bool = True) -> Path:
    """Save a seeded random-weight ``WhisperForConditionalGeneration`` with Whisper's special tokens
    (two languages, transcribe/translate, timestamps <|0.00|> .. <|30.00|>) on a trained BPE."""
    import torch
    from tokenizers import AddedToken
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from edge_sdk.converters.causal_lm_torch import quiet_transformers

    output = Path(output)
    backend = train_tokenizer(256, add_bos=False).backend_tokenizer
    # Whisper's order: the special tokens follow the text vocabulary, end of text first
    backend.add_special_tokens([AddedToken(t, special=True) for t in WHISPER_SPECIALS])
    backend.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False) for i in range(1501)])
    ids = {t: backend.token_to_id(t) for t in WHISPER_SPECIALS}
    torch.manual_seed(seed)
    config = WhisperConfig(vocab_size=backend.get_vocab_size(), decoder_start_token_id=ids["<|startoftranscript|>"],
                           eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                           bos_token_id=ids["<|endoftext|>"], **TINY_WHISPER)
    with quiet_transformers():
        model = WhisperForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen.decoder_start_token_id = ids["<|startoftranscript|>"]
    gen.eos_token_id = gen.pad_token_id = ids["<|endoftext|>"]
    gen.no_timestamps_token_id = ids["<|notimestamps|>"]
    gen.is_multilingual = multilingual
    gen.lang_to_id = {"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]}
    gen.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    gen.suppress_tokens = [ids["<|startoflm|>"], ids["<|startofprev|>"]]
    gen.begin_suppress_tokens = [backend.token_to_id("Ġ"), ids["<|endoftext|>"]]
    gen.max_initial_timestamp_index = 50
    gen.max_length = config.max_target_positions
    model.save_pretrained(output)
    backend.save(str(output / "tokenizer.json"))
    return output


TINY_UNET = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 norm_num_groups=8, attention_head_dim=8)


def build_unet(output: str | os.PathLike, seed: int = 0, config_overrides: dict | None = None,
               scheduler: dict | None = None) -> Path:
    """Save a seeded random ``UNet2DModel`` as a diffusers DDPM pipeline directory (unet/ + scheduler/)."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    output = Path(output)
    torch.manual_seed(seed)
    unet = UNet2DModel(**{**TINY_UNET, **(config_overrides or {})}).eval()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**(scheduler or {"num_train_timesteps": 1000}))).save_pretrained(output)
    return output
