"""Architectures the exporters support, declared once as data.

Each entry maps the Hugging Face config attributes an exporter needs to our names. transformers'
own ``attribute_map`` already aliases GPT-2's ``n_layer`` etc. to the common names, so most
entries only name the class. ``tests/test_registry.py`` fails when an entry has no tiny test model.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_sdk.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class CausalLMSpec:
    """How to read the shapes of a causal LM's KV cache from its Hugging Face config."""

    architecture: str  # the class name in config.json "architectures"
    task: str = "text-generation"
    num_layers: str = "num_hidden_layers"  # config attribute: decoder layers
    num_heads: str = "num_attention_heads"  # config attribute: query heads
    num_kv_heads: str | None = "num_key_value_heads"  # config attribute; None: same as num_heads (no GQA)
    hidden_size: str = "hidden_size"  # config attribute: model width
    max_positions: str | None = "max_position_embeddings"  # config attribute: longest context
    head_dim: str | None = "head_dim"  # config attribute if the model sets it; else hidden_size / num_heads

    def read(self, config) -> dict:
        """The cache shape and context facts of ``config`` (a transformers PretrainedConfig)."""
        heads = int(getattr(config, self.num_heads))
        kv_heads = getattr(config, self.num_kv_heads, None) if self.num_kv_heads else None
        head_dim = getattr(config, self.head_dim, None) if self.head_dim else None
        return {
            "num_layers": int(getattr(config, self.num_layers)),
            "num_heads": heads,
            "num_kv_heads": int(kv_heads or heads),
            "head_dim": int(head_dim or int(getattr(config, self.hidden_size)) // heads),
            "hidden_size": int(getattr(config, self.hidden_size)),
            "vocab_size": int(config.vocab_size),
            "max_positions": int(getattr(config, self.max_positions)) if self.max_positions else None,
        }


@dataclass(frozen=True)
class ModelSpec:
    """A model whose shapes come from its own exporter (Whisper, diffusion UNets)."""

    architecture: str
    task: str


ARCHITECTURES: dict[str, CausalLMSpec | ModelSpec] = {}


def register(spec):
    ARCHITECTURES[spec.architecture] = spec
    return spec


register(CausalLMSpec("GPT2LMHeadModel", num_kv_heads=None, head_dim=None))
register(CausalLMSpec("LlamaForCausalLM"))  # also SmolLM, SmolLM2, TinyLlama, OpenLLaMA checkpoints
register(CausalLMSpec("Qwen2ForCausalLM"))  # Qwen2 / Qwen2.5
register(ModelSpec("WhisperForConditionalGeneration", task="speech-recognition"))  # also OpenAI .pt and CTranslate2
register(ModelSpec("UNet2DModel", task="image-generation"))  # diffusers, unconditional


def supported_architectures(task: str | None = None) -> list[str]:
    return sorted(name for name, spec in ARCHITECTURES.items() if task is None or spec.task == task)


def lookup(architectures: list[str] | None, source: str):
    """The spec for a config's ``architectures`` list, or an error naming what is supported."""
    for name in architectures or []:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    found = ", ".join(architectures) if architectures else "none declared in config.json"
    raise UnsupportedArchitectureError(
        f"{source} has architecture {found}, which edge-sdk cannot export yet; "
        f"supported: {', '.join(supported_architectures())}"
    )
