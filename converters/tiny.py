"""Small local models built from configs: seeded random weights and a tokenizer trained on the spot.

Tests, samples and benchmarks use these instead of downloading: the architecture is real (a
transformers class saved with ``save_pretrained``), only the weights are random.

Example::

    from edge_sdk.converters.tiny import build_causal_lm
    build_causal_lm("LlamaForCausalLM", "models/tiny-llama", seed=0)
"""

from __future__ import annotations

import os
import re
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
_LLAMA_LIKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.5)
def _partial_rotary(fraction: float) -> dict:
    return {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": fraction}


# Sliding windows far shorter than the test prompts plus their generations, so the window matters.
TINY_WINDOW = 8
TINY_CONFIGS = {
    "GPT2LMHeadModel": dict(n_embd=32, n_layer=2, n_head=4, n_positions=256, initializer_range=0.5),
    "LlamaForCausalLM": dict(_LLAMA_LIKE, tie_word_embeddings=True),
    "Qwen2ForCausalLM": dict(_LLAMA_LIKE, tie_word_embeddings=True),
    # Mistral: a Llama with a sliding window on every layer
    "MistralForCausalLM": dict(_LLAMA_LIKE, head_dim=16, sliding_window=TINY_WINDOW, tie_word_embeddings=False),
    # Phi-3: fused qkv and gate/up projections, a sliding window (Phi-3-mini ships one)
    "Phi3ForCausalLM": dict(_LLAMA_LIKE, sliding_window=TINY_WINDOW, tie_word_embeddings=False),
    # Phi (phi-2): parallel attention and MLP, partial rotary, biases, LayerNorm
    "PhiForCausalLM": dict(_LLAMA_LIKE, rope_parameters=_partial_rotary(0.5)),
    # Gemma: embeddings scaled by sqrt(hidden), (1 + weight) RMSNorm, GeGLU
    "GemmaForCausalLM": dict(_LLAMA_LIKE, head_dim=16, tie_word_embeddings=True),
    # Gemma 2: alternating sliding-window and global layers, attention and final logit soft-capping
    "Gemma2ForCausalLM": dict(_LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=16, sliding_window=TINY_WINDOW,
                              layer_types=["sliding_attention", "full_attention"], attn_logit_softcapping=50.0,
                              final_logit_softcapping=30.0, tie_word_embeddings=False),
    # Gemma 3 (text): QK-norm, sliding layers with their own rotary base
    "Gemma3ForCausalLM": dict(_LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=16, sliding_window=TINY_WINDOW,
                              layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False),
    # GPT-NeoX (Pythia): parallel residual, a quarter of each head rotated, biases
    "GPTNeoXForCausalLM": dict(_LLAMA_LIKE, num_key_value_heads=None, rope_parameters=_partial_rotary(0.25)),
    # OPT: learned positions (offset 2), ReLU, biases
    "OPTForCausalLM": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                           word_embed_proj_dim=64, max_position_embeddings=256, init_std=0.5),
    # Qwen3: QK-norm, explicit head_dim
    "Qwen3ForCausalLM": dict(_LLAMA_LIKE, head_dim=16, tie_word_embeddings=True),
    # Qwen3-MoE: 4 experts, 2 per token (and QK-norm)
    "Qwen3MoeForCausalLM": dict(_LLAMA_LIKE, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                                tie_word_embeddings=False),
    # StableLM 2: partial rotary, per-head QK LayerNorm, qkv biases
    "StableLmForCausalLM": dict(_LLAMA_LIKE, qk_layernorm=True, use_qkv_bias=True, rope_parameters=_partial_rotary(0.25)),
    # SmolLM3: every other layer without rotary embeddings (NoPE)
    "SmolLM3ForCausalLM": dict(_LLAMA_LIKE, no_rope_layers=[1, 0], tie_word_embeddings=True),
    # OLMo 2: norms after attention and MLP, QK-norm over all heads
    "Olmo2ForCausalLM": dict(_LLAMA_LIKE, tie_word_embeddings=False),
    # Granite: embedding, residual, attention and logits multipliers
    "GraniteForCausalLM": dict(_LLAMA_LIKE, embedding_multiplier=2.0, residual_multiplier=0.5,
                               attention_multiplier=0.2, logits_scaling=2.0, tie_word_embeddings=True),
    # Helium: interleaved rotary, RMSNorm epsilon 1e-8 (its default, kept: a zero padding embedding needs it)
    "HeliumForCausalLM": dict(_LLAMA_LIKE, head_dim=16, tie_word_embeddings=False),
}
# generation_config.json settings of tiny models, as some checkpoints ship them
TINY_GENERATION = {"Olmo2ForCausalLM": {"repetition_penalty": 1.3}}
# SmolLM2-135M's shape: the benchmark model (random weights; speed does not depend on them).
SMOLLM2_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, vocab_size=49152, tie_word_embeddings=True,
    rope_theta=100000.0, rms_norm_eps=1e-5,
)

