"""Quantized decoders: the export stores a tied embedding once; INT4 and INT8 variants (ONNX Runtime's
MatMulNBits) are new versions whose precision.json records their perplexity on the held-out text against FP32 in
the same run, refused (nothing written) beyond the bound; `forwardpass generate --precision` makes and uses them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import forwardpass
from forwardpass.errors import ConfigError
from forwardpass.generation import SamplingParams, open_generator
from forwardpass.generation.export import save_with_weights_apart
from forwardpass.precision.decoder import HELDOUT, perplexity, quantize_decoder

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")


@pytest.fixture()
def folder(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "gpt2"))


def test_the_tied_embedding_is_stored_once(exported: Path) -> None:
    graph = onnx.load(str(exported / "1" / "model.onnx"))
    arrays = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.graph.initializer}
    table = arrays["model.transformer.wte.weight"]
    assert not any(array.shape == table.T.shape and np.array_equal(array, table.T) for array in arrays.values())
    provenance = json.loads((exported / "1" / "model.json").read_text())
    assert provenance["tied_embedding_stored_once"] == ["model.transformer.wte.weight"]


@pytest.mark.parametrize(("precision", "bits"), [("int4", 4), ("int8", 8)])
def test_variant_records_its_perplexity_against_fp32(folder: Path, precision: str, bits: int) -> None:
    made = quantize_decoder(folder, precision)  # type: ignore[arg-type]
    assert made == folder / "2"
    record = json.loads((made / "precision.json").read_text())
    assert record["precision"] == precision and record["settings"]["bits"] == bits
    # 2 layers x (attention in, out; MLP in, out), Gemms before, at `bits`; the output projection at 8 bits; the
    # embeddings GatherBlockQuantized: at INT4 token and position tables, at INT8 the tied token table alone (on a
    # copy of the projection's blocks)
    expected = {"MatMulNBits(8 bits)": 9} if bits == 8 else {"MatMulNBits(4 bits)": 8, "MatMulNBits(8 bits)": 1}
    expected["GatherBlockQuantized"] = 1 if bits == 8 else 2
    assert {key: record["settings"]["quantized_nodes"].get(key) for key in expected} == expected
    assert bool(record["settings"]["embedding_copies_output_projection"]) == (bits == 8)
    measured = record["measured"]
    original, variant = forwardpass.load(folder, version=1), forwardpass.load(folder, precision=precision)
    assert original.config.generation is not None
    context = original.config.generation.context_length  # the text is cut to what the model holds
    ids = open_generator(original).codec.encode(HELDOUT.read_text())[:context]
    assert measured["original"]["perplexity"] == pytest.approx(perplexity(original, ids), rel=1e-6)
    assert measured["optimized"]["perplexity"] == pytest.approx(perplexity(variant, ids), rel=1e-6)
    assert measured["perplexity_ratio"] <= record["evaluation"]["max_ratio"]
    assert measured["optimized"]["perplexity"] != measured["original"]["perplexity"]  # the weights did change
    generator = open_generator(variant)
    try:
        tokens = list(generator.tokens(generator.encode("Hi"), SamplingParams(max_new_tokens=4, ignore_eos=True)))
    finally:
        generator.close()
    assert len(tokens) == 4


def test_a_body_on_a_4_bit_grid_keeps_it_and_the_projection_goes_to_4_bits(folder: Path) -> None:
    source = folder / "1" / "model.onnx"
    graph = onnx.load(str(source))
    snapped = _snap_to_q4_1(graph)
    save_with_weights_apart(graph, source)
    record = json.loads((quantize_decoder(folder, "int4") / "precision.json").read_text())
    settings = record["settings"]
    assert len(settings["kept_source_grid"]) == 8 == snapped  # 2 layers x (attention in, out; MLP in, out)
    assert settings["output_projection_bits"] == 4
    assert (
        settings["quantized_nodes"]["MatMulNBits(4 bits)"] == 9
        and "MatMulNBits(8 bits)" not in settings["quantized_nodes"]
    )
    assert record["measured"]["perplexity_ratio"] <= record["evaluation"]["max_ratio"]


def _snap_to_q4_1(model: onnx.ModelProto) -> int:
    """Round every MatMul / Gemm weight that no embedding lookup reads to a Q4_1 grid (per block of 32 input rows and
    column: d*q + m, q in 0..15), as an export of a Q4_1 GGUF holds it; how many."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    tables = {node.input[0] for node in model.graph.node if node.op_type == "Gather"}
    count = 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in initializers or node.input[1] in tables:
            continue
        transposed = any(attribute.name == "transB" and attribute.i for attribute in node.attribute)
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        weight = weight.T if transposed else weight
        blocks = weight.reshape(weight.shape[0] // 32, 32, weight.shape[1])
        low = blocks.min(axis=1, keepdims=True)
        step = (blocks.max(axis=1, keepdims=True) - low) / 15
        snapped = (np.rint((blocks - low) / step) * step + low).reshape(weight.shape).astype(np.float32)
        initializers[node.input[1]].CopyFrom(
            numpy_helper.from_array(snapped.T if transposed else snapped, node.input[1])
        )
        count += 1
    return count


def test_over_the_bound_nothing_is_written(folder: Path) -> None:
    with pytest.raises(ConfigError, match="over the bound"):
        quantize_decoder(folder, "int4", max_perplexity_ratio=0.5)  # a bound no variant meets
    assert sorted(path.name for path in folder.iterdir() if path.is_dir()) == ["1"]


def test_generate_makes_the_variant_once_and_uses_it(folder: Path) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        command = [FORWARDPASS, "generate", str(folder), "Hi", "-n", "4", "--precision", "int4", "--json"]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    first = run()
    assert first.returncode == 0, first.stderr
    assert "made" in first.stderr and (folder / "2" / "precision.json").is_file()
    again = run()
    assert again.returncode == 0 and "made" not in again.stderr
    assert json.loads(again.stdout)["token_ids"] == json.loads(first.stdout)["token_ids"]
    bad = subprocess.run(
        [FORWARDPASS, "generate", str(folder), "Hi", "--precision", "int3"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0


def test_optimize_quantizes_a_decoder_by_perplexity(folder: Path) -> None:
    done = subprocess.run(
        [FORWARDPASS, "optimize", str(folder), "-p", "int8"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "version 2 (int8): perplexity" in done.stdout
    assert json.loads((folder / "2" / "precision.json").read_text())["precision"] == "int8"
    refused = subprocess.run([FORWARDPASS, "optimize", str(folder), "-p", "fp16"], capture_output=True, text=True)
    assert refused.returncode == 2 and "int4 or int8" in refused.stderr and refused.stderr.count("\n") == 1
