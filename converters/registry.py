"""Architectures the exporters support, declared once as data.

Causal LMs export through one generic path (``causal_lm_torch``) over the model's own transformers
modules: what differs between families (QK-norm, partial rotary, soft-capping, sliding windows,
parallel blocks, learned positions, multipliers) runs inside those modules, and the cache shapes
are read from a real forward pass. What the registry keeps per family is data: the features it
exercises (documentation, and what its tiny test model must cover), the attention implementation
to trace when SDPA cannot express the family, and why families that cannot work do not.

A ``*ForCausalLM`` that transformers implements but this list does not name is exported by the
same path as an untested family (the export validates it against PyTorch all the same).
``tests/test_layering.py`` fails when a listed family has no tiny test model.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_sdk.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class CausalLMSpec:
    """A decoder-only causal LM family: exported generically, described by data."""

    architecture: str  # the class name in config.json "architectures"
    task: str = "text-generation"
    features: tuple[str, ...] = ()  # what the family adds to a Llama-style decoder (its tiny test model has them)
    attention: str | None = None  # transformers attention to trace; None: SDPA where the class supports it, else eager
    tested: bool = True  # False: not in the list; exported generically and validated, but without a tiny test model


@dataclass(frozen=True)
class ModelSpec:
    """A model whose shapes come from its own exporter (Whisper, diffusion UNets)."""

    architecture: str
    task: str


ARCHITECTURES: dict[str, CausalLMSpec | ModelSpec] = {}


def register(spec):
    ARCHITECTURES[spec.architecture] = spec
    return spec


SLIDING_WINDOW = "sliding-window attention"
ALTERNATING = "alternating sliding-window and global layers"
for _spec in (
    CausalLMSpec("GPT2LMHeadModel", features=("learned positions", "fused qkv (Conv1D)", "biases")),
    CausalLMSpec("LlamaForCausalLM"),  # also SmolLM, SmolLM2, TinyLlama, OpenLLaMA checkpoints
    CausalLMSpec("Qwen2ForCausalLM", features=("qkv biases",)),  # Qwen2 / Qwen2.5
    CausalLMSpec("MistralForCausalLM", features=(SLIDING_WINDOW,)),
    CausalLMSpec("Phi3ForCausalLM", features=("fused qkv and gate/up projections", SLIDING_WINDOW)),
    CausalLMSpec("PhiForCausalLM", features=("parallel attention and MLP", "partial rotary", "biases", "LayerNorm")),
    CausalLMSpec("GemmaForCausalLM", features=("embedding scaling", "(1 + w) RMSNorm", "GeGLU")),
    # transformers refuses SDPA for Gemma 2: attention logits are soft-capped (tanh) before the softmax
    CausalLMSpec("Gemma2ForCausalLM", features=(ALTERNATING, "attention logit soft-capping",
                                                "final logit soft-capping", "sandwich norms"), attention="eager"),
    CausalLMSpec("Gemma3ForCausalLM", features=(ALTERNATING, "QK-norm", "per-layer-type rotary base")),  # text-only
    CausalLMSpec("GPTNeoXForCausalLM", features=("parallel residual", "partial rotary", "biases")),  # Pythia
    CausalLMSpec("OPTForCausalLM", features=("learned positions with offset", "ReLU", "biases")),
    CausalLMSpec("Qwen3ForCausalLM", features=("QK-norm", "explicit head_dim")),
    CausalLMSpec("Qwen3MoeForCausalLM", features=("mixture of experts (traced as batched matmuls)", "QK-norm")),
    CausalLMSpec("StableLmForCausalLM", features=("partial rotary", "per-head QK LayerNorm", "qkv biases")),
    CausalLMSpec("SmolLM3ForCausalLM", features=("NoPE layers (no rotary every few layers)",)),
    CausalLMSpec("Olmo2ForCausalLM", features=("post-norms", "QK-norm over all heads")),
    CausalLMSpec("GraniteForCausalLM", features=("embedding, residual, attention and logits multipliers",)),
    # kyutai's Helium: rotary over interleaved channel pairs; its RMSNorm epsilon (1e-8) is small enough
    # that onnxscript's optimizer dropped it as "+ 0" (see onnx_export.use_exact_no_op_rules)
    CausalLMSpec("HeliumForCausalLM", features=("interleaved rotary", "RMSNorm epsilon 1e-8")),
):
    register(_spec)
register(ModelSpec("WhisperForConditionalGeneration", task="speech-recognition"))  # also OpenAI .pt and CTranslate2
register(ModelSpec("UNet2DModel", task="image-generation"))  # diffusers, unconditional
register(ModelSpec("StableDiffusionPipeline", task="text-to-image"))  # diffusers, SD-1.x/2.x-shaped (and LCM)


def supported_architectures(task: str | None = None) -> list[str]:
    return sorted(name for name, spec in ARCHITECTURES.items() if task is None or spec.task == task)


# Families whose transformers implementation keeps something other than per-layer keys and values
# (what a decoder graph carries between calls): state-space, recurrent and linear-attention models.
RECURRENT_STATE = "keeps a recurrent state (state-space, RNN or linear attention layers), not a key/value cache per layer"
NOT_EXPORTABLE = {model_type: RECURRENT_STATE for model_type in (
    "mamba", "mamba2", "falcon_mamba", "rwkv", "recurrent_gemma", "xlstm", "jamba", "zamba", "zamba2", "bamba",
    "falcon_h1", "granitemoehybrid", "nemotron_h", "lfm2", "lfm2_moe", "lfm3", "qwen3_next", "minimax",
    "minimax_m2", "minimax_m3_vl_text", "olmo_hybrid", "bailing_hybrid",
)}


def lookup(architectures: list[str] | None, source: str, config: dict | None = None):
    """The spec for a config's ``architectures`` list, or an error saying why it cannot be exported.

    ``config``: the model's config.json, for the families not listed here: a transformers-native
    ``*ForCausalLM`` is exported generically; remote-code, encoder-only, encoder-decoder,
    multimodal and recurrent models are refused with the reason.
    """
    config = config or {}
    for name in architectures or []:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    model_type = config.get("model_type")
    native = _native_causal_lms()
    if model_type not in NOT_EXPORTABLE and model_type not in _encoder_families():
        for name in architectures or []:
            if name in native and name.endswith(("ForCausalLM", "LMHeadModel")):
                return CausalLMSpec(name, tested=False)
    found = ", ".join(architectures) if architectures else "none declared in config.json"
    raise UnsupportedArchitectureError(f"{source} has architecture {found}: {_reason(architectures or [], config, native)}")


def _reason(architectures: list[str], config: dict, native: set[str]) -> str:
    model_type = config.get("model_type")
    listed = f"supported: {', '.join(supported_architectures())}, and other transformers-native *ForCausalLM models"
    if config.get("auto_map") and not any(name in native or name in ARCHITECTURES for name in architectures):
        return ("its code ships with the model (auto_map in config.json, trust_remote_code), and edge-sdk never runs a "
                "model's own code; use a checkpoint converted to a transformers-native architecture (" + listed + ")")
    if model_type in NOT_EXPORTABLE:
        return f"the '{model_type}' family {NOT_EXPORTABLE[model_type]}, so it cannot become an edge-sdk decoder graph"
    if config.get("is_encoder_decoder"):
        return ("an encoder-decoder model (its decoder attends to an encoder's output), not a decoder-only LM; "
                "text-generation exports decoder-only *ForCausalLM models (Whisper is exported as speech-recognition)")
    if model_type in _encoder_families() or any(name.endswith(("ForMaskedLM", "ForSequenceClassification",
                                                                   "ForTokenClassification")) for name in architectures):
        return ("an encoder-only model (bidirectional attention: it encodes or fills in masked tokens and does not "
                "generate text left to right); text-generation exports decoder-only *ForCausalLM models")
    if any(name.endswith("ForConditionalGeneration") for name in architectures):
        return ("a multimodal model; export its text-only *ForCausalLM checkpoint instead (e.g. Gemma3ForCausalLM) "
                f"({listed})")
    if any(name.endswith("Model") and not name.endswith("LMHeadModel") for name in architectures):
        return "a base model without a language-modelling head; export the *ForCausalLM checkpoint of the model"
    return f"which edge-sdk cannot export yet ({listed})"


def _native_causal_lms() -> set[str]:
    """The causal LM classes the installed transformers implements (empty without transformers)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return set()
    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _encoder_families() -> set[str]:
    """Model types of encoder (BERT-style) and encoder-decoder families: their *ForCausalLM / LMHeadModel
    classes are the decoder half of a bidirectional design, not decoder-only LMs."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
    except ImportError:
        return set()
    return set(MODEL_FOR_MASKED_LM_MAPPING_NAMES)
