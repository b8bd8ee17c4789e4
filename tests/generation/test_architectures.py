"""Decoders of architectures users bring, built tiny and seeded: the exported model's greedy tokens equal transformers'
generate(do_sample=False), each prompt alone and all submitted together (different lengths in one batch), past
what the model's attention window or cache layout would make go wrong."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import forwardpass
from forwardpass.errors import InputError
from forwardpass.generation import SamplingParams, TokenEvent, open_generator
from forwardpass.generation.export import export_decoder
from forwardpass.generation.seeded import build_seeded_decoder

PROMPTS = ["A man is eating", "The quick brown fox jumps over the lazy dog near the riverbank", "Hi"]
NEW_TOKENS = 24
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}

# Each with a sliding window of 8 tokens that the prompts and their continuations pass.
SLIDING: dict[str, tuple[str, dict[str, Any]]] = {
    # all layers slide, and its config names no layer_types: ONNX Runtime GenAI's builder made a graph that attends
    # to every past token (other tokens from the 7th on, exit 0)
    "mistral": ("MistralForCausalLM", {**SMALL, "num_key_value_heads": 2, "sliding_window": 8}),
    # alternate layers slide: the exported graph dropped the oldest keys from their cache, and every request past the
    # window failed (untied: a random Gemma's tied, scaled embedding repeats its input token, whatever the window)
    "gemma2": (
        "Gemma2ForCausalLM",
        {
            **SMALL,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "sliding_window": 8,
            "final_logit_softcapping": 3.0,
            "tie_word_embeddings": False,
        },
    ),
    # its last layer slides: the builder's graph wanted a windowed cache, and the export was refused
    "qwen2": (
        "Qwen2ForCausalLM",
        {**SMALL, "num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    ),
}


def reference(folder: Path, prompts: list[list[int]], new_tokens: int = NEW_TOKENS) -> list[list[int]]:
    """transformers' greedy tokens for each prompt alone, no end token."""
    from forwardpass.formats.torch import import_torch

    torch = import_torch("huggingface")
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    answers = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                eos_token_id=None,
                pad_token_id=0,
            )
        answers.append([int(token) for token in out[0, len(prompt) :]])
    return answers


def generated(exported: Path) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """The prompts' ids, and the greedy tokens of each prompt alone, then of all submitted together."""
    generator = open_generator(forwardpass.load(exported))
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    try:
        prompts = [generator.encode(prompt) for prompt in PROMPTS]
        alone = [[event.token_id for event in generator.tokens(prompt, params)] for prompt in prompts]
        queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in prompts]
        for prompt, events in zip(prompts, queues, strict=True):
            generator.submit(prompt, params, events.put)
        together = []
        for events in queues:
            tokens: list[int] = []
            while len(tokens) < NEW_TOKENS:
                event = events.get(timeout=30)
                assert isinstance(event, TokenEvent), event
                tokens.append(event.token_id)
            together.append(tokens)
    finally:
        generator.close()
    return prompts, alone, together


# Each once exported to a graph the decode loop could not run as its exporter meant.
OTHERS: dict[str, tuple[str, dict[str, Any]]] = {
    # ALiBi reads no position ids: torch.onnx left that input out, the loop took the graph for one that updates its
    # cache in place, and the export ended in a ValueError traceback
    "bloom": ("BloomForCausalLM", {"hidden_size": 64, "n_layer": 2, "n_head": 4}),
}


def exported_equals_transformers(tmp_path: Path, architecture: str, settings: dict[str, Any]) -> Path:
    """Export a seeded model of `architecture`, check its greedy tokens against transformers', return the export."""
    folder = build_seeded_decoder(tmp_path / "hf", architecture, **settings)
    exported = export_decoder(folder, tmp_path / "exported")
    prompts, alone, together = generated(exported)
    assert len(prompts[1]) > 8  # longer than a sliding window below; every continuation passes it
    expected = reference(folder, prompts)
    assert alone == expected
    assert together == expected
    return exported


@pytest.mark.parametrize("name", list(SLIDING))
def test_a_sliding_window_is_honoured_past_its_length(name: str, tmp_path: Path) -> None:
    architecture, settings = SLIDING[name]
    exported = exported_equals_transformers(tmp_path, architecture, {**settings, "max_position_embeddings": 128})
    provenance = json.loads((exported / "1" / "model.json").read_text())
    assert provenance["parity"]["cases"].endswith("decode 2x(9+1)")  # one step attends past the window


