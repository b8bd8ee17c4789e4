"""Weight-only INT4 and INT8 variants of an exported decoder, judged by perplexity on a held-out text against the
FP32 model in the same run (quantized greedy decoding legitimately departs from FP32 within a few tokens: token
equality is the wrong test), written as a new version with its precision.json.

The quantizer is ONNX Runtime's own (`MatMulNBitsQuantizer`, round-to-nearest, block-wise, symmetric): every
MatMul becomes MatMulNBits (accuracy level 4: INT8 activations inside the kernel). At INT4, weights that already lie
on a 4-bit grid (a Q4_1 GGUF's, expanded to FP32 by the export) keep it instead of being rounded again
(forwardpass.precision.gridded); when the whole body kept its grid the output projection is 4-bit too, else it
stays at 8 bits whatever the precision (see BOUNDS). The token embedding becomes a GatherBlockQuantized at the
variant's bits: at INT4 the quantizer's own 4-bit table; at INT8 a tied one reads a copy of the output projection's
8-bit blocks (forwardpass.generation.tied.quantize_lookups: why a copy), an untied one stays FP32. Its rows are read
from the mapped weights file as tokens are looked up, so the narrower table is the smaller resident one. Gemm layers
(GPT-2's Conv1D) become MatMul + Add first, with ONNX Runtime's own rewrite.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization.onnx_model import ONNXModel

import forwardpass
from forwardpass.config import GenerationConfig
from forwardpass.errors import ConfigError
from forwardpass.generation import tied
from forwardpass.generation.decoder import DecoderLayout
from forwardpass.generation.engine import Generator
from forwardpass.generation.export import WEIGHTS_FILE, save_with_weights_apart
from forwardpass.generation.sampling import SamplingParams
from forwardpass.generation.text import TextCodec
from forwardpass.measure import machine_info
from forwardpass.model import Model, file_in_model_folder
from forwardpass.precision import gridded
from forwardpass.repository import PRECISION_FILE, versions_in

__all__ = ["BOUNDS", "HELDOUT", "QuantizedPrecision", "perplexity", "quantize_decoder"]

QuantizedPrecision = Literal["int4", "int8"]
HELDOUT = Path(tied.__file__).with_name("heldout.txt")  # plain prose written for this purpose: in no training set
# The largest perplexity / FP32 perplexity a variant may have; beyond it nothing is written. INT4, SmolLM2 from its
# Q4_1 GGUF (its "FP32" is Q4_1 expanded; held-out text, one run): body kept on its grid and the output projection
# (its tied table, Q8_0 in the GGUF) rounded to 4 bits 1.046; body rounded again, projection at 8 bits 1.143; every
# layer rounded again at 4 bits (ONNX Runtime GenAI's INT4 graph) 1.194, with blocks of 16 1.187, asymmetric 1.232,
# k-quant 1.204, each block's scale searched for the least squared error 1.251; the table alone at 4 bits (every
# other layer FP32) 1.031. The bound stays above 1.10 for decoders whose FP32 weights are on no grid (all their
# layers are rounded, the projection at 8 bits).
BOUNDS: dict[str, float] = {"int4": 1.15, "int8": 1.02}
SPEED_TOKENS = 32
ACCURACY_LEVEL = 4  # MatMulNBits computes with INT8 activations: ONNX Runtime's fast CPU path
INT4_OPSET = 21  # the first opset with 4-bit types, which the quantizer's graphs declare


def quantize_decoder(
    folder: Path,
    precision: QuantizedPrecision,
    *,
    block_size: int = 32,
    max_perplexity_ratio: float | None = None,
    threads: int = 1,
    text: Path = HELDOUT,
) -> Path:
    """Quantize the FP32 version of the exported decoder `folder` into a new version folder (returned), with
    precision.json; ConfigError (and nothing written) when its perplexity on `text` exceeds the bound."""
    bits = {"int4": 4, "int8": 8}.get(precision)
    if bits is None:
        raise ConfigError(f"a decoder quantizes to int4 or int8, not '{precision}'")
    if block_size < 16 or block_size & (block_size - 1):
        raise ConfigError(f"--block-size must be a power of two of at least 16, got {block_size}")
    bound = max_perplexity_ratio or BOUNDS[precision]
    if not text.is_file():
        raise ConfigError(f"no text file at '{text}' to measure perplexity on")
    source_version = _fp32_version(folder)
    source = folder / str(source_version) / "model.onnx"
    original = forwardpass.load(folder, version=source_version, intra_op_threads=threads, warmup=0)
    DecoderLayout.of(original.session, original.name)  # refuse what is not a KV-cache decoder before any work
    graph = onnx.load(str(source))
    ties = tied.untie(graph)
    ONNXModel(graph).replace_gemm_with_matmul()  # GPT-2's Conv1D layers are Gemms; the quantizer rewrites MatMuls
    graph = _at_least_opset(graph, INT4_OPSET)
    projection = _output_projection(graph)
    weights = {tensor.name for tensor in graph.graph.initializer}
    body = {
        node.name
        for node in graph.graph.node
        if node.op_type == "MatMul" and node.input[1] in weights and node.name not in projection
    }
    kept, block_sums = gridded.keep_grid(graph, body, ACCURACY_LEVEL) if bits == 4 else ([], [])
    # the output projection at 8 bits unless the whole body kept its grid (see BOUNDS)
    projection_bits = 4 if body and len(kept) == len(body) else 8
    others = [node.name for node in graph.graph.node if node.op_type == "MatMul" and node.name not in projection]
    graph = _quantized(graph, projection_bits, block_size, ("MatMul",), exclude=others)
    # the quantizer's Gathers are 4-bit only: at INT8 a tied lookup copies the projection's 8-bit blocks
    copied = tied.quantize_lookups(graph, ties) if bits == 8 else []
    op_types = ("MatMul", "Gather") if bits == 4 else ("MatMul",)
    graph = _quantized(graph, bits, block_size, op_types, exclude=block_sums)
    version = max(versions_in(folder)) + 1
    with tempfile.TemporaryDirectory(dir=folder, prefix=".quantizing-") as work:
        staged = Path(work) / "model.onnx"
        save_with_weights_apart(graph, staged)
        variant = forwardpass.load(staged, intra_op_threads=threads, warmup=0)
        config = original.config.generation or GenerationConfig()
        codec = TextCodec(file_in_model_folder(folder, config.tokenizer, "generation.tokenizer"))
        ids = codec.encode(text.read_text(encoding="utf-8"))[: config.context_length]
        if len(ids) < 2:
            raise ConfigError(f"{text}: {len(ids)} token(s); perplexity needs at least 2")
        measured = {
            "original": _figures(original, ids, source, config, codec),
            "optimized": _figures(variant, ids, staged, config, codec),
        }
        ratio = measured["optimized"]["perplexity"] / measured["original"]["perplexity"]
        if ratio > bound:
            raise ConfigError(
                f"{precision}: perplexity {measured['optimized']['perplexity']:.3f} is {ratio:.3f}x FP32's "
                f"{measured['original']['perplexity']:.3f}, over the bound {bound}; nothing was written"
            )
        record = {
            "precision": precision,
            "artefact": "model.onnx",
            "engine": "onnxruntime",
            "quantizer": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer (RTN)",
            "source": {"model": original.name, "version": source_version, "artefact": str(source)},
            "settings": {
                "bits": bits,
                "block_size": block_size,
                "symmetric": True,
                "accuracy_level": ACCURACY_LEVEL,
                "op_types": list(op_types),
                "output_projection": projection,
                "output_projection_bits": projection_bits,
                "kept_source_grid": kept,
                "embedding_copies_output_projection": copied,
                "quantized_nodes": _count_quantized(graph),
            },
            "evaluation": {"metric": "perplexity", "text": text.name, "tokens": len(ids), "max_ratio": bound},
            "measured": {
                **measured,
                "perplexity_ratio": ratio,
                "throughput_ratio": measured["optimized"]["tokens_per_s"] / measured["original"]["tokens_per_s"],
                "size_ratio": measured["optimized"]["size_bytes"] / measured["original"]["size_bytes"],
                "intra_op_threads": threads,
                "machine": machine_info(),
            },
            "tool_versions": _versions(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        variant.close()
        original.close()
        destination = folder / str(version)
        destination.mkdir()
        for made in (staged, staged.with_name(WEIGHTS_FILE)):
            made.rename(destination / made.name)
    (destination / PRECISION_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return destination


def perplexity(model: Model, ids: list[int]) -> float:
    """exp of the mean negative log-likelihood of ids[1:], each token predicted from those before it (one decode
    step per token with the KV cache: the graph gives the logits of its last position only)."""
    cache = DecoderLayout.of(model.session, model.name).cache(model.session)
    logits = cache.prefill([ids[:1]])[0]
    total = 0.0
    for position in range(1, len(ids)):
        shifted = logits.astype(np.float64) - float(logits.max())
        total -= shifted[ids[position]] - math.log(np.exp(shifted).sum())
        if position + 1 < len(ids):
            logits = cache.decode([ids[position]])[0]
    return math.exp(total / (len(ids) - 1))


def _figures(model: Model, ids: list[int], path: Path, config: GenerationConfig, codec: TextCodec) -> dict[str, float]:
    """Perplexity on `ids`, greedy single-stream tokens/s (SPEED_TOKENS after a short prompt), file size."""
    started = time.perf_counter()
    value = perplexity(model, ids)
    scored_s = time.perf_counter() - started
    generator = Generator(model.session, config, codec, model.name)
    try:
        params = SamplingParams(max_new_tokens=SPEED_TOKENS, ignore_eos=True)
        list(generator.tokens(ids[:8], params))  # warm-up
        started = time.perf_counter()
        produced = len(list(generator.tokens(ids[:8], params)))
        rate = produced / (time.perf_counter() - started)
    finally:
        generator.close()
    return {
        "perplexity": value,
        "scored_tokens_per_s": (len(ids) - 1) / scored_s,
        "tokens_per_s": rate,
        "size_bytes": float(sum(file.stat().st_size for file in (path, path.with_name(WEIGHTS_FILE)) if file.exists())),
    }


def _quantized(
    graph: onnx.ModelProto,
    bits: int,
    block_size: int,
    op_types: tuple[str, ...],
    exclude: list[str] | None = None,
) -> onnx.ModelProto:
    """ONNX Runtime's weight-only quantizer (RTN, symmetric as ONNX Runtime GenAI's builder does it: on SmolLM2 it
    kept perplexity closer than asymmetric, 1.19x vs 1.27x at INT4 with every layer at 4 bits) over `op_types`."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        graph,
        bits=bits,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=ACCURACY_LEVEL,
        nodes_to_exclude=exclude or [],
        op_types_to_quantize=op_types,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quiet = logging.getLogger(MatMulNBitsQuantizer.__module__)
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs a line per node at INFO
    try:
        quantizer.process()
    finally:
        quiet.setLevel(level)
    quantized: onnx.ModelProto = quantizer.model.model
    return quantized


