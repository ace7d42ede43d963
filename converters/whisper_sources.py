"""Whisper checkpoints in three layouts, mapped to one: Hugging Face ``WhisperForConditionalGeneration``.

- a Hugging Face directory (config.json with that architecture) or hub id: used as is;
- an OpenAI whisper ``.pt`` checkpoint (``{"dims": ..., "model_state_dict": ...}``), read with
  ``torch.load(weights_only=True)``; a ``tokenizer.json`` must sit beside it (OpenAI's package
  ships its tokenizer as tiktoken files, which edge-sdk does not download);
- a CTranslate2 / faster-whisper directory (``model.bin`` + ``config.json`` + ``tokenizer.json``):
  fused q/k/v and k/v products split back, int8/int16 weights dequantized, the tied output
  projection resolved from its alias.

``hf_weights_from_*`` return ``(config dict for WhisperConfig, {HF parameter name: float32 array})``;
the caller (the export's torch process) builds the model from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.converters.sources import Source, resolver
from edge_sdk.errors import ModelLoadError

ARCHITECTURE = "WhisperForConditionalGeneration"
KINDS = ("huggingface", "openai", "ctranslate2")


def whisper_source_kind(path: Path) -> str | None:
    """"openai" for a .pt file, "ctranslate2" for a model.bin directory, None for anything else."""
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return "openai"
    if path.is_dir() and (path / "model.bin").is_file() and not (path / "pytorch_model.bin").exists():
        config = path / "config.json"
        try:
            data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            data = {}
        if "architectures" not in data:  # a Hugging Face config names its class; CTranslate2's does not
            return "ctranslate2"
    return None


@resolver("whisper")
def _whisper_source(model: str, path: Path) -> Source | None:
    """OpenAI whisper ``.pt`` checkpoints and CTranslate2 (faster-whisper) directories."""
    kind = whisper_source_kind(path)
    if kind is None:
        return None
    from edge_sdk.converters.registry import lookup

    return Source(path, lookup([ARCHITECTURE], source=model), {"kind": kind})


def _sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's encoder position encodings (sin half, then cos half)."""
    increment = np.log(10000) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2))
    angles = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def _config(n_mels, vocab, d_model, enc_layers, enc_heads, dec_layers, dec_heads, enc_ctx, dec_ctx, ffn) -> dict[str, Any]:
    return {
        "architectures": [ARCHITECTURE], "model_type": "whisper",
        "num_mel_bins": n_mels, "vocab_size": vocab, "d_model": d_model,
        "encoder_layers": enc_layers, "encoder_attention_heads": enc_heads, "encoder_ffn_dim": ffn,
        "decoder_layers": dec_layers, "decoder_attention_heads": dec_heads, "decoder_ffn_dim": ffn,
        "max_source_positions": enc_ctx, "max_target_positions": dec_ctx,
        "activation_function": "gelu", "scale_embedding": False, "tie_word_embeddings": True,
    }


# ------------------------------------------------------------------ CTranslate2

