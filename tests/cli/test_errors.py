"""Every mistake a user can make with `forwardpass predict` ends in one `error:` line on stderr and exit code 2."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

Cli = Callable[..., subprocess.CompletedProcess[str]]


def assert_one_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit code 2, exactly one `error:` line holding every word, no traceback, nothing on stdout."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert done.stdout == ""


def test_unknown_model(cli: Cli) -> None:
    assert_one_error(cli("predict", "no_such_model", "one.png"), "unknown model 'no_such_model'", "img_cls")


def test_missing_model_file(cli: Cli) -> None:
    assert_one_error(cli("predict", "nowhere/model.onnx", "one.png"), "no model file or folder", "nowhere/model.onnx")


def test_unknown_version(cli: Cli) -> None:
    assert_one_error(cli("predict", "img_cls", "one.png", "--version", "7"), "img_cls", "no version 7", "[1]")


def test_missing_input_file(cli: Cli) -> None:
    assert_one_error(cli("predict", "img_cls", "missing.png"), "missing.png", "no such file")


def test_missing_record_file(cli: Cli) -> None:
    assert_one_error(cli("predict", "tab_cls", "missing.csv"), "missing.csv", "no such file")


def test_folder_given_as_input_file(cli: Cli) -> None:
    assert_one_error(cli("predict", "img_cls", "folder"), "folder", "is a folder")


def test_corrupt_image(cli: Cli) -> None:
    assert_one_error(cli("predict", "img_cls", "corrupt.png"), "corrupt.png", "not an image")


def test_truncated_image(cli: Cli) -> None:
    assert_one_error(cli("predict", "img_cls", "truncated.jpg"), "truncated.jpg", "truncated")


def test_text_file_where_an_image_is_expected(cli: Cli) -> None:
    assert_one_error(cli("predict", "img_cls", "note.txt"), "note.txt", "expected an image")


def test_text_string_where_an_image_is_expected(cli: Cli) -> None:
    assert_one_error(cli("predict", "img_cls", "a red bus"), "expected an image", "a red bus")


def test_array_with_too_many_dimensions(cli: Cli) -> None:
    assert_one_error(cli("predict", "vec_raw", "rank3.npy"), "rank3.npy", "input 'x'", "[2, 2, 4]")


def test_item_of_the_wrong_length(cli: Cli) -> None:
    assert_one_error(cli("predict", "vec_raw", "short.npy"), "short.npy", "expected shape [4]", "got [5]")


def test_strings_where_numbers_are_expected(cli: Cli) -> None:
    assert_one_error(cli("predict", "vec_raw", "strings.npy"), "strings.npy", "expected FP32")


def test_floats_where_int64_is_expected(cli: Cli) -> None:
    assert_one_error(cli("predict", "ids_sum", "floats.npy"), "floats.npy", "expected INT64", "float32")


def test_nan_where_the_config_forbids_it(cli: Cli) -> None:
    assert_one_error(cli("predict", "vec_raw", "nan.npy"), "nan.npy", "NaN or infinity", "forbids")


def test_csv_missing_a_declared_column(cli: Cli) -> None:
    assert_one_error(cli("predict", "tab_cls", "no_b.csv"), "no_b.csv", "column", "'b'")


def test_top_k_below_one(cli: Cli) -> None:
    assert_one_error(cli("predict", "img_cls", "one.png", "--top-k", "0"), "--top-k", "at least 1")


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"postprocess": {"kind": "raw"}, "max_batch_sise": 8}, "max_batch_sise"),
        ({"preprocess": {"kind": "image", "colour": "RGB"}}, "colour"),  # named inside its section
        ({"max_batch_size": "lots"}, "max_batch_size"),
        ({"inputs": [{"name": "x", "allow_nonfinite": "sometimes"}]}, "inputs.0.allow_nonfinite"),
    ],
)
def test_config_that_does_not_validate(
    cli: Cli, repository: Path, tmp_path: Path, config: dict[str, Any], field: str
) -> None:
    shutil.copytree(repository / "vec_raw" / "1", tmp_path / "broken" / "1")
    config_file = tmp_path / "broken" / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = cli("predict", "broken", "item.npy", "--repository", tmp_path)
    assert_one_error(done, str(config_file), "field '", field)


@pytest.mark.parametrize(
    "command",
    [("init", "img_cls"), ("eval", "img_cls", "labelled"), ("bench", "img_cls", "--duration", "0.05", "-b", "1")],
    ids=lambda command: command[0],
)
def test_an_output_folder_that_cannot_be_made(cli: Cli, input_dir: Path, command: tuple[str, ...]) -> None:
    """-o under a file (or on a read-only disk) ended in a NotADirectoryError / PermissionError traceback, exit 1."""
    labelled = input_dir / "labelled" / "cat"
    labelled.mkdir(parents=True, exist_ok=True)
    shutil.copy(input_dir / "one.png", labelled / "one.png")
    assert_one_error(cli(*command, "-o", "one.png/report"), "one.png/report", "Not a directory")