def _output_projection(graph: onnx.ModelProto) -> list[str]:
    """The MatMuls that make the logits (weight [hidden, vocab]): at 4 bits they cost SmolLM2 most of its quality
    (perplexity 1.19x FP32 with them at INT4, 1.014x with them at INT8), for an eighth of the weights."""
    vocab = next(
        (output.type.tensor_type.shape.dim[-1].dim_value for output in graph.graph.output if output.name == "logits"),
        0,
    )
    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    return [
        node.name
        for node in graph.graph.node
        if node.op_type == "MatMul"
        and node.input[1] in initializers
        and list(initializers[node.input[1]].dims)[-1:] == [vocab]
        and vocab > 0
    ]


def _at_least_opset(graph: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The quantizer only relabels a graph below opset 21 (where int4 types begin) as 21, which leaves operators whose
    signature changed on the way (ReduceMean's axes became an input at 18) invalid: convert it properly first."""
    current = next((entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")), opset)
    if current >= opset:
        return graph
    from onnx import version_converter

    return version_converter.convert_version(graph, opset)


def _fp32_version(folder: Path) -> int:
    versions = [v for v in versions_in(folder) if not (folder / str(v) / PRECISION_FILE).is_file()]
    if not versions:
        raise ConfigError(f"{folder}: no FP32 version (one without precision.json) to quantize")
    return versions[-1]


def _count_quantized(graph: onnx.ModelProto) -> dict[str, int]:
    """Nodes by kind: MatMulNBits by their bits, the embedding lookups, what stayed MatMul (on activations, or the
    block sums of forwardpass.precision.gridded)."""
    counts: dict[str, int] = {}
    for node in graph.graph.node:
        if node.op_type == "MatMulNBits":
            bits = next(attribute.i for attribute in node.attribute if attribute.name == "bits")
            kind = f"MatMulNBits({bits} bits)"
        elif node.op_type in ("GatherBlockQuantized", "MatMul", "Gemm"):
            kind = node.op_type
        else:
            continue
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}
