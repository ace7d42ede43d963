"""GGUF sources: small GGUFs the tests write themselves (the gguf package's writer; Q8_0, Q4_0, Q4_1, F16
and F32 tensors) export as transformers reads them, their quantized blocks carried into int4 / int8
packages bit for bit; bad GGUFs fail in one line and write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

import edge_sdk
from edge_sdk.cli import main
from edge_sdk.converters.export import ExportOptions, export
from edge_sdk.converters.gguf import merge_parts, read_gguf
from edge_sdk.converters.tiny import GGUF_MIX, write_gguf
from edge_sdk.errors import ModelLoadError, UnsupportedArchitectureError
from edge_sdk.quantization import QuantizationOptions

pytestmark = pytest.mark.xdist_group("gguf")  # one worker: the module's packages are exported once

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama as a llama.cpp GGUF: attention Q4_0, gate/up Q4_1, down Q8_0, embedding F16 (GGUF_MIX)."""
    return write_gguf(tiny_model_dir("LlamaForCausalLM"), tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="module")
def gguf_package(tiny_gguf, tmp_path_factory):
    """(weights, ExportOptions fields) -> the tiny GGUF's package (exported once; the torch stage once for all)."""
    root, made = tmp_path_factory.mktemp("gguf-packages"), {}

    def get(weights: str, accuracy_level: int = 4, **fields) -> Path:
        key = (weights, accuracy_level, tuple(sorted(fields.items())))
        if key not in made:
            quantization = QuantizationOptions(weights=weights, accuracy_level=accuracy_level)
            made[key] = export(tiny_gguf, root / f"{weights}-{len(made)}", ExportOptions(quantization=quantization, **fields),
                               progress=False)
        return made[key]

    return get


def _reverse_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores a Llama's query/key rows with rotary halves interleaved; back to Hugging Face's order."""
    return weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_weights(path: Path, config: dict) -> dict[str, np.ndarray]:
    """Every 2-D tensor of the GGUF dequantized by the gguf package, in Hugging Face's row order, by GGUF name."""
    from gguf import GGUFReader, quants

    weights = {}
    for tensor in GGUFReader(path).tensors:
        weight = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float32)
        if weight.ndim != 2:
            continue
        if ".attn_q." in tensor.name:
            weight = _reverse_permute(weight, config["num_attention_heads"])
        elif ".attn_k." in tensor.name:
            weight = _reverse_permute(weight, config["num_key_value_heads"])
        weights[tensor.name] = weight
    return weights


