"""The PyTorch side of a Whisper export (runs in the export's child process; see ``stage``).

Two graphs, both with flat tensor inputs and outputs:

    encoder  input_features (batch, n_mels, 3000) float32
             -> cross.{i}.key (batch, heads, head_dim, 1500) and cross.{i}.value (batch, heads, 1500,
                head_dim) for each decoder layer: the cross-attention keys (stored transposed, as
                the product q @ k^T reads them) and values, computed once per 30-second window
    decoder  input_ids (batch, sequence) int64
             past_key_values.{i}.key / .value (batch, heads, past_sequence, head_dim)
             cross.{i}.key / cross.{i}.value of ONE window (batch axis 1)
             -> logits (batch, sequence, vocab), present.{i}.key / present.{i}.value,
                cross_qk (batch, alignment heads, sequence, 1500): the pre-softmax cross-attention
                scores of the model's alignment heads (word timestamps: OpenAI's find_alignment)

Every row of a decoder call attends to the one window it was given: in cross-attention the rows
fold into the query axis, (1, heads, batch x sequence, head_dim) against the window's keys, so a
beam search of 5 reads the window's keys and values once per step, not 5 times (tiling them per
row made a beam-5 step ~5x a greedy one), and no per-step transpose of them is left in the graph.
The alignment heads' scores are the same product the attention takes its softmax of.
Packages exported before this take cross values tiled per row (a dynamic batch axis); the
runtime reads which from the graph's description.

The decoder follows ``edge_sdk.runtimes.decoder``'s contract (the text decoder's names, without a
mask or positions; packages exported before named its cache ``past.{i}.key``). For static-shape
(NPU) packages it also takes ``attention_mask`` (batch, total_sequence) and ``position_ids``
(batch, sequence), as the text decoder does: a fixed-size cache has empty slots to mask, and
positions can no longer come from its length. Its step is
written out here over the model's own modules (layer norms, projections, MLP): transformers'
cache classes do not export, and a flat step is what the runtime drives. Positions come from the
past length, so prefill (the prompt) and decode use one graph.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.converters.validate import Comparison
from edge_sdk.converters.whisper_sources import hf_weights_from_ctranslate2, hf_weights_from_openai
from edge_sdk.errors import ModelLoadError

ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE, MEL_FILE = "encoder.onnx", "decoder.onnx", "tokenizer.json", "mel_filters.npy"
N_SAMPLES, N_FRAMES = 480000, 3000  # 30 s at 16 kHz; 10 ms frames
CROSS_QK = "cross_qk"  # the decoder's alignment-head cross-attention scores (word timestamps)


def encoder_outputs(layers: int) -> list[str]:
    return [f"cross.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def decoder_inputs(layers: int, masked: bool = False) -> list[str]:
    return ["input_ids", *(["attention_mask", "position_ids"] if masked else []),
            *(f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")), *encoder_outputs(layers)]


def decoder_outputs(layers: int, aligned: bool = True) -> list[str]:
    return ["logits", *(f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")), *([CROSS_QK] if aligned else [])]


def alignment_heads(model, ct2_config: dict) -> list[list[int]]:
    """(decoder layer, head) pairs whose cross-attention follows the audio: the checkpoint's
    (generation config, CTranslate2 config), else OpenAI's rule for a model it has no table for:
    every head of the second half of the decoder layers."""
    gen = getattr(model, "generation_config", None)
    heads = getattr(gen, "alignment_heads", None) if gen is not None else None
    if not heads:
        heads = ct2_config.get("alignment_heads")
    layers, per_layer = model.config.decoder_layers, model.config.decoder_attention_heads
    if not heads:
        heads = [[layer, head] for layer in range(layers // 2, layers) for head in range(per_layer)]
    pairs = sorted({(int(layer), int(head)) for layer, head in heads})
    if any(not (0 <= layer < layers and 0 <= head < per_layer) for layer, head in pairs):
        raise ModelLoadError(f"alignment heads {pairs} do not fit a decoder of {layers} layers x {per_layer} heads")
    return [list(pair) for pair in pairs]


# ------------------------------------------------------------------ loading

def load_whisper(source: str, kind: str, work: Path | None = None):
    """(model, tokenizer.json path, CTranslate2 decoding config or {}) for a source of ``kind``.

    A Hugging Face directory with only slow tokenizer files (vocab.json + merges.txt) gets its
    tokenizer.json converted into ``work`` (None: a new temporary directory), never beside the model.
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from edge_sdk.converters.causal_lm_torch import quiet_transformers

    path = Path(source)
    if kind == "huggingface":
        with quiet_transformers():
            model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        raw = path / "generation_config.json"
        if raw.is_file():  # Whisper's own fields (lang_to_id, is_multilingual, no_timestamps_token_id ...):
            import json  # transformers 5 drops keys GenerationConfig does not declare

            for key, value in json.loads(raw.read_text(encoding="utf-8")).items():
                if getattr(model.generation_config, key, None) is None:
                    setattr(model.generation_config, key, value)
        return model, _hf_tokenizer(path, work), {}
    if kind == "ctranslate2":
        config, weights, ct2_config = hf_weights_from_ctranslate2(path)
        tokenizer = path / TOKENIZER_FILE
    elif kind == "openai":
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e})") from e
        if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
            raise ModelLoadError(f"{path} is not an OpenAI whisper checkpoint (no 'dims' and 'model_state_dict')")
        state = {k: v.float().numpy() for k, v in checkpoint["model_state_dict"].items()}
        config, weights = hf_weights_from_openai(dict(checkpoint["dims"]), state)
        ct2_config, tokenizer = {}, path.with_name(TOKENIZER_FILE)
    else:
        raise ModelLoadError(f"unknown Whisper source kind {kind}")
    if not tokenizer.is_file():
        raise ModelLoadError(
            f"no {TOKENIZER_FILE} beside {path}; put the model's Hugging Face tokenizer.json there "
            "(e.g. from openai/whisper-tiny.en) and export again"
        )
    from tokenizers import Tokenizer

    special = Tokenizer.from_file(str(tokenizer))
    eot, sot = special.token_to_id("<|endoftext|>"), special.token_to_id("<|startoftranscript|>")
    if eot is None or sot is None:
        raise ModelLoadError(f"{tokenizer} lacks Whisper's special tokens (<|endoftext|>, <|startoftranscript|>)")
    config.update(pad_token_id=eot, eos_token_id=eot, bos_token_id=eot, decoder_start_token_id=sot)
    with quiet_transformers():
        model = WhisperForConditionalGeneration(WhisperConfig(**config)).eval()
    state = {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for name, value in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "proj_out.weight"]  # tied to the token embedding
    if missing or unexpected:
        raise ModelLoadError(f"{path}: weights do not fit a Whisper model (missing {missing[:4]}, unexpected {unexpected[:4]})")
    if config.get("tie_word_embeddings", True):
        model.tie_weights()
    _set_generation_config(model, decoding_config(model, tokenizer, ct2_config))
    return model, tokenizer, ct2_config