def hf_weights_from_ctranslate2(directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Config, HF state dict and the CTranslate2 decoding config (suppress ids ...) of ``directory``."""
    from edge_sdk.converters.ctranslate2_format import read_ct2

    model = read_ct2(directory / "model.bin")
    if model.spec and model.spec != "WhisperSpec":
        raise ModelLoadError(f"{directory} holds a CTranslate2 {model.spec} model, not Whisper; edge-sdk converts WhisperSpec models")
    ct2_config = {}
    if (directory / "config.json").is_file():
        ct2_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    get = model.get
    enc_layers = _count_layers(model, "encoder")
    dec_layers = _count_layers(model, "decoder")
    embed = get("decoder/embeddings/weight")
    d_model = embed.shape[1]
    conv1 = get("encoder/conv1/weight")
    ffn = get("encoder/layer_0/ffn/linear_0/weight").shape[0]
    enc_heads = int(model.scalar("encoder/num_heads", max(1, d_model // 64)))
    dec_heads = int(model.scalar("decoder/num_heads", enc_heads))
    enc_positions = get("encoder/position_encodings/encodings") if model.has("encoder/position_encodings/encodings") else None
    dec_positions = get("decoder/position_encodings/encodings")
    enc_ctx = enc_positions.shape[0] if enc_positions is not None else 1500
    config = _config(conv1.shape[1], embed.shape[0], d_model, enc_layers, enc_heads, dec_layers, dec_heads,
                     enc_ctx, dec_positions.shape[0], ffn)

    weights: dict[str, np.ndarray] = {}
    for i in (1, 2):
        weights[f"model.encoder.conv{i}.weight"] = get(f"encoder/conv{i}/weight")
        weights[f"model.encoder.conv{i}.bias"] = get(f"encoder/conv{i}/bias")
    weights["model.encoder.embed_positions.weight"] = enc_positions if enc_positions is not None else _sinusoids(enc_ctx, d_model)
    _layer_norm(weights, "model.encoder.layer_norm", model, "encoder/layer_norm")
    for i in range(enc_layers):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _fused_self_attention(weights, f"{dst}.self_attn", model, f"{src}/self_attention", d_model)
        _layer_norm(weights, f"{dst}.self_attn_layer_norm", model, f"{src}/self_attention/layer_norm")
        _ffn(weights, dst, model, src)
    weights["model.decoder.embed_tokens.weight"] = embed
    weights["model.decoder.embed_positions.weight"] = dec_positions
    _layer_norm(weights, "model.decoder.layer_norm", model, "decoder/layer_norm")
    for i in range(dec_layers):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _fused_self_attention(weights, f"{dst}.self_attn", model, f"{src}/self_attention", d_model)
        _layer_norm(weights, f"{dst}.self_attn_layer_norm", model, f"{src}/self_attention/layer_norm")
        _linear(weights, f"{dst}.encoder_attn.q_proj", get(f"{src}/attention/linear_0/weight"), get(f"{src}/attention/linear_0/bias"))
        kv_w, kv_b = get(f"{src}/attention/linear_1/weight"), get(f"{src}/attention/linear_1/bias")
        _linear(weights, f"{dst}.encoder_attn.k_proj", kv_w[:d_model], None)
        _linear(weights, f"{dst}.encoder_attn.v_proj", kv_w[d_model:], kv_b[d_model:])
        _linear(weights, f"{dst}.encoder_attn.out_proj", get(f"{src}/attention/linear_2/weight"), get(f"{src}/attention/linear_2/bias"))
        _layer_norm(weights, f"{dst}.encoder_attn_layer_norm", model, f"{src}/attention/layer_norm")
        _ffn(weights, dst, model, src)
    if model.has("decoder/projection/weight"):
        projection = get("decoder/projection/weight")
        if not np.array_equal(projection, embed):
            config["tie_word_embeddings"] = False
            weights["proj_out.weight"] = projection
    return config, weights, ct2_config


def _count_layers(model, side: str) -> int:
    count = 0
    while any(name.startswith(f"{side}/layer_{count}/") for name in model.variables):
        count += 1
    if count == 0:
        raise ModelLoadError(f"the CTranslate2 model has no {side} layers; is it a Whisper model?")
    return count


def _linear(weights, prefix: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
    weights[f"{prefix}.weight"] = weight
    if bias is not None:
        weights[f"{prefix}.bias"] = bias


def _layer_norm(weights, prefix: str, model, src: str) -> None:
    weights[f"{prefix}.weight"] = model.get(f"{src}/gamma")
    weights[f"{prefix}.bias"] = model.get(f"{src}/beta")


def _fused_self_attention(weights, prefix: str, model, src: str, d: int) -> None:
    w, b = model.get(f"{src}/linear_0/weight"), model.get(f"{src}/linear_0/bias")
    _linear(weights, f"{prefix}.q_proj", w[:d], b[:d])
    _linear(weights, f"{prefix}.k_proj", w[d : 2 * d], None)  # Whisper's k has no bias: CT2 stored zeros
    _linear(weights, f"{prefix}.v_proj", w[2 * d :], b[2 * d :])
    _linear(weights, f"{prefix}.out_proj", model.get(f"{src}/linear_1/weight"), model.get(f"{src}/linear_1/bias"))


def _ffn(weights, dst: str, model, src: str) -> None:
    _linear(weights, f"{dst}.fc1", model.get(f"{src}/ffn/linear_0/weight"), model.get(f"{src}/ffn/linear_0/bias"))
    _linear(weights, f"{dst}.fc2", model.get(f"{src}/ffn/linear_1/weight"), model.get(f"{src}/ffn/linear_1/bias"))
    _layer_norm(weights, f"{dst}.final_layer_norm", model, f"{src}/ffn/layer_norm")


# ------------------------------------------------------------------ OpenAI .pt

_OPENAI_BLOCK = {
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm",
}
_OPENAI_TOP = {
    "encoder.conv1": "model.encoder.conv1", "encoder.conv2": "model.encoder.conv2",
    "encoder.ln_post": "model.encoder.layer_norm", "decoder.ln": "model.decoder.layer_norm",
    "decoder.token_embedding": "model.decoder.embed_tokens",
}


def openai_to_hf_name(name: str) -> str | None:
    """The HF parameter name of an OpenAI whisper state-dict entry (None: not a parameter we need)."""
    if name == "encoder.positional_embedding":
        return "model.encoder.embed_positions.weight"
    if name == "decoder.positional_embedding":
        return "model.decoder.embed_positions.weight"
    module, _, leaf = name.rpartition(".")
    if module in _OPENAI_TOP:
        return f"{_OPENAI_TOP[module]}.{leaf}"
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "blocks":
        inner = ".".join(parts[3:])
        if inner in _OPENAI_BLOCK:
            return f"model.{parts[0]}.layers.{parts[2]}.{_OPENAI_BLOCK[inner]}.{leaf}"
    return None


def _ffn_width(state: dict[str, np.ndarray], default: int) -> int:
    """Rows of the first MLP layer (4 x width in every released Whisper, read to be sure)."""
    first = state.get("encoder.blocks.0.mlp.0.weight")
    return int(first.shape[0]) if first is not None else default


def hf_weights_from_openai(dims: dict[str, int], state: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        config = _config(dims["n_mels"], dims["n_vocab"], dims["n_audio_state"], dims["n_audio_layer"], dims["n_audio_head"],
                         dims["n_text_layer"], dims["n_text_head"], dims["n_audio_ctx"], dims["n_text_ctx"],
                         _ffn_width(state, 4 * dims["n_audio_state"]))
    except KeyError as e:
        raise ModelLoadError(f"the checkpoint's 'dims' has no {e.args[0]}; is it an OpenAI whisper checkpoint?") from None
    weights = {}
    for name, value in state.items():
        target = openai_to_hf_name(name)
        if target is not None:
            weights[target] = value
    if "model.encoder.embed_positions.weight" not in weights:  # a buffer some checkpoints leave out
        weights["model.encoder.embed_positions.weight"] = _sinusoids(dims["n_audio_ctx"], dims["n_audio_state"])
    return config, weights