def _package_weights(package: Path) -> dict[str, np.ndarray]:
    """Each MatMulNBits of a package dequantized from its own initializers (N, K), by node name: the
    packed values minus the zero points times the scales, plus a Q4_1 layer's per-block minimums."""
    model = onnx.load(str(package / "decoder.onnx"))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        n, k, bits, block = attributes["N"], attributes["K"], attributes["bits"], attributes["block_size"]
        packed = initializers[node.input[1]].reshape(n, k // block, -1)
        values = packed if bits == 8 else np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, k // block, block)
        zero = initializers[node.input[3]].reshape(n, -1) if len(node.input) > 3 else np.full((n, 1), 1 << (bits - 1))
        if bits == 4 and len(node.input) > 3:
            zero = np.stack([zero & 0x0F, zero >> 4], axis=-1).reshape(n, -1)[:, : k // block]
        scales = initializers[node.input[2]].reshape(n, k // block)
        weight = scales[..., None] * (values.astype(np.float32) - zero.reshape(n, -1)[..., None].astype(np.float32))
        minimums = initializers.get(node.input[1][: -len("_B")] + "_minimums") if node.input[1].endswith("_gguf_B") else None
        if minimums is not None:
            weight = weight + minimums.T[..., None]
        found[node.name] = weight.reshape(n, k)
    return found


def test_gguf_source_exports_what_transformers_reads_from_it(tiny_gguf, gguf_package):
    """The FP32 package of a GGUF: manifest names the format and its tensor types; the package's
    tokenizer and greedy tokens are transformers' on the same file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = gguf_package("fp32")
    source = json.loads((package / "manifest.json").read_text())["source"]
    assert source["format"] == "gguf" and source["gguf"]["architecture"] == "llama" and source["architecture"] == "LlamaForCausalLM"
    assert source["gguf"]["tensor_types"] == {"F16": 1, "F32": 5, "Q4_0": 8, "Q4_1": 4, "Q8_0": 2}
    model = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    lm = edge_sdk.load(package)
    ids = tokenizer(PROMPT)["input_ids"]
    assert lm.tokenizer.encode(PROMPT) == ids
    expected = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, min_new_tokens=16)[0, len(ids):].tolist()
    assert lm.generate(PROMPT, max_new_tokens=16, temperature=0.0, ignore_eos=True).token_ids == expected


def test_int4_package_carries_q4_0_and_q4_1_blocks_bit_for_bit(tiny_gguf, gguf_package):
    """--weights int4 from the GGUF: its Q4_0 and Q4_1 tensors become MatMulNBits blocks of 32 as they
    are (dequantized: exactly the gguf package's dequantization), merged q/k/v and gate/up layers
    included; the Q8_0 down projections (8-bit) and the F16 head are quantized by the recipe, and
    the manifest says so."""
    package = gguf_package("int4")
    recipe = json.loads((package / "manifest.json").read_text())["precision"]["recipe"]
    assert recipe["from_source"]["carried"] == {"Q4_0": 4, "Q4_1": 2}  # per layer: q+k+v merged, o; gate+up merged
    assert recipe["from_source"]["requantized"] == {"Q8_0 is 8-bit and the layer is planned 4-bit": 2,
                                                    "no quantized GGUF tensor of its own": 1}
    config = json.loads((Path(edge_sdk.load(package).package.root) / "manifest.json").read_text())["model"]
    source = _gguf_weights(tiny_gguf, {"num_attention_heads": config["num_heads"], "num_key_value_heads": config["num_kv_heads"]})
    ours = list(_package_weights(package).values())
    expected = []
    for layer in range(config["num_layers"]):
        blk = f"blk.{layer}"
        expected += [np.concatenate([source[f"{blk}.attn_{p}.weight"] for p in ("q", "k", "v")]),  # merged q/k/v (Q4_0)
                     source[f"{blk}.attn_output.weight"],  # Q4_0
                     np.concatenate([source[f"{blk}.ffn_{p}.weight"] for p in ("gate", "up")])]  # merged gate/up (Q4_1)
    for weight in expected:  # each equals the GGUF's own dequantization, to the bit
        assert any(w.shape == weight.shape and np.array_equal(w, weight) for w in ours)
    requantized = [w for w in ours if not any(w.shape == e.shape and np.array_equal(w, e) for e in expected)]
    assert len(requantized) == 2 + 1  # the down projections and the head: quantized by the recipe, not equal


def test_carried_int4_package_computes_the_fp32_logits_within_float_rounding(tiny_model_dir, tmp_path):
    """A GGUF whose every weight is carried (attention Q4_0, MLP Q4_1, the tied embedding and head
    Q8_0): with fp32 compute (accuracy level 1) the int4 package is the FP32 model, its logits the FP32
    package's to float rounding (the Q4_1 layers' per-block minimums included); requantizing the same
    weights with the recipe is not."""
    path = write_gguf(tiny_model_dir("LlamaForCausalLM"), tmp_path / "all-carried.gguf",
                      {"self_attn": "Q4_0", "mlp": "Q4_1", "embed_tokens": "Q8_0"})

    def package(weights: str, **fields):
        options = ExportOptions(quantization=QuantizationOptions(weights=weights, accuracy_level=1), **fields)
        return edge_sdk.load(export(path, tmp_path / f"{weights}-{len(fields)}", options, progress=False))

    fp32, carried, requantized = package("fp32"), package("int4"), package("int4", requantize=True)
    recipe = carried.package.manifest["precision"]["recipe"]["from_source"]
    assert recipe["carried"] == {"Q4_0": 4, "Q4_1": 4, "Q8_0": 1} and recipe["requantized"] == {}
    ids = fp32.tokenizer.encode("Edge devices run small models: laptops and NPUs.")
    reference = fp32.logits(ids)
    assert np.abs(carried.logits(ids) - reference).max() < 1e-3 * np.abs(reference).max()
    assert np.abs(requantized.logits(ids) - reference).max() > 10 * np.abs(carried.logits(ids) - reference).max()


def _openvino_weights(package: Path) -> list[np.ndarray]:
    """Each carried MatMul's weight (N, K) as OpenVINO computes it from the IR's compressed constants
    (the decompression subgraph run on its own), plus a Q4_1 layer's per-block minimums."""
    import openvino as ov

    def computed(output) -> np.ndarray:
        return ov.Core().compile_model(ov.Model([output], [], "w"), "CPU")({})[0]

    model = ov.Core().read_model(str(package / "decoder.xml"))
    adds = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_type_name() == "Add"}
    found = []
    for op in model.get_ordered_ops():
        weight = op.input(1).get_source_output().get_node() if op.get_type_name() == "MatMul" else None
        if weight is None or weight.get_type_name() != "Reshape":
            continue
        chain = weight.input(0).get_source_output().get_node()  # Multiply(Convert(codes), scales)
        if chain.get_type_name() != "Multiply":
            continue
        decompressed = computed(weight.output(0))
        added = adds.get(op.get_friendly_name() + "_minimums")
        if added is not None:  # x's block sums times the minimums (blocks, N)
            offsets = added.input(1).get_source_output().get_node()
            minimums = computed(offsets.input(1).get_source_output()).T  # (N, blocks)
            decompressed = (decompressed.reshape(*minimums.shape, -1) + minimums[..., None]).reshape(decompressed.shape)
        found.append(decompressed)
    return found


def test_openvino_int4_carries_the_blocks_bit_for_bit(tiny_model_dir, tmp_path):
    """--runtime openvino --weights int4 from a GGUF whose every weight is carried: OpenVINO's
    compressed constants (i4 / i8 / u4 codes, block scales, Q4_1's minimums) dequantize to exactly
    the gguf package's weights, and the package's logits are far closer to FP32 than requantizing."""
    path = write_gguf(tiny_model_dir("LlamaForCausalLM"), tmp_path / "all-carried.gguf",
                      {"self_attn": "Q4_0", "mlp": "Q4_1", "embed_tokens": "Q8_0"})

    def package(runtime: str, weights: str, **fields) -> Path:
        options = ExportOptions(runtime=runtime, quantization=QuantizationOptions(weights=weights), **fields)
        return export(path, tmp_path / f"{runtime}-{weights}-{len(fields)}", options, progress=False)

    fp32, carried, requantized = package("onnxruntime", "fp32"), package("openvino", "int4"), package("openvino", "int4", requantize=True)
    recipe = json.loads((carried / "manifest.json").read_text())["precision"]["recipe"]["from_source"]
    assert recipe["carried"] == {"Q4_0": 4, "Q4_1": 4, "Q8_0": 1} and recipe["requantized"] == {}
    config = edge_sdk.load(fp32).package.manifest["model"]
    source = _gguf_weights(path, {"num_attention_heads": config["num_heads"], "num_key_value_heads": config["num_kv_heads"]})
    expected = [source["token_embd.weight"]]  # the tied head, Q8_0
    for layer in range(config["num_layers"]):
        blk = f"blk.{layer}"
        expected += [np.concatenate([source[f"{blk}.attn_{p}.weight"] for p in ("q", "k", "v")]), source[f"{blk}.attn_output.weight"],
                     np.concatenate([source[f"{blk}.ffn_{p}.weight"] for p in ("gate", "up")]), source[f"{blk}.ffn_down.weight"]]
    ours = _openvino_weights(carried)
    assert len(ours) == len(expected)
    for weight in expected:
        assert any(w.shape == weight.shape and np.array_equal(w, weight) for w in ours)
    lm = edge_sdk.load(fp32)
    ids = lm.tokenizer.encode("Edge devices run small models: laptops and NPUs.")
    reference = lm.logits(ids)
    near = np.abs(edge_sdk.load(carried).logits(ids) - reference).max()
    assert np.abs(edge_sdk.load(requantized).logits(ids) - reference).max() > 4 * near


def test_int8_carries_q8_0_and_requantize_carries_nothing(gguf_package):
    recipe = json.loads((gguf_package("int8") / "manifest.json").read_text())["precision"]["recipe"]
    assert recipe["from_source"]["carried"] == {"Q8_0": 2}
    assert recipe["from_source"]["requantized"]["Q4_0 is 4-bit and the layer is planned 8-bit"] == 4
    again = json.loads((gguf_package("int4", requantize=True) / "manifest.json").read_text())["precision"]["recipe"]
    assert again["from_source"]["carried"] == {} and "--requantize" in again["from_source"]["requantized"]


def test_split_gguf_parts_merge_into_the_file_they_were_cut_from(tiny_gguf, tmp_path):
    """A split set (llama.cpp's NAME-0000i-of-0000N.gguf) is read as one model and merged into one file
    for transformers: the same tensors, types and bytes, the same metadata but the split keys."""
    from gguf import GGUFReader

    parts = _split(tiny_gguf, tmp_path / "split", shards=3)
    info = read_gguf(parts[0])
    assert info.parts == tuple(parts) and info.tensor_types == read_gguf(tiny_gguf).tensor_types
    merged = merge_parts(info, tmp_path / "work")
    before, after = GGUFReader(tiny_gguf), GGUFReader(merged)
    assert [(t.name, t.tensor_type, bytes(np.asarray(t.data).tobytes())) for t in before.tensors] == \
           [(t.name, t.tensor_type, bytes(np.asarray(t.data).tobytes())) for t in after.tensors]
    keys = [k for k in before.fields if not k.startswith(("GGUF.", "split."))]
    assert all(after.fields[k].contents() == before.fields[k].contents() for k in keys)


def _split(path: Path, directory: Path, shards: int) -> list[Path]:
    """``path`` cut into ``shards`` GGUF files as llama.cpp's gguf-split names them (split.* keys in each)."""
    import gguf

    directory.mkdir()
    reader = gguf.GGUFReader(path)
    tensors = list(reader.tensors)
    cut = np.array_split(np.arange(len(tensors)), shards)
    parts = []
    for index, members in enumerate(cut):
        target = directory / f"model-{index + 1:05d}-of-{shards:05d}.gguf"
        writer = gguf.GGUFWriter(target, "llama")
        if index == 0:
            for key, field in reader.fields.items():
                if not key.startswith("GGUF.") and key != "general.architecture":
                    writer.add_key_value(key, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
        writer.add_uint16("split.no", index)
        writer.add_uint16("split.count", shards)
        writer.add_int32("split.tensors.count", len(tensors))
        for i in members:
            tensor = tensors[i]
            quantized = tensor.tensor_type.name not in ("F32", "F16")
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type if quantized else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        parts.append(target)
    return parts


def _nothing_written(root: Path, name: str) -> bool:
    return not (root / name).exists() and not [p for p in root.iterdir() if p.name.startswith(f".{name}")]


def test_bad_ggufs_fail_in_one_line_and_write_nothing(tiny_gguf, tmp_path):
    """A truncated file, an architecture transformers' GGUF reader does not load, a tensor type the gguf
    package cannot dequantize, a split set missing a part: each a clear error, nothing written."""
    import gguf

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size * 2 // 3])
    with pytest.raises(ModelLoadError, match="truncated"):
        export(truncated, tmp_path / "out", progress=False)
    assert _nothing_written(tmp_path, "out")

    bert = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(bert, "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(UnsupportedArchitectureError, match="GGUF architecture 'bert'"):
        export(bert, tmp_path / "out", progress=False)

    odd = tmp_path / "odd-type.gguf"
    writer = gguf.GGUFWriter(odd, "llama")
    block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1][1]
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros((4, block_bytes), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(UnsupportedArchitectureError, match="Q8_1, which the gguf package cannot dequantize"):
        export(odd, tmp_path / "out", progress=False)

    lonely = tmp_path / "split" / "model-00001-of-00002.gguf"
    lonely.parent.mkdir()
    shutil.copy(tiny_gguf, lonely)
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.gguf is missing"):
        export(lonely.parent, tmp_path / "out", progress=False)
    done = CliRunner().invoke(main, ["export", str(truncated), "-o", str(tmp_path / "out")])
    assert done.exit_code == 1 and done.output.startswith("Error: ") and len(done.output.strip().splitlines()) == 1
    assert _nothing_written(tmp_path, "out")


def test_gguf_mix_covers_the_types_the_carry_over_handles():
    assert {"Q4_0", "Q4_1", "Q8_0", "F16"} <= set(GGUF_MIX.values())