@pytest.mark.parametrize("name", list(OTHERS))
def test_greedy_tokens_equal_transformers(name: str, tmp_path: Path) -> None:
    architecture, settings = OTHERS[name]
    exported_equals_transformers(tmp_path, architecture, settings)


def test_a_config_the_builder_gets_wrong_is_exported_by_torch_onnx(tmp_path: Path) -> None:
    """Linear rope scaling: the builder's graph leaves it out and differed from transformers by 3.4, which refused
    the export; torch.onnx exports it and says why it did."""
    settings = {**SMALL, "num_key_value_heads": 2, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    exported = exported_equals_transformers(tmp_path, "LlamaForCausalLM", settings)
    provenance = json.loads((exported / "1" / "model.json").read_text())
    assert provenance["exporter"].startswith("torch.onnx")
    assert "the builder's decoder differs from transformers" in provenance["builder_refused"]


def test_a_token_past_the_models_embedding_is_refused_without_failing_the_batch(tmp_path: Path) -> None:
    """A tokenizer with a token the model's embedding has no row for (added without resizing the model): a prompt
    holding it made the decode step fail, ONNX Runtime's Gather error, for every sequence of the running batch."""
    from tokenizers import AddedToken, Tokenizer

    folder = build_seeded_decoder(tmp_path / "hf", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken("<extra>", special=True)])
    tokenizer.save(str(folder / "tokenizer.json"))
    generator = open_generator(forwardpass.load(export_decoder(folder, tmp_path / "exported")))
    try:
        running = generator.tokens(generator.encode("A man is eating"), SamplingParams(max_new_tokens=64))
        extra = generator.encode("Hi <extra>")
        for prompt in (extra, [5, 400]):
            with pytest.raises(InputError, match=r"token ids \[400\] are outside the vocabulary \[0, 400\)"):
                generator.tokens(prompt, SamplingParams())
        assert [event.finish_reason for event in running][-1] in ("stop", "length")
    finally:
        generator.close()


LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8}
# Each refused: by torch.onnx, by ONNX Runtime after it, or before either.
UNEXPORTABLE: dict[str, tuple[str, dict[str, Any], str]] = {
    # its frequencies switch past the original context with an in-place copy: the refusal came after ~300 lines of
    # Torch IR on standard output, the TorchScript exporter's C++ log
    "longrope": (
        "Olmo2ForCausalLM",
        {**SMALL, "rope_scaling": {**LONGROPE, "original_max_position_embeddings": 16}},
        "torch.onnx cannot export this decoder",
    ),
    # ALiBi computed in complex128, which ONNX Runtime does not take: the export ended in its InvalidGraph traceback
    "falcon-alibi": (
        "FalconForCausalLM",
        {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "alibi": True},
        "ONNX Runtime cannot run the graph torch.onnx made",
    ),
    # a config transformers loads but cannot run (4 heads of its default head_dim 128 against a hidden size of 64):
    # the export ended in a RuntimeError traceback from its forward
    "helium-misfit": (
        "HeliumForCausalLM",
        {**SMALL, "num_key_value_heads": 2},
        "transformers cannot run this model: mat1 and mat2 shapes cannot be multiplied",
    ),
    # a state-space model: its cache layers hold no keys, and the export ended in an AttributeError traceback
    "mamba": (
        "MambaForCausalLM",
        {"hidden_size": 64, "num_hidden_layers": 2, "state_size": 8},
        "its cache holds more than attention keys and values (LinearAttentionLayer)",
    ),
}