def _set_generation_config(model, decoding: dict) -> None:
    """Give a model built from a converted checkpoint the generation config the original had, so
    ``model.generate`` (the reference of our tests and benchmarks) decodes by Whisper's rules."""
    gen = model.generation_config
    gen.decoder_start_token_id = decoding["sot"]
    gen.eos_token_id = gen.pad_token_id = decoding["eot"]
    gen.no_timestamps_token_id = decoding["no_timestamps"]
    gen.suppress_tokens = decoding["suppress_tokens"]
    gen.begin_suppress_tokens = decoding["begin_suppress_tokens"]
    gen.is_multilingual = decoding["multilingual"]
    gen.max_initial_timestamp_index = int(round(decoding["max_initial_timestamp"] / decoding["time_precision"]))
    gen.max_length = decoding["max_target_positions"]
    if decoding["multilingual"]:
        gen.lang_to_id = {f"<|{code}|>": token for code, token in decoding["languages"].items()}
        gen.task_to_id = {"transcribe": decoding["transcribe"], "translate": decoding["translate"]}


def _hf_tokenizer(model_dir: Path, work: Path | None) -> Path:
    if (model_dir / TOKENIZER_FILE).is_file():
        return model_dir / TOKENIZER_FILE
    import tempfile

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # slow files (vocab.json + merges.txt) -> fast
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="edge-sdk-tokenizer-"))
    work.mkdir(parents=True, exist_ok=True)
    converted = work / "converted-tokenizer.json"  # the user's model directory is never written to
    tokenizer.backend_tokenizer.save(str(converted))
    return converted


