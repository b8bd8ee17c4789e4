"""Repository layout `<root>/<model>/<version>/<artefact>`: listing, resolving, and refusing paths outside the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import forwardpass
from forwardpass.ensemble import pipelines_in
from forwardpass.errors import ConfigError, NotFoundError, UnsafePathError
from forwardpass.repository import Repository, find_artefact, versions_in


@pytest.fixture
def repo(tmp_path: Path, add_model) -> Path:
    """resnet: versions 1, 2, 10 (plus a non-version folder and an empty version); bert: 3; notes/: no versions."""
    root = tmp_path / "models"
    for version in (1, 2, 10):
        add_model(root / "resnet" / str(version) / "model.onnx", constant=float(version))
    (root / "resnet" / "7").mkdir()  # a version folder without a model file does not count
    (root / "resnet" / "latest").mkdir()  # not a number
    (root / "resnet" / "config.yaml").write_text("description: r\n")
    add_model(root / "bert" / "3" / "weights.onnx")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a model")
    (root / "README.md").write_text("a file at the top")
    return root


def test_names_lists_models_with_versions_only(repo: Path):
    assert Repository(repo).names() == ["bert", "resnet"]


def test_versions_are_numeric_and_ascending(repo: Path):
    assert Repository(repo).versions("resnet") == [1, 2, 10]
    assert Repository(repo).versions("bert") == [3]
    assert versions_in(repo / "notes") == []
    assert versions_in(repo / "missing") == []


@pytest.mark.parametrize("folder", ["\u00b2", "\u0663", "\uff13", "02", "010"])
def test_a_folder_named_by_other_digits_is_no_version(repo: Path, add_model, folder: str):
    """str.isdigit() takes a superscript two (int() refuses it: every listing crashed, `forwardpass models` and the
    server's start included), an Arabic-Indic or fullwidth three (versions 3 whose folder '3' does not exist) and '02'
    (a second version 2)."""
    add_model(repo / "resnet" / folder / "model.onnx")
    assert Repository(repo).versions("resnet") == [1, 2, 10]
    assert Repository(repo).names() == ["bert", "resnet"]
    assert Repository(repo).resolve("resnet").version == 10


def test_highest_version_wins(repo: Path):
    entry = Repository(repo).resolve("resnet")
    assert entry.version == 10  # numerically highest, not "2" as a string sort would give
    assert entry.artefact == repo / "resnet" / "10" / "model.onnx"
    assert entry.directory == repo / "resnet"
    assert entry.config_path == repo / "resnet" / "config.yaml"


def test_a_version_can_be_chosen(repo: Path):
    entry = Repository(repo).resolve("resnet", 2)
    assert (entry.name, entry.version) == ("resnet", 2)
    assert entry.artefact == repo / "resnet" / "2" / "model.onnx"


def test_artefact_need_not_be_called_model_onnx(repo: Path):
    entry = Repository(repo).resolve("bert")
    assert entry.artefact == repo / "bert" / "3" / "weights.onnx"
    assert entry.config_path is None


def test_two_candidate_artefacts_are_ambiguous(tmp_path: Path, add_model):
    add_model(tmp_path / "a.onnx")
    add_model(tmp_path / "b.onnx")
    with pytest.raises(NotFoundError, match=r"expected one model file.*a\.onnx, b\.onnx"):
        find_artefact(tmp_path)


def test_unknown_model_lists_what_exists(repo: Path):
    with pytest.raises(NotFoundError) as info:
        Repository(repo).resolve("resnet50")
    message = str(info.value)
    assert "'resnet50'" in message
    assert "bert, resnet" in message


def test_unknown_model_names_the_pipelines_too(repo: Path):
    """A pipeline (forwardpass predict takes its name) was left out: 'ocrr' got "did you mean 'ocr_rec'?", not 'ocr'."""
    (repo / "reader").mkdir()
    (repo / "reader" / "config.yaml").write_text("pipeline: {steps: [{model: bert}]}\n")
    with pytest.raises(NotFoundError) as info:
        Repository(repo).resolve("readr")
    assert "did you mean 'reader'?" in str(info.value) and "bert, reader (pipeline), resnet" in str(info.value)


def test_unknown_version_lists_the_versions(repo: Path):
    with pytest.raises(NotFoundError) as info:
        Repository(repo).resolve("resnet", 8)
    assert str(info.value) == "model 'resnet' has no version 8; versions: [1, 2, 10]"


def test_a_version_folder_without_a_model_file_says_so(repo: Path):
    """resnet/7/ exists but is empty (a copy not finished): 'has no version 7' sent its owner looking for a typo."""
    with pytest.raises(NotFoundError) as info:
        Repository(repo).resolve("resnet", 7)
    assert str(info.value) == (
        f"model 'resnet' version 7: {repo / 'resnet' / '7'} holds no model file; versions with one: [1, 2, 10]"
    )


def test_model_folder_without_versions(repo: Path):
    with pytest.raises(NotFoundError, match="no numbered version folder"):
        Repository(repo).resolve("notes")


def test_missing_root():
    with pytest.raises(NotFoundError, match="does not exist"):
        Repository("/nonexistent/forwardpass/models")


@pytest.mark.parametrize(
    "name",
    ["..", "../models", "resnet/1", "a..b", "/etc", "/etc/passwd", "..\\x", "resnet\\1", "", ".hidden", "a" * 200],
)
def test_unsafe_names_are_refused(repo: Path, name: str):
    repository = Repository(repo)
    with pytest.raises(UnsafePathError, match="not a valid model name"):
        repository.resolve(name)
    with pytest.raises(UnsafePathError):
        repository.versions(name)


def test_unsafe_names_are_refused_by_load(repo: Path):
    with pytest.raises(UnsafePathError):
        forwardpass.load("../models/resnet", repository=repo)


@pytest.fixture
def outside(tmp_path: Path, add_model) -> Path:
    """A model folder that lives outside the repository root."""
    folder = tmp_path / "elsewhere" / "secret"
    add_model(folder / "1" / "model.onnx")
    return folder


def test_symlinked_model_folder_pointing_outside_is_refused(repo: Path, outside: Path):
    os.symlink(outside, repo / "escape")
    with pytest.raises(UnsafePathError, match="outside the repository"):
        Repository(repo).resolve("escape")
    with pytest.raises(UnsafePathError):
        forwardpass.load("escape", repository=repo)


def test_names_skips_models_that_cannot_be_loaded(repo: Path, outside: Path):
    """`names()` feeds `forwardpass models`, which loads each name: an escaping symlink must not be listed."""
    os.symlink(outside, repo / "escape")
    assert Repository(repo).names() == ["bert", "resnet"]


def test_symlinked_version_folder_pointing_outside_is_refused(repo: Path, outside: Path):
    os.symlink(outside / "1", repo / "bert" / "4")
    with pytest.raises(UnsafePathError, match="version 4"):
        Repository(repo).resolve("bert")  # 4 is now the highest
    assert Repository(repo).resolve("bert", 3).version == 3


def test_symlinked_artefact_pointing_outside_is_refused(repo: Path, outside: Path):
    (repo / "bert" / "5").mkdir()
    os.symlink(outside / "1" / "model.onnx", repo / "bert" / "5" / "model.onnx")
    with pytest.raises(UnsafePathError):
        Repository(repo).resolve("bert", 5)


def test_a_config_symlinked_outside_is_refused(repo: Path, tmp_path: Path):
    """The config decides what the model reads and answers: one from outside the repository is not its config."""
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("description: not the repository's\n", encoding="utf-8")
    os.symlink(elsewhere, repo / "bert" / "config.yaml")
    with pytest.raises(UnsafePathError, match=r"model 'bert''s config\.yaml points outside the repository"):
        Repository(repo).resolve("bert")
    with pytest.raises(UnsafePathError):
        forwardpass.load("bert", repository=repo)


def test_symlinks_inside_the_root_are_fine(repo: Path):
    os.symlink(repo / "resnet" / "config.yaml", repo / "bert" / "config.yaml")
    assert Repository(repo).resolve("bert").config_path == repo / "bert" / "config.yaml"
    os.symlink(repo / "resnet", repo / "resnet-alias")
    entry = Repository(repo).resolve("resnet-alias")
    assert entry.version == 10
    assert "resnet-alias" in Repository(repo).names()


def test_a_symlinked_root_is_fine(tmp_path: Path, repo: Path):
    link = tmp_path / "link-to-models"
    os.symlink(repo, link)
    assert Repository(link).resolve("resnet").version == 10


@pytest.mark.parametrize("config", ["description: " + "[" * 3000 + "]" * 3000, "constants: &loop [1, *loop]"])
def test_a_config_nested_past_the_yaml_reader_is_named_by_the_load_not_a_crash(repo: Path, config: str):
    """Every unknown name looks for pipelines among the folders: a folder whose config.yaml nests thousands of levels
    ended that look in a RecursionError (a 500 on the server's index and on any unknown name)."""
    (repo / "resnet" / "config.yaml").write_text(config, encoding="utf-8")
    repository = Repository(repo)
    with pytest.raises(NotFoundError, match="did you mean 'resnet'"):
        repository.resolve("resnt")
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        forwardpass.load("resnet", repository=repo)


def test_an_unknown_name_lists_the_first_fifty_names_of_a_large_repository(tmp_path: Path):
    """A repository of 10,000 models made each unknown name an 80 kB error listing them all."""
    for i in range(60):
        (tmp_path / f"m{i:02d}" / "1").mkdir(parents=True)
        (tmp_path / f"m{i:02d}" / "1" / "model.onnx").write_bytes(b"")
    with pytest.raises(NotFoundError) as info:
        Repository(tmp_path).resolve("m100")
    message = str(info.value)
    assert "did you mean 'm10'? models: m00, m01," in message
    assert message.endswith("m48, m49 and 10 more")


def test_a_symlink_loop_in_the_repository_is_no_model_and_breaks_no_listing(repo: Path):
    """pathlib (3.11) raises RuntimeError on a loop: one pair of links ended every listing (`forwardpass models`, the
    server's start, its index, each unknown name's error) in a traceback."""
    os.symlink("loop-b", repo / "loop-a")
    os.symlink("loop-a", repo / "loop-b")
    repository = Repository(repo)
    assert repository.names() == ["bert", "resnet"]
    with pytest.raises(NotFoundError, match=r"unknown model 'loop-a' .*; models: bert, resnet$"):
        repository.resolve("loop-a")
    assert pipelines_in(repo) == []


def test_the_version_policy_limits_what_resolves(repo: Path):
    (repo / "resnet" / "config.yaml").write_text("version_policy: {latest: 2}\n")
    repository = Repository(repo)
    assert repository.versions("resnet") == [1, 2, 10] and repository.served_versions("resnet") == [2, 10]
    assert repository.resolve("resnet").version == 10 and repository.resolve("resnet", 2).version == 2
    with pytest.raises(
        NotFoundError, match=r"model 'resnet' version 1 is not served: its version_policy serves \[2, 10\]"
    ):
        repository.resolve("resnet", 1)
    (repo / "resnet" / "config.yaml").write_text("version_policy: {specific: [1]}\n")
    assert repository.resolve("resnet").version == 1
    assert forwardpass.load("resnet", repository=repo).version == 1


def test_a_precision_whose_versions_the_policy_leaves_out_is_not_served_not_missing(repo: Path):
    """It said 'has no int8 version (... 10: int8); make one with: forwardpass optimize', which made another."""
    (repo / "resnet" / "10" / "precision.json").write_text('{"precision": "int8"}')
    (repo / "resnet" / "config.yaml").write_text("version_policy: {specific: [1, 2]}\n")
    with pytest.raises(
        NotFoundError, match=r"model 'resnet''s int8 version 10 is not served: its version_policy serves \[1, 2\]$"
    ):
        Repository(repo).resolve("resnet", precision="int8")
