"""ONNX Runtime GenAI's model builder as the export of a Llama-architecture decoder, driven by the decode loop with
its cache kept in place: greedy ids equal transformers' alone, under continuous batching (right-padded rows of
different lengths joining and leaving) and past what the cache buffers reserved."""

from __future__ import annotations

import json
import queue
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest

import forwardpass
from forwardpass.errors import ForwardpassError
from forwardpass.generation import Generator, SamplingParams, TokenEvent, open_generator
from forwardpass.generation.decoder import RESERVE_AHEAD
from forwardpass.generation.engine import PREFILL_CHUNK_TOKENS
from forwardpass.generation.export import export_decoder
from forwardpass.generation.seeded import build_seeded_llama
from forwardpass.precision.decoder import quantize_decoder
from tests.generation.conftest import NamedEvents, tokens_by_stream

PROMPTS = [
    "A man is eating",
    "The quick brown fox jumps over the lazy dog near the riverbank",
    "Hi",
    "Where is the nearest train station?",
]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_seeded_llama(tmp_path_factory.mktemp("hf") / "llama-seeded")


@pytest.fixture(scope="module")
def exported(llama_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_decoder(llama_folder, tmp_path_factory.mktemp("repository") / "llama")


@pytest.fixture(scope="module")
def reference(llama_folder: Path) -> Any:
    """transformers' greedy generation with its KV cache on the same weights: the new token ids."""
    from forwardpass.formats.torch import import_torch

    torch = import_torch("huggingface")
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(str(llama_folder)).eval()
    model.generation_config.eos_token_id = None  # no end token: every generation runs to its length

    def generate(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=0,
            )
        return [int(token) for token in out[0, len(prompt_ids) :]]

    return generate


@pytest.fixture()
def generator(exported: Path) -> Iterator[Generator]:
    opened = open_generator(forwardpass.load(exported))
    yield opened
    opened.close()


def ids_of(generator: Generator, prompt_ids: list[int], count: int) -> list[int]:
    params = SamplingParams(max_new_tokens=count, ignore_eos=True)
    return [event.token_id for event in generator.tokens(prompt_ids, params)]


def test_the_builder_made_the_graph_and_its_parity_is_recorded(exported: Path) -> None:
    provenance = json.loads((exported / "1" / "model.json").read_text())
    assert provenance["exporter"].startswith("onnxruntime_genai.models.builder")
    assert provenance["architecture"] == "LlamaForCausalLM"
    assert provenance["parity"]["max_abs_diff"] <= provenance["parity"]["tolerance"]
    graph = onnx.load(str(exported / "1" / "model.onnx"), load_external_data=False)
    assert "GroupQueryAttention" in {node.op_type for node in graph.graph.node}
    assert "position_ids" not in {value.name for value in graph.graph.input}
    # logits of each row's last position only (the parity above compared them, right-padded, with transformers')
    logits = next(value for value in graph.graph.output if value.name == "logits")
    assert logits.type.tensor_type.shape.dim[1].dim_value == 1


def test_greedy_alone_equals_transformers(generator: Generator, reference) -> None:
    for prompt in PROMPTS:
        prompt_ids = generator.encode(prompt)
        assert ids_of(generator, prompt_ids, 20) == reference(prompt_ids, 20), prompt


def test_continuous_batching_does_not_change_tokens(generator: Generator, reference) -> None:
    """A long generation runs; prompts of other lengths join while it does (right-padded), finish first and leave,
    their rows moved up in the cache buffers."""
    counts = [30, 6, 10, 14]
    expected = [reference(generator.encode(prompt), count) for prompt, count in zip(PROMPTS, counts, strict=True)]
    events: queue.SimpleQueue[tuple[int, TokenEvent | ForwardpassError]] = queue.SimpleQueue()
    got: list[list[int]] = [[] for _ in PROMPTS]

    def submit(i: int) -> None:
        params = SamplingParams(max_new_tokens=counts[i], ignore_eos=True)
        generator.submit(generator.encode(PROMPTS[i]), params, lambda event: events.put((i, event)))

    submit(0)
    finished = 0
    while finished < len(PROMPTS):
        i, event = events.get(timeout=30)
        assert isinstance(event, TokenEvent), event
        got[i].append(event.token_id)
        if i == 0 and len(got[0]) == 2:  # the long one is running: the others arrive now
            for j in range(1, len(PROMPTS)):
                submit(j)
        finished += event.finish_reason is not None
    assert got == expected
    assert generator.peak_rows >= 3  # the long one and at least two others in one batch


def test_sequences_longer_than_the_reserved_buffers_equal_transformers(generator: Generator, reference) -> None:
    """The buffers grow (their rows copied) when a generation or a prompt outgrows what was reserved for it."""
    text = generator.encode(" ".join(PROMPTS * 40))
    generation_outgrows, prompt_outgrows = text[: RESERVE_AHEAD - 4], text[: RESERVE_AHEAD + 8]
    assert len(prompt_outgrows) == RESERVE_AHEAD + 8
    for prompt_ids in (generation_outgrows, prompt_outgrows):
        assert ids_of(generator, prompt_ids, 40) == reference(prompt_ids, 40)


def test_a_long_prompt_is_prefilled_in_chunks_between_the_running_streams_steps(
    generator: Generator, reference
) -> None:
    """A prompt of three chunks arrives while a generation runs: the running stream gets a token after each of the
    first two chunks, before the long prompt's first token; both streams' tokens are still transformers'."""
    long = generator.encode(" ".join(PROMPTS * 40))[: 2 * PREFILL_CHUNK_TOKENS + 20]
    running = generator.encode(PROMPTS[0])
    expected = {"running": reference(running, 12), "long": reference(long, 6)}
    events: NamedEvents = queue.SimpleQueue()

    def submit(name: str, prompt_ids: list[int]) -> None:
        params = SamplingParams(max_new_tokens=len(expected[name]), ignore_eos=True)
        generator.submit(prompt_ids, params, lambda event: events.put((name, event)))

    def listener(event: TokenEvent | ForwardpassError) -> None:
        events.put(("running", event))
        if isinstance(event, TokenEvent) and event.finish_reason is None and not arrived:
            arrived.append(True)  # on the loop's thread, between two steps: the long prompt waits for the next
            submit("long", long)

    arrived: list[bool] = []
    generator.submit(running, SamplingParams(max_new_tokens=12, ignore_eos=True), listener)
    got, order = tokens_by_stream(events, ["running", "long"])
    assert got == expected
    assert order[: order.index("long")].count("running") >= 1 + 2, order  # the first token, then one per chunk


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_a_variant_quantizes_the_tied_table_and_keeps_no_fp32_copy(
    exported: Path, llama_folder: Path, tmp_path: Path, precision: str
) -> None:
    """The builder ties the embedding as a Transpose of the output projection's weight: untied before quantizing,
    both are quantized (at INT8 the lookup reads a copy of the projection's 8-bit blocks), and no FP32 table is
    left."""
    folder = Path(shutil.copytree(exported, tmp_path / "llama"))
    # random weights: the structure is tested
    variant = quantize_decoder(folder, precision, max_perplexity_ratio=10.0)  # type: ignore[arg-type]
    graph = onnx.load(str(variant / "model.onnx"), load_external_data=False)
    config = json.loads((llama_folder / "config.json").read_text())
    kinds = Counter(node.op_type for node in graph.graph.node)
    assert kinds["GatherBlockQuantized"] == 1 and kinds["Transpose"] == 0 and kinds["MatMul"] == 0
    table = {(config["vocab_size"], config["hidden_size"]), (config["hidden_size"], config["vocab_size"])}
    fp32 = [tensor for tensor in graph.graph.initializer if tensor.data_type == onnx.TensorProto.FLOAT]
    assert not [tensor.name for tensor in fp32 if tuple(tensor.dims) in table]
    copied = json.loads((variant / "precision.json").read_text())["settings"]["embedding_copies_output_projection"]
    assert copied == (["lm_head.MatMul.weight_Q8"] if precision == "int8" else [])
