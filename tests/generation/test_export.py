"""The exported decoder: a model folder forwardpass serves, whose ONNX graph computes what transformers computes,
for left-padded batches with and without a cache; a GGUF file generates what its weights generate in torch; folders
that are not causal LMs are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import forwardpass
from forwardpass.errors import ConfigError
from forwardpass.generation import SamplingParams, open_generator
from forwardpass.generation.export import export_decoder


def test_folder_layout_config_and_provenance(exported: Path) -> None:
    assert (exported / "1" / "model.onnx").is_file()
    assert (exported / "tokenizer.json").is_file()
    config = yaml.safe_load((exported / "config.yaml").read_text())
    assert config["generation"] == {"tokenizer": "tokenizer.json", "eos_token_ids": [0], "context_length": 128}
    provenance = json.loads((exported / "1" / "model.json").read_text())
    assert provenance["parity"]["max_abs_diff"] <= provenance["parity"]["tolerance"]
    assert {"torch", "transformers"} <= provenance["tool_versions"].keys()
    model = forwardpass.load(exported)
    names = [spec.name for spec in model.inputs]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:] == [f"past_key_values.{i}.{kind}" for i in range(2) for kind in ("key", "value")]


def test_padded_batch_with_cache_matches_transformers(exported: Path, hf_model: Any) -> None:
    """Two prompts of different lengths, left-padded, prefilled; then one decode step from the ONNX cache."""
    import torch

    model = forwardpass.load(exported)
    prompts = [[11, 12, 13, 14, 15, 16], [21, 22, 23]]
    width = max(map(len, prompts))
    ids = np.array([[0] * (width - len(p)) + p for p in prompts], np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], np.int64)
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    past = {
        f"past_key_values.{i}.{kind}": np.zeros((2, 4, 0, 16), np.float32)
        for i in range(2)
        for kind in ("key", "value")
    }
    out = model.infer({"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
    with torch.no_grad():
        expected = (
            hf_model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(positions),
            )
            .logits[:, -1:]
            .numpy()
        )
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4)
    # one more token each, from the cache
    step_ids = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
    step_mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    step_positions = positions[:, -1:] + 1
    cache = {name.replace("present", "past_key_values"): value for name, value in out.items() if name != "logits"}
    step = model.infer({"input_ids": step_ids, "attention_mask": step_mask, "position_ids": step_positions, **cache})
    full_ids = np.concatenate([ids, step_ids], axis=1)
    with torch.no_grad():
        expected = (
            hf_model(
                input_ids=torch.from_numpy(full_ids),
                attention_mask=torch.from_numpy(step_mask),
                position_ids=torch.from_numpy(np.clip(step_mask.cumsum(-1) - 1, 0, None)),
            )
            .logits[:, -1:]
            .numpy()
        )
    np.testing.assert_allclose(step["logits"], expected, atol=1e-4)
    assert step["present.0.key"].shape == (2, 4, width + 1, 16)


def test_refuses_what_is_not_a_causal_lm(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Hugging Face folder"):
        export_decoder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertModel"]})
    )
    with pytest.raises(ConfigError, match="not a causal language model"):
        export_decoder(tmp_path / "encoder", tmp_path / "out")


def test_a_model_without_kv_cache_is_refused_by_generation(tmp_path: Path, add_model, exported: Path) -> None:
    from forwardpass.generation import open_generator

    path = add_model(tmp_path / "add" / "1" / "model.onnx")
    with pytest.raises(ConfigError, match="not a decoder with a KV cache"):
        open_generator(forwardpass.load(path.parent.parent))
    untokenized = Path(shutil.copytree(exported, tmp_path / "untokenized"))
    (untokenized / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="no tokenizer"):
        open_generator(forwardpass.load(untokenized))


def write_tiny_llama_gguf(
    path: Path, *, declared_vocab_size: int | None = None, leave_out: str | None = None
) -> tuple[Any, Any]:
    """A seeded two-layer Llama (grouped-query attention) and a byte-level BPE tokenizer trained here, written to `path`
    as llama.cpp's converter writes GGUF: its names, its metadata, q and k rows permuted for its rotary layout (with
    `declared_vocab_size` as its metadata's vocab_size, and without the tensor `leave_out`, to make a bad file).
    Returns the transformers model holding the same weights and the tokenizer."""
    import gguf
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from forwardpass.formats.torch import import_torch

    import_torch("huggingface")
    import transformers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet, special_tokens=["<|endoftext|>"])
    tokenizer.train_from_iterator(["The quick brown fox jumps over the lazy dog. A man is eating food."] * 20, trainer)
    bpe = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(bpe["vocab"], key=bpe["vocab"].__getitem__)
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in bpe["merges"]]

    heads, kv_heads, width, layers = 4, 2, 64, 2  # ONNX Runtime's GroupQueryAttention wants heads of 16 and more
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    weights = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(2 * width)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)  # transformers' default for Llama
    writer.add_rope_dimension_count(width // heads)
    writer.add_vocab_size(declared_vocab_size or len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)

    def rotary_layout(rows: np.ndarray, count: int) -> np.ndarray:
        """llama.cpp's permutation of q and k rows (transformers undoes it when it reads the file)."""
        return rows.reshape(count, 2, rows.shape[0] // count // 2, -1).swapaxes(1, 2).reshape(rows.shape)

    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    for layer in range(layers):
        ours, theirs = f"model.layers.{layer}.", f"blk.{layer}."
        for source, target in (
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        ):
            names[ours + source] = theirs + target
    for source, target in names.items():
        tensor = weights[f"{source}.weight"]
        if target.endswith("attn_q"):
            tensor = rotary_layout(tensor, heads)
        elif target.endswith("attn_k"):
            tensor = rotary_layout(tensor, kv_heads)
        if f"{target}.weight" == leave_out:
            continue
        writer.add_tensor(f"{target}.weight", np.ascontiguousarray(tensor, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tokenizer


def test_a_gguf_file_without_a_weight_or_with_other_sizes_is_refused(tmp_path: Path) -> None:
    """transformers filled what the file lacked with random weights: the decoder was exported and generated, exit 0."""
    lacking = tmp_path / "lacking" / "tiny.gguf"
    lacking.parent.mkdir()
    write_tiny_llama_gguf(lacking, leave_out="blk.1.ffn_up.weight")
    with pytest.raises(ConfigError, match=r"no weight for model\.layers\.1\.mlp\.up_proj\.weight, which the model"):
        export_decoder(lacking, tmp_path / "repository" / "lacking")
    resized = tmp_path / "resized" / "tiny.gguf"
    resized.parent.mkdir()
    write_tiny_llama_gguf(resized, declared_vocab_size=500)
    with pytest.raises(ConfigError, match=r"weight for lm_head\.weight is \[\d+, 64\] where its config .* \[500, 64\]"):
        export_decoder(resized, tmp_path / "repository" / "resized")


def test_a_gguf_file_generates_what_its_weights_generate_in_torch(tmp_path: Path) -> None:
    import torch

    source = tmp_path / "tiny.gguf"
    model, tokenizer = write_tiny_llama_gguf(source)
    generator = open_generator(forwardpass.load(export_decoder(source, tmp_path / "repository" / "tiny")))
    try:
        for prompt in ("The quick brown fox", "A man is eating food"):
            prompt_ids = generator.encode(prompt)
            assert prompt_ids == tokenizer.encode(prompt).ids  # the file's own vocabulary and merges
            params = SamplingParams(max_new_tokens=12, ignore_eos=True)
            got = [event.token_id for event in generator.tokens(prompt_ids, params)]
            ids = torch.tensor([prompt_ids])
            with torch.no_grad():  # greedy decoding in torch, step by step on the whole sequence: no cache involved
                for _ in range(12):
                    ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            assert got == ids[0, len(prompt_ids) :].tolist(), prompt
    finally:
        generator.close()
