"""The exported decoder: a model folder forwardpass serves, whose ONNX graph computes what transformers computes,
for left-padded batches with and without a cache; folders that are not causal LMs are refused."""

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