# ------------------------------------------------------------------ decoding facts

def decoding_config(model, tokenizer_path: Path, ct2_config: dict) -> dict[str, Any]:
    """Special token ids, suppression lists and limits the runtime's decoder needs."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    gen = getattr(model, "generation_config", None)

    def token(text: str) -> int | None:
        return tokenizer.token_to_id(text)

    eot = token("<|endoftext|>")
    sot = token("<|startoftranscript|>")
    no_timestamps = token("<|notimestamps|>")
    if None in (eot, sot, no_timestamps):
        raise ModelLoadError(f"{tokenizer_path} lacks Whisper's special tokens (<|startoftranscript|>, <|notimestamps|>)")
    translate, transcribe = token("<|translate|>"), token("<|transcribe|>")
    vocab = int(model.config.vocab_size)
    declared = getattr(gen, "is_multilingual", None) if gen is not None else None
    multilingual = bool(declared) if declared is not None else vocab >= 51865  # OpenAI's rule
    languages = {}
    if multilingual and translate is not None:
        for token_id in range(sot + 1, translate):
            text = tokenizer.id_to_token(token_id)
            if text and text.startswith("<|") and text.endswith("|>"):
                languages[text[2:-2]] = token_id

    def listed(name: str, ct2_name: str) -> list[int]:
        value = getattr(gen, name, None) if gen is not None else None
        if value is None:
            value = ct2_config.get(ct2_name)
        return sorted({int(v) for v in value or [] if int(v) >= 0})

    suppress = listed("suppress_tokens", "suppress_ids")
    begin_suppress = listed("begin_suppress_tokens", "suppress_ids_begin")
    if not begin_suppress:
        space = token("Ġ")
        begin_suppress = [t for t in (space, eot) if t is not None]
    return {
        "eot": eot, "sot": sot, "no_timestamps": no_timestamps, "timestamp_begin": no_timestamps + 1,
        "transcribe": transcribe, "translate": translate,
        "no_speech": token("<|nospeech|>") or token("<|nocaptions|>"),
        "start_of_prev": token("<|startofprev|>"),
        "multilingual": multilingual, "languages": languages,
        "suppress_tokens": suppress, "begin_suppress_tokens": begin_suppress,
        "max_target_positions": int(model.config.max_target_positions),
        "alignment_heads": alignment_heads(model, ct2_config),
        "max_initial_timestamp": 1.0, "time_precision": 0.02, "n_mels": int(model.config.num_mel_bins),
        "sample_rate": 16000, "chunk_seconds": 30, "hop_length": 160, "n_fft": 400,
    }


# ------------------------------------------------------------------ graphs

def _modules(model, layers: int, masked: bool = False, aligned: list[list[int]] | None = None):
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = model.model.encoder
            self.layers = model.model.decoder.layers
            self.heads = model.config.decoder_attention_heads

        def forward(self, input_features):
            hidden = self.encoder(input_features).last_hidden_state
            batch, frames, width = hidden.shape
            outputs = []
            for layer in self.layers:
                split = (batch, frames, self.heads, width // self.heads)
                outputs.append(layer.encoder_attn.k_proj(hidden).view(split).permute(0, 2, 3, 1))  # keys transposed
                outputs.append(layer.encoder_attn.v_proj(hidden).view(split).transpose(1, 2))
            return tuple(outputs)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = model.model.decoder
            self.head = model.proj_out
            self.heads = model.config.decoder_attention_heads

        def _split(self, x):
            batch, length, width = x.shape
            return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        def forward(self, input_ids, *inputs):
            length = input_ids.shape[1]
            if masked:
                attention_mask, position_ids, caches = inputs[0], inputs[1], inputs[2:]
            else:
                caches = inputs
            past, cross = caches[: 2 * layers], caches[2 * layers :]
            if masked:
                total = attention_mask.shape[1]
                positions = torch.nn.functional.embedding(position_ids, self.decoder.embed_positions.weight)
                # query i is key total - length + i; it sees earlier keys the mask keeps. Additive with
                # the float minimum, not -inf: a row with nothing to see (padding) stays finite
                causal = torch.arange(total)[None, :] <= (torch.arange(length) + total - length)[:, None]
                keep = causal[None, None] & attention_mask[:, None, None, :].bool()
                visible = torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, torch.finfo(torch.float32).min)
            else:
                past_length = past[0].shape[2]
                positions = self.decoder.embed_positions.weight[past_length : past_length + length]
                # query i sits at position past_length + i and sees keys 0 .. past_length + i
                keys_at = torch.arange(past_length + length)
                visible = keys_at[None, :] <= (torch.arange(length) + past_length)[:, None]
            hidden = self.decoder.embed_tokens(input_ids) + positions
            presents, scores = [], []
            for i, layer in enumerate(self.decoder.layers):
                attn = layer.self_attn
                x = layer.self_attn_layer_norm(hidden)
                q = self._split(attn.q_proj(x) * attn.scaling)
                k = torch.cat([past[2 * i], self._split(attn.k_proj(x))], dim=2)
                v = torch.cat([past[2 * i + 1], self._split(attn.v_proj(x))], dim=2)
                presents += [k, v]
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=1.0)
                hidden = hidden + attn.out_proj(out.transpose(1, 2).flatten(2))
                cross_attn = layer.encoder_attn
                x = layer.encoder_attn_layer_norm(hidden)
                q = cross_attn.q_proj(x) * cross_attn.scaling
                batch, width = q.shape[0], q.shape[2]
                # every row attends to the one window: rows fold into the query axis
                q = q.reshape(1, batch * length, self.heads, width // self.heads).transpose(1, 2)
                qk = q @ cross[2 * i]  # (1, heads, rows x sequence, frames): the keys come transposed
                heads = [h for layer_index, h in aligned or [] if layer_index == i]
                if heads:  # OpenAI's qk: (q * d^-1/4) @ (k * d^-1/4)^T, before the softmax
                    scores.append(qk[0, heads].reshape(len(heads), batch, length, -1).transpose(0, 1))
                out = torch.softmax(qk, dim=-1) @ cross[2 * i + 1]  # (1, heads, rows x sequence, head_dim)
                hidden = hidden + cross_attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))
                x = layer.final_layer_norm(hidden)
                hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
            hidden = self.decoder.layer_norm(hidden)
            return (self.head(hidden), *presents, *([torch.cat(scores, dim=1)] if scores else []))

    return Encoder().eval(), Decoder().eval()


def export_fp32(request: dict[str, Any], step) -> dict[str, Any]:
    """Child-process entry: load the Whisper source, export encoder and decoder, validate them."""
    import torch

    from edge_sdk.converters.onnx_export import export_onnx
    from edge_sdk.runtimes.backend import open_session
    from edge_sdk.runtimes.decoder import DecoderGraph, DecoderState

    work = Path(request["work"])
    step("loading model")
    model, tokenizer_path, ct2_config = load_whisper(request["source"], request["kind"], work)
    config = model.config
    layers, heads = config.decoder_layers, config.decoder_attention_heads
    head_dim = config.d_model // heads
    decoding = decoding_config(model, tokenizer_path, ct2_config)
    masked = bool(request.get("static"))  # static-shape (NPU) packages: a mask and positions for the fixed cache
    # word timestamps need the alignment heads' scores; a static-shape (NPU) decoder leaves them out
    aligned = None if masked else decoding["alignment_heads"]
    encoder, decoder = _modules(model, layers, masked, aligned)

    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(scale=0.5, size=(1, config.num_mel_bins, N_FRAMES)).astype(np.float32))
    prompt = [decoding["sot"], decoding["no_timestamps"]] if not decoding["multilingual"] else [
        decoding["sot"], next(iter(decoding["languages"].values()), decoding["sot"]), decoding["transcribe"], decoding["no_timestamps"]]
    tokens = prompt + [int(t) for t in rng.integers(0, min(decoding["eot"], config.vocab_size), size=4)]
    with torch.inference_mode():
        reference = model(input_features=features, decoder_input_ids=torch.tensor([tokens])).logits[0].numpy()

    step("exporting to ONNX (torch.export)")
    batch, seq, past, total = (torch.export.Dim(n) for n in ("batch", "sequence", "past_sequence", "total_sequence"))
    # traced at batch 2: a dimension traced at size 1 is specialized to 1
    traced = features.repeat(2, 1, 1)
    export_onnx(encoder, (traced,), work / ENCODER_FILE, input_names=["input_features"],
                output_names=encoder_outputs(layers), dynamic_shapes=({0: batch},))
    with torch.inference_mode():
        cross = encoder(traced)
    mask_inputs = (torch.ones(2, 5, dtype=torch.int64), torch.arange(2, 5).repeat(2, 1)) if masked else ()
    trace = (torch.zeros(2, 3, dtype=torch.int64), *mask_inputs, *(torch.zeros(2, heads, 2, head_dim) for _ in range(2 * layers)),
             *(c[:1].clone() for c in cross))  # one window for all rows: its batch axis is 1
    mask_axes = ({0: batch, 1: total}, {0: batch, 1: seq}) if masked else ()
    dynamic = ({0: batch, 1: seq}, (*mask_axes, *({0: batch, 2: past} for _ in range(2 * layers)), *({} for _ in range(2 * layers))))
    export_onnx(decoder, trace, work / DECODER_FILE, input_names=decoder_inputs(layers, masked),
                output_names=decoder_outputs(layers, aligned=bool(aligned)), dynamic_shapes=dynamic)
    Path(work / TOKENIZER_FILE).write_bytes(Path(tokenizer_path).read_bytes())
    np.save(work / MEL_FILE, _mel_filters(config.num_mel_bins))
    del encoder, decoder, model, cross
    gc.collect()

    step("validating against PyTorch")
    comparison = Comparison(atol=request["atol"])
    encoder_session = open_session("onnxruntime", work / ENCODER_FILE)
    cross = encoder_session.run({"input_features": features.numpy()})
    cross_feeds = {name: cross[name] for name in encoder_outputs(layers)}
    del encoder_session
    session = open_session("onnxruntime", work / DECODER_FILE)
    split = len(prompt)
    with DecoderState(session, DecoderGraph.from_session(session), fixed=cross_feeds) as state:
        comparison.check("prefill: logits", state.prefill([tokens[:split]])[0], reference[:split])
        for position in range(split, len(tokens)):  # then one token at a time
            logits = state.step([tokens[position]])
            comparison.check(f"decode {position - split + 1}: logits", logits, reference[position : position + 1])
    comparison.raise_if_failed("the exported Whisper graphs do not reproduce the PyTorch model")
    return {
        "shapes": {"num_layers": layers, "num_heads": heads, "head_dim": head_dim, "d_model": config.d_model,
                   "vocab_size": config.vocab_size, "n_mels": config.num_mel_bins,
                   "encoder_layers": config.encoder_layers, "source_positions": config.max_source_positions},
        "decoding": decoding,
        "max_abs_diff": comparison.max_diffs(),
        "validation_inputs": f"random 30 s features, prompt prefill + {len(tokens) - split} decode steps",
    }


def _mel_filters(n_mels: int) -> np.ndarray:
    """transformers' Whisper mel filter bank (Slaney scale and norm), (n_mels, 201) float32."""
    from transformers import WhisperFeatureExtractor

    return np.asarray(WhisperFeatureExtractor(feature_size=n_mels).mel_filters.T, dtype=np.float32)