@pytest.mark.parametrize("name", list(UNEXPORTABLE))
def test_a_decoder_that_cannot_be_exported_is_one_error_line(name: str, tmp_path: Path) -> None:
    architecture, settings, refusal = UNEXPORTABLE[name]
    folder = build_seeded_decoder(tmp_path / "hf", architecture, max_position_embeddings=128, **settings)
    forwardpass_cli = Path(sys.executable).parent / "forwardpass"
    done = subprocess.run(
        [forwardpass_cli, "generate", folder, "Hi", "--json", "--export-to", tmp_path / "exported"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and refusal in done.stderr


def test_longrope_generates_transformers_tokens_up_to_its_switch(tmp_path: Path) -> None:
    """Phi-3 with LongRoPE (as Phi-3-mini-128k and Phi-3.5-mini write it): transformers switches to the long factors
    past original_max_position_embeddings and recomputes the cache; the builder's graph, keeping its cached keys,
    answered other tokens from there on (exit 0). The context now ends at the switch."""
    factors = {"short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [1.0 + 0.9 * i for i in range(8)]}
    settings = {**SMALL, "num_key_value_heads": 4, "max_position_embeddings": 128, "pad_token_id": 0}
    rope = {"rope_type": "longrope", **factors}
    folder = build_seeded_decoder(
        tmp_path / "hf", "Phi3ForCausalLM", **settings, original_max_position_embeddings=16, rope_scaling=rope
    )
    config = json.loads((folder / "config.json").read_text())  # the hub's spelling, which the builder reads
    config["rope_scaling"] = {"type": "longrope", **factors}
    config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
    (folder / "config.json").write_text(json.dumps(config))
    exported = export_decoder(folder, tmp_path / "exported")
    assert "context_length: 16" in (exported / "config.yaml").read_text()
    generator = open_generator(forwardpass.load(exported))
    try:
        prompts = [generator.encode(prompt) for prompt in PROMPTS]
        with pytest.raises(InputError, match="holds 16"):
            generator.tokens(prompts[1], SamplingParams())
        short = [prompts[0], prompts[2]]
        got = [[event.token_id for event in generator.tokens(ids, SamplingParams(ignore_eos=True))] for ids in short]
    finally:
        generator.close()
    assert [len(tokens) for tokens in got] == [16 - len(ids) for ids in short]
    assert got == [reference(folder, [ids], len(tokens))[0] for ids, tokens in zip(short, got, strict=True)]


def test_the_models_repetition_penalty_applies_as_in_transformers(tmp_path: Path) -> None:
    """A generation_config.json with repetition_penalty (Qwen2.5 instruct: 1.05): transformers' generate() applies
    it, greedy or not; it was left out, and the greedy tokens were others (exit 0)."""
    folder = build_seeded_decoder(tmp_path / "hf", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4)
    defaults = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**defaults, "repetition_penalty": 1.3}))
    exported = export_decoder(folder, tmp_path / "exported")
    assert "repetition_penalty: 1.3" in (exported / "config.yaml").read_text()
    prompts, alone, together = generated(exported)
    expected = reference(folder, prompts)
    assert alone == expected
    assert together == expected


def test_a_model_with_its_own_code_is_refused_without_asking_to_run_it(tmp_path: Path) -> None:
    """A config.json whose auto_map names the folder's own modeling code: transformers asked on the terminal
    whether to run it (and ran it on a "y"); it is refused in one line, nothing asked."""
    folder = build_seeded_decoder(tmp_path / "hf", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="my_decoder",
        architectures=["MyDecoderForCausalLM"],
        auto_map={"AutoConfig": "my_code.MyConfig", "AutoModelForCausalLM": "my_code.MyDecoderForCausalLM"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    forwardpass_cli = Path(sys.executable).parent / "forwardpass"
    done = subprocess.run(
        [forwardpass_cli, "generate", folder, "Hi", "--export-to", tmp_path / "exported"],
        input="y\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Do you wish" not in done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "contains custom code" in done.stderr


def test_generation_config_settings_left_out_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """no_repeat_ngram_size, num_beams...: generate() chooses other tokens with them, and the decode loop, which
    does not apply them, left them out without a word."""
    folder = build_seeded_decoder(tmp_path / "hf", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4)
    defaults = json.loads((folder / "generation_config.json").read_text())
    settings = {"no_repeat_ngram_size": 2, "num_beams": 3, "min_length": 0}  # min_length 0 changes nothing
    (folder / "generation_config.json").write_text(json.dumps({**defaults, **settings}))
    exported = export_decoder(folder, tmp_path / "exported")
    provenance = json.loads((exported / "1" / "model.json").read_text())
    assert provenance["generation_config_not_applied"] == {"no_repeat_ngram_size": 2, "num_beams": 3}
    assert "sets num_beams=3, no_repeat_ngram_size=2, which forwardpass does not apply" in caplog.text
