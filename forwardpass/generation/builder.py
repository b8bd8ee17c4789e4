"""ONNX Runtime GenAI's model builder as the decoder export of the architectures it knows: its graphs fuse
attention (GroupQueryAttention with rotary embedding), normalization and residual adds, ~340 nodes per step for
SmolLM2 against ~2,900 from torch.onnx, where per-node overhead was ~70 % of a step.

Its graph takes `input_ids`, `attention_mask` and `past_key_values.<i>.key|value`; each row's past length is the sum
of its attention mask, so batches are right-padded (see forwardpass.generation.decoder.InPlaceCache). It is checked
against transformers on a right-padded batch (prefill, then a decode step) before it is kept.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from forwardpass.errors import ConfigError
from forwardpass.formats.base import require

__all__ = ["ARCHITECTURES", "EXTRA", "build", "hugging_face_folder", "run_builder"]

EXTRA = "generation"
# Those of the builder's architectures whose Hugging Face forward pass its graph reproduces: decoders with rotary
# embedding and grouped-query attention. Any other goes through torch.onnx.
ARCHITECTURES = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"}
)
_PRECISION = "fp32"  # INT4/INT8 variants are made from this graph by forwardpass.precision.decoder


def build(
    torch: ModuleType, transformers: ModuleType, model: Any, source: Path, staged: Path, tolerance: float
) -> dict[str, Any]:
    """Write the builder's FP32 graph for `model` (loaded from `source`) to `staged` (weights beside it, in
    model.onnx.data) and return how it was made, with the measured parity."""
    genai = require("onnxruntime_genai", EXTRA)
    work = staged.parent
    folder = source if source.is_dir() else hugging_face_folder(transformers, model, source, work / "hf")
    built = work / "builder"
    run_builder(folder, built, _PRECISION, work / "cache")
    (built / "model.onnx.data").rename(staged.with_name("model.onnx.data"))
    _adapt(built / "model.onnx", staged, model.config)
    return {
        "exporter": f"onnxruntime_genai.models.builder (-p {_PRECISION} -e cpu)",
        "graph": "GroupQueryAttention: past lengths from the attention mask, batches right-padded",
        "tool_versions": {"onnxruntime-genai": genai.__version__},
        "parity": _parity(torch, model, staged, tolerance, source),
    }


def run_builder(folder: Path, out: Path, precision: str, cache: Path) -> None:
    """`python -m onnxruntime_genai.models.builder` on the Hugging Face folder `folder`, for the CPU, into `out`
    (model.onnx, model.onnx.data, genai_config.json); ConfigError with its last line when it fails."""
    arguments = ["-i", str(folder), "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache)]
    # the builder imports transformers, which imports a torchvision built for another torch: import_torch first
    launch = (
        "import runpy, sys; from forwardpass.formats.torch import import_torch; import_torch('huggingface'); "
        f"sys.argv = ['builder', *{arguments!r}]; "
        "runpy.run_module('onnxruntime_genai.models.builder', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", launch], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (out / "model.onnx").is_file():
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ConfigError(f"{folder}: ONNX Runtime GenAI's model builder failed: {last}")


def _adapt(built: Path, staged: Path, config: Any) -> None:
    """The builder's graph written to `staged` as the decode loop runs it: the cache's head size fixed (the builder
    leaves it symbolic, "kv_cache_dim", and the loop sizes its cache buffers from the graph) and logits made for each
    row's last position only."""
    graph = onnx.load(str(built), load_external_data=False)
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for value in [*graph.graph.input, *graph.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.shape.dim[3].dim_value = int(head_size)
    _logits_of_last_positions(graph, int(config.hidden_size))
    onnx.save(graph, str(staged))


def _logits_of_last_positions(graph: onnx.ModelProto, hidden: int) -> None:
    """The output projection applied to each row's last position only, so logits are [batch, 1, vocab]: the loop
    reads no other, and for every prompt position they cost ~18 % of a short prefill and 1.4 GB for 7,000 tokens.
    A row's last position is its mask's sum - 1 (rows are right-padded and a prefill has no past); a decode step's
    single position is 0, hence the min with the sequence's length - 1."""
    head = next(node for node in graph.graph.node if "logits" in node.output)
    name = "/forwardpass/last_position"
    nodes = [
        helper.make_node("ReduceSum", ["attention_mask", f"{name}/axis_1"], [f"{name}/lengths"], keepdims=1),
        helper.make_node("Sub", [f"{name}/lengths", f"{name}/one"], [f"{name}/last"]),
        helper.make_node("Shape", ["input_ids"], [f"{name}/ids_shape"], start=1, end=2),
        helper.make_node("Sub", [f"{name}/ids_shape", f"{name}/one"], [f"{name}/final"]),
        helper.make_node("Min", [f"{name}/last", f"{name}/final"], [f"{name}/index"]),
        helper.make_node("Unsqueeze", [f"{name}/index", f"{name}/axis_2"], [f"{name}/index_3d"]),
        helper.make_node("Expand", [f"{name}/index_3d", f"{name}/hidden_shape"], [f"{name}/indices"]),
        helper.make_node("GatherElements", [head.input[0], f"{name}/indices"], [f"{name}/states"], axis=1),
    ]
    graph.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], np.int64), f"{name}/axis_1"),
            numpy_helper.from_array(np.array([2], np.int64), f"{name}/axis_2"),
            numpy_helper.from_array(np.array([1], np.int64), f"{name}/one"),
            numpy_helper.from_array(np.array([1, 1, hidden], np.int64), f"{name}/hidden_shape"),
        ]
    )
    head.input[0] = f"{name}/states"
    position = list(graph.graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.graph.node.insert(position + offset, node)
    logits = next(output for output in graph.graph.output if output.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_value = 1


def hugging_face_folder(transformers: ModuleType, model: Any, source: Path, folder: Path) -> Path:
    """A model loaded from a GGUF file as a Hugging Face folder (weights bit-equal): transformers will not
    save_pretrained a model loaded with `gguf_file=`, so it is rebuilt from its config and state dict."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # "gguf": the weights saved here are plain FP32 (the builder refuses it)
    rebuilt = transformers.AutoModelForCausalLM.from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    tokenizer.save_pretrained(folder)
    return folder


def _parity(torch: ModuleType, model: Any, path: Path, tolerance: float, source: Path) -> dict[str, Any]:
    """Three prompts of different lengths prefilled together (right-padded), then one decode step, through the
    decode loop's own cache; the largest logit difference from transformers running each sequence alone."""
    from forwardpass.backends.ort import OrtSession
    from forwardpass.generation.decoder import DecoderLayout

    session = OrtSession(path)
    cache = DecoderLayout.of(session, path.name).cache(session)
    generator = np.random.default_rng(1)
    vocab = int(model.config.vocab_size)
    prompts = [generator.integers(0, vocab, length).tolist() for length in (7, 4, 2)]
    got = [cache.prefill(prompts)]
    following = generator.integers(0, vocab, len(prompts)).tolist()
    got.append(cache.decode(following))
    with torch.no_grad():
        expected = [
            np.stack([model(torch.tensor([ids])).logits[0, -1].numpy() for ids in prompts]),
            np.stack(
                [
                    model(torch.tensor([[*ids, token]])).logits[0, -1].numpy()
                    for ids, token in zip(prompts, following, strict=True)
                ]
            ),
        ]
    session.close()
    worst = max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))
    if not worst <= tolerance:
        raise ConfigError(f"{source}: the builder's decoder differs from transformers by {worst:.3g} (> {tolerance})")
    return {"max_abs_diff": worst, "tolerance": tolerance, "cases": "prefill 3 right-padded (7, 4, 2), decode 3x1"}