# Qwen2.5-0.5B's shape (tied embeddings, a 151936-token vocabulary: a third of its weights)
QWEN25_05B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
    initializer_range=0.02, sliding_window=None,
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


_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")  # end-of-turn tokens of chat templates


def causal_lm_model_type(architecture: str) -> str:
    """The transformers model type of the causal LM class ``architecture`` (e.g. "mistral"): its
    config class's (several model types alias LlamaForCausalLM, so the mapping alone is ambiguous)."""
    import transformers

    return getattr(transformers, architecture).config_class.model_type


def build_causal_lm(
    architecture: str,
    output: str | os.PathLike,
    seed: int = 0,
    config_overrides: dict | None = None,
    tokenizer_vocab_size: int = 512,
    chat_template: str | None = None,
) -> Path:
    """Save a seeded random-weight causal LM of ``architecture`` with a trained tokenizer to ``output``.

    ``config_overrides`` replace entries of the tiny config (e.g. ``SMOLLM2_135M`` for full size);
    a ``vocab_size`` larger than the tokenizer's is allowed (the extra rows are never produced by it).
    ``chat_template``: a Jinja chat template for the tokenizer; its control tokens (``<|im_start|>``,
    ``<end_of_turn>``, ``[INST]`` ...) become special tokens, and its end-of-turn token an EOS id
    in generation_config.json, as instruction-tuned checkpoints ship them.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edge_sdk.converters.causal_lm_torch import quiet_transformers

    output = Path(output)
    tokenizer = train_tokenizer(tokenizer_vocab_size, add_bos=architecture != "GPT2LMHeadModel")
    turn_end = None
    if chat_template is not None:
        controls = list(dict.fromkeys(re.findall(r"<\|[a-z_]+\|>|<(?:start|end)_of_turn>|\[/?INST\]", chat_template)))
        tokenizer.add_special_tokens({"additional_special_tokens": controls})
        tokenizer.chat_template = chat_template
        turn_end = next((t for t in _TURN_ENDS if t in controls), None)
    settings = {**TINY_CONFIGS.get(architecture, {}), **(config_overrides or {})}
    settings.setdefault("vocab_size", len(tokenizer))
    if settings["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {settings['vocab_size']} is smaller than the tokenizer's {len(tokenizer)}")
    model_type = causal_lm_model_type(architecture)
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
    for key, value in TINY_GENERATION.get(architecture, {}).items():
        setattr(model.generation_config, key, value)
    if turn_end is not None:
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(turn_end)]
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


# GGUF types of a small Llama written by write_gguf, per HF weight (the rest: F32), the way
# llama.cpp's quantize mixes them: what the carry-over tests cover
GGUF_MIX = {"self_attn": "Q4_0", "gate_proj": "Q4_1", "up_proj": "Q4_1", "down_proj": "Q8_0", "embed_tokens": "F16"}


def write_gguf(model_dir: str | os.PathLike, path: str | os.PathLike, types: dict[str, str] | None = None) -> Path:
    """Write the Llama in ``model_dir`` (e.g. from ``build_causal_lm``) as a llama.cpp GGUF file.

    As llama.cpp's ``convert_hf_to_gguf.py`` writes Llamas: its metadata under ``llama.*``, the BPE
    tokenizer as ``tokenizer.ggml.*`` (with the chat template), GGUF tensor names, the query and key
    projections' rows permuted into llama.cpp's rotary layout; each weight quantized by the gguf
    package to the first type in ``types`` (default ``GGUF_MIX``) whose key is in its name, else
    kept F32. For tests of the GGUF source; a real checkpoint goes through llama.cpp's converter.
    """
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    model_dir, path = Path(model_dir), Path(path)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError(f"write_gguf writes Llama models; {model_dir} is a {config.get('model_type')}")
    types = GGUF_MIX if types is None else types
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(model_dir.name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_vocab_size(config["vocab_size"])
    tokenizer = json.loads(Tokenizer.from_file(str(model_dir / "tokenizer.json")).to_str())
    vocab = {**tokenizer["model"]["vocab"], **{t["content"]: t["id"] for t in tokenizer["added_tokens"]}}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {t["content"] for t in tokenizer["added_tokens"] if t.get("special")}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]])
    for key, setter in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                        ("pad_token_id", writer.add_pad_token_id)):
        value = config.get(key)
        if isinstance(value, list):
            value = value[0]
        if value is not None:
            setter(int(value))
    bos = config.get("bos_token_id")
    adds_bos = bos is not None and Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode("a").ids[:1] == [bos]
    writer.add_add_bos_token(adds_bos)
    tokenizer_config = model_dir / "tokenizer_config.json"
    template = json.loads(tokenizer_config.read_text()).get("chat_template") if tokenizer_config.is_file() else None
    template_file = model_dir / "chat_template.jinja"
    template = template or (template_file.read_text() if template_file.is_file() else None)
    if template:
        writer.add_chat_template(template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    for name, weight in load_file(model_dir / "model.safetensors").items():
        base, suffix = name.rsplit(".", 1)
        target = names.get_name(base)
        if target is None:
            continue
        weight = weight.astype(np.float32)
        if base.endswith(("q_proj", "k_proj")):  # llama.cpp's permute: pairs of rotary halves interleaved
            n = heads if base.endswith("q_proj") else kv_heads
            weight = weight.reshape(n, 2, weight.shape[0] // n // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
        kind = next((t for key, t in types.items() if key in name), "F32") if weight.ndim == 2 else "F32"
        if kind == "F32":
            writer.add_tensor(f"{target}.{suffix}", weight)
        elif kind == "F16":
            writer.add_tensor(f"{target}.{suffix}", weight.astype(np.float16))
        else:
            quantized_type = gguf.GGMLQuantizationType[kind]
            writer.add_tensor(f"{target}.{suffix}", gguf.quants.quantize(weight, quantized_type), raw_dtype=quantized_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# diffusers' own dummy Stable Diffusion components (its StableDiffusionPipelineFastTests), with 32 and
# 64 channels so that GroupNorm and attention see more than a handful of values
TINY_SD_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=8,
                    attention_head_dim=8)
TINY_SD_VAE = dict(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                   down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                   up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32)
TINY_CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                      layer_norm_eps=1e-5, max_position_embeddings=77, projection_dim=32)
# Stable Diffusion 1.x's scheduler config (PNDM, as its model_index.json names it)
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)


def train_clip_tokenizer(vocab_size: int = 600, corpus=CORPUS, max_length: int = 77):
    """A ``CLIPTokenizer`` (CLIP's normalizer, pre-tokenizer and ``</w>`` word ends) with a small BPE
    vocabulary trained on ``corpus``: what diffusers pipelines load from ``tokenizer/``; prompts are
    padded to ``max_length`` tokens (CLIP's 77)."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    template = CLIPTokenizer()._tokenizer  # CLIP's normalizer and pre-tokenizer, as transformers builds them
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tokenizer.normalizer = template.normalizer or normalizers.Lowercase()
    tokenizer.pre_tokenizer = template.pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  special_tokens=[], show_progress=False)
    tokenizer.train_from_iterator(list(corpus) * 4, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    for char in alphabet:  # CLIP's vocabulary holds every byte as a word end too
        vocab.setdefault(char + "</w>", len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_stable_diffusion(output: str | os.PathLike, seed: int = 0, *, lcm: bool = False, tiny_vae: bool = False,
                           scheduler: str = "PNDMScheduler") -> Path:
    """Save a seeded random Stable-Diffusion-1.x-shaped pipeline (CLIP text encoder, conditional UNet,
    AutoencoderKL, CLIP tokenizer, scheduler) as a diffusers pipeline directory.

    ``lcm``: a UNet with a guidance-scale embedding (time_cond_proj_dim) and an LCMScheduler, saved as
    a LatentConsistencyModelPipeline; ``tiny_vae``: an AutoencoderTiny (TAESD-shaped) VAE.
    """
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    output = Path(output)
    tokenizer = train_clip_tokenizer()
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**TINY_SD_UNET, **({"time_cond_proj_dim": 32} if lcm else {})).eval()
    if tiny_vae:
        vae = diffusers.AutoencoderTiny(encoder_block_out_channels=(32, 32), decoder_block_out_channels=(32, 32),
                                        num_encoder_blocks=(1, 2), num_decoder_blocks=(2, 1), latent_channels=4).eval()
    else:
        vae = diffusers.AutoencoderKL(**TINY_SD_VAE).eval()
    config = CLIPTextConfig(**TINY_CLIP_TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(config).eval()
    kind = "LCMScheduler" if lcm else scheduler
    sched = getattr(diffusers, kind).from_config(SD_SCHEDULER)
    parts = dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sched)
    if lcm:
        pipeline = diffusers.LatentConsistencyModelPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                            requires_safety_checker=False)
    else:
        pipeline = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False)
    pipeline.save_pretrained(output)
    return output
