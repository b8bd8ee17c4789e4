"""ModelRegistry on a real repository of tiny ONNX models: versions, load/unload, polling, draining, instances."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from forwardpass.errors import ConfigError, NotFoundError
from forwardpass.registry import ModelRegistry
from forwardpass.repository import Repository

X = np.ones((1, 4), dtype=np.float32)


def write_config(model_dir: Path, config: dict[str, Any]) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


@pytest.fixture
def repo(tmp_path: Path, add_model) -> Path:
    add_model(tmp_path / "add" / "1" / "model.onnx", constant=1.0)
    add_model(tmp_path / "add" / "2" / "model.onnx", constant=2.0)
    add_model(tmp_path / "other" / "1" / "model.onnx", constant=10.0)
    write_config(tmp_path / "add", {"max_batch_size": 8})
    return tmp_path


async def answer(registry: ModelRegistry, name: str, version: str | None = None) -> float:
    served = registry.get(name, version)
    with served.in_use():
        done = await served.batcher.submit(served.model.validate({"x": X}), 1)
    return float(done.outputs["y"][0, 0])


@pytest.mark.asyncio
async def test_every_version_is_served_and_the_highest_by_default(repo: Path):
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    assert registry.ready()
    assert await answer(registry, "add") == 3.0
    assert await answer(registry, "add", "1") == 2.0
    assert await answer(registry, "other") == 11.0
    assert registry.versions("add") == ["1", "2"]
    assert registry.get("add").max_batch_size == 8
    # no config: batching on, as Triton's auto-complete, since every tensor has the same dynamic first dimension
    assert registry.get("other").max_batch_size == 32
    assert {(row["name"], row["version"], row["state"]) for row in registry.index()} == {
        ("add", "1", "READY"),
        ("add", "2", "READY"),
        ("other", "1", "READY"),
    }
    await registry.close()


@pytest.mark.asyncio
async def test_the_config_precision_picks_the_default_version(repo: Path):
    """Version 2 is an int8 variant (forwardpass optimize's precision.json); the config asks for fp32: version 1."""
    (repo / "add" / "2" / "precision.json").write_text('{"precision": "int8", "source": {"version": 1}}')
    write_config(repo / "add", {"max_batch_size": 8, "precision": "fp32"})
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    assert await answer(registry, "add") == 2.0
    assert await answer(registry, "add", "2") == 3.0
    await registry.close()
    write_config(repo / "add", {"max_batch_size": 8, "precision": "int8"})
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    assert await answer(registry, "add") == 3.0
    await registry.close()


@pytest.mark.asyncio
async def test_the_version_policy_says_which_versions_are_served(repo: Path):
    """Triton's policies: latest N, specific versions, all (the default); a change to it applies at the next load."""
    write_config(repo / "add", {"max_batch_size": 8, "version_policy": {"latest": 1}})
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    assert registry.versions("add") == ["2"] and await answer(registry, "add") == 3.0
    with pytest.raises(NotFoundError, match=r"model 'add' version 1 is not served: its version_policy serves \[2\]"):
        registry.get("add", "1")
    with pytest.raises(NotFoundError, match=r"model 'add' has no version '3'; versions: \[2\]"):
        registry.get("add", "3")
    write_config(repo / "add", {"max_batch_size": 8, "version_policy": {"specific": [1]}})
    await registry.load("add")
    assert registry.versions("add") == ["1"] and await answer(registry, "add") == 2.0
    write_config(repo / "add", {"max_batch_size": 8, "version_policy": "all"})
    await registry.load("add")
    assert registry.versions("add") == ["1", "2"] and await answer(registry, "add") == 3.0
    write_config(repo / "add", {"max_batch_size": 8, "version_policy": {"specific": [1, 3]}})
    with pytest.raises(ConfigError, match=r"version_policy names version 3, which holds no model file \(versions"):
        await registry.load("add")
    assert registry.versions("add") == ["1", "2"]  # a failed reload keeps serving what it served
    await registry.close()


@pytest.mark.asyncio
async def test_unknown_models_and_versions_are_not_found_with_a_reason(repo: Path):
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    with pytest.raises(NotFoundError, match="model 'nope' is not loaded; ready models: add, other"):
        registry.get("nope")
    with pytest.raises(NotFoundError, match=r"model 'add' has no version '7'; versions: \[1, 2\]"):
        registry.get("add", "7")
    with pytest.raises(NotFoundError, match="has no version 'latest'"):
        registry.get("add", "latest")
    with pytest.raises(NotFoundError):
        await registry.unload("nope")
    await registry.close()


@pytest.mark.asyncio
async def test_a_broken_model_is_unavailable_with_its_reason_and_the_rest_serve(repo: Path):
    write_config(repo / "other", {"max_batch_size": -1})
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    assert not registry.ready()
    (row,) = [row for row in registry.index() if row["name"] == "other"]
    assert row["state"] == "UNAVAILABLE"
    assert "max_batch_size" in row["reason"]
    assert await answer(registry, "add") == 3.0
    with pytest.raises(ConfigError, match="max_batch_size"):
        await registry.load("other")
    await registry.close()


@pytest.mark.asyncio
async def test_a_model_folder_whose_name_is_not_a_model_name_is_named_in_a_warning(
    repo: Path, add_model, caplog: pytest.LogCaptureFixture
):
    """A folder such as 'modèle' or 'my model' was skipped without a word: the server started, the model was in
    neither its ready nor its not-loaded list, and requests for it were 404."""
    add_model(repo / "modèle" / "1" / "model.onnx")
    add_model(repo / "my model" / "1" / "model.onnx")
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    for folder in ("modèle", "my model"):
        assert f"model folder '{folder}' is not served: its name is not a valid model name" in "\n".join(warnings)
    assert registry.ready() and sorted({row["name"] for row in registry.index()}) == ["add", "other"]
    await registry.close()


@pytest.mark.asyncio
async def test_poll_loads_new_versions_and_models_and_drops_removed_ones(repo: Path, add_model):
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    unchanged = registry.get("add", "1")
    add_model(repo / "add" / "3" / "model.onnx", constant=3.0)
    add_model(repo / "fresh" / "1" / "model.onnx", constant=100.0)
    shutil.rmtree(repo / "other")
    await registry.poll()
    assert registry.versions("add") == ["1", "2", "3"]
    assert await answer(registry, "add") == 4.0
    assert registry.get("add", "1") is unchanged  # untouched versions keep running, not reloaded
    assert await answer(registry, "fresh") == 101.0
    with pytest.raises(NotFoundError):
        registry.get("other")
    shutil.rmtree(repo / "add" / "1")
    await registry.poll()
    assert registry.versions("add") == ["2", "3"]
    await registry.close()


@pytest.mark.asyncio
async def test_a_changed_file_reloads_that_model_and_an_unloaded_model_stays_unloaded(repo: Path, add_model):
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    before = registry.get("other")
    add_model(repo / "other" / "1" / "model.onnx", constant=20.0)
    stat = (repo / "other" / "1" / "model.onnx").stat()
    os.utime(repo / "other" / "1" / "model.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    await registry.poll()
    assert registry.get("other") is not before
    assert await answer(registry, "other") == 21.0
    await registry.unload("other")
    await registry.poll()
    with pytest.raises(NotFoundError):
        registry.get("other")
    assert [row["reason"] for row in registry.index() if row["name"] == "other"] == ["unloaded"]
    await registry.load("other")
    assert await answer(registry, "other") == 21.0
    await registry.close()


@pytest.mark.asyncio
async def test_an_unloaded_model_keeps_its_versions_in_the_index_as_triton_does(repo: Path):
    """The index showed an unloaded model with version '': Triton keeps each version it served, UNAVAILABLE."""
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    await registry.unload("add")
    rows = [row for row in registry.index() if row["name"] == "add"]
    assert rows == [
        {"name": "add", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "add", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"},
    ]
    await registry.load("add")
    assert [(row["version"], row["state"]) for row in registry.index() if row["name"] == "add"] == [
        ("1", "READY"),
        ("2", "READY"),
    ]
    await registry.close()


@pytest.mark.asyncio
async def test_a_failed_reload_keeps_serving_says_why_and_is_retried_only_once_the_files_change(
    repo: Path, add_model, caplog: pytest.LogCaptureFixture
):
    """A config with a typo'd key: the versions loaded before keep answering, the index says why the new files were
    not taken, and polling does not load (and log) the same broken files again every interval."""
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    write_config(repo / "add", {"max_batch_sise": 8})
    add_model(repo / "broken" / "1" / "model.onnx")
    write_config(repo / "broken", {"max_batch_sise": 8})
    for _ in range(3):
        await registry.poll()
    failures = [record.getMessage() for record in caplog.records if "repository poll" in record.getMessage()]
    assert len(failures) == 2, failures  # one each for add and broken
    assert all("field 'max_batch_sise'" in failure for failure in failures)
    assert await answer(registry, "add") == 3.0
    rows = [row for row in registry.index() if row["name"] in ("add", "broken")]
    states = [(row["name"], row["state"]) for row in rows]
    assert states == [("add", "READY"), ("add", "READY"), ("broken", "UNAVAILABLE")]
    assert all("max_batch_sise" in row["reason"] for row in rows)
    assert rows[0]["reason"].startswith("serving the files loaded before; reloading failed:")
    write_config(repo / "add", {"max_batch_size": 8})
    await registry.poll()
    assert [row["reason"] for row in registry.index() if row["name"] == "add"] == ["", ""]
    await registry.close()


@pytest.mark.asyncio
async def test_unload_waits_for_requests_inside_the_model(repo: Path):
    registry = ModelRegistry(Repository(repo))
    await registry.load_all()
    served = registry.get("add")
    with served.in_use():
        unloading = asyncio.create_task(registry.unload("add"))
        await asyncio.sleep(0.05)
        assert not unloading.done()  # a request is still inside
        with pytest.raises(NotFoundError):
            registry.get("add")  # but no new request can reach it
        done = await served.batcher.submit(served.model.validate({"x": X}), 1)
        assert float(done.outputs["y"][0, 0]) == 3.0
    await asyncio.wait_for(unloading, timeout=10)
    await registry.close()


@pytest.mark.asyncio
async def test_instances_get_their_own_sessions_and_share_the_cores(repo: Path):
    write_config(repo / "add", {"max_batch_size": 8, "instances": 2})
    registry = ModelRegistry(Repository(repo), cores=4)
    await registry.load_all()
    served = registry.get("add")
    assert len(served.sessions) == 2
    assert served.sessions[0] is not served.sessions[1]
    assert served.model.engine.intra_op_threads == 2  # 4 cores / 2 instances
    assert registry.get("other").model.engine.intra_op_threads == 4
    results = await asyncio.gather(*(answer(registry, "add") for _ in range(8)))
    assert results == [3.0] * 8
    await registry.close()


@pytest.mark.asyncio
async def test_the_batch_observer_hears_of_every_forward_pass(repo: Path):
    seen: list[tuple[str, str, int]] = []
    registry = ModelRegistry(
        Repository(repo), on_batch=lambda served, rows, s: seen.append((served.name, served.version, rows))
    )
    await registry.load_all()
    await answer(registry, "add")
    await answer(registry, "other")
    assert seen == [("add", "2", 1), ("other", "1", 1)]
    await registry.close()
