"""`forwardpass predict` on tiny models, checked against ONNX Runtime and numpy computations done here by hand."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import numpy_helper
from PIL import Image

from tests.pipeline.test_arrays import write_npy_declaring_a_terabyte, write_npz_bomb

Cli = Callable[..., subprocess.CompletedProcess[str]]
LABELS = ["cat", "dog", "bird"]
RANK_ROW = re.compile(r"^\s+(\d+)\s+(\S+)\s+(\d\.\d{4})$")


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def run_onnx(repository: Path, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"))
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def initializer(repository: Path, model: str, name: str) -> np.ndarray:
    graph = onnx.load(str(repository / model / "1" / "model.onnx")).graph
    return next(numpy_helper.to_array(t) for t in graph.initializer if t.name == name)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def image_probabilities(repository: Path, input_dir: Path) -> dict[str, np.ndarray]:
    """img_cls's config by hand: grayscale, 8x8 bilinear, /255, (x - 0.5) / 0.5; then ONNX Runtime and softmax."""
    names = ["one.png", "two.png", "photo.jpg"]
    pixels = [
        np.asarray(Image.open(input_dir / name).convert("L").resize((8, 8), Image.Resampling.BILINEAR), np.float32)
        for name in names
    ]
    batch = ((np.stack(pixels) / 255.0 - 0.5) / 0.5)[:, None].astype(np.float32)
    logits = run_onnx(repository, "img_cls", {"image": batch})["logits"]
    return dict(zip(names, softmax(logits.astype(np.float64)), strict=True))


def test_image_classification_json_matches_onnxruntime_and_softmax(
    cli: Cli, image_probabilities: dict[str, np.ndarray]
) -> None:
    lines = json_lines(cli("predict", "img_cls", *image_probabilities, "--json"))
    assert [line["input"] for line in lines] == list(image_probabilities)
    for line in lines:
        probabilities = image_probabilities[line["input"]]
        ranked = np.argsort(-probabilities)
        assert len(line["top_k"]) == 3  # the config's top_k
        assert [entry["index"] for entry in line["top_k"]] == ranked.tolist()
        assert [entry["label"] for entry in line["top_k"]] == [LABELS[i] for i in ranked]
        np.testing.assert_allclose([entry["score"] for entry in line["top_k"]], probabilities[ranked], atol=1e-5)
        assert (line["label"], line["index"]) == (LABELS[ranked[0]], int(ranked[0]))
        assert line["score"] == pytest.approx(probabilities[ranked[0]], abs=1e-5)


def test_image_classification_human_listing_with_top_k(cli: Cli, image_probabilities: dict[str, np.ndarray]) -> None:
    done = cli("predict", "img_cls", "one.png", "photo.jpg", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [lines[0], lines[3]] == ["one.png", "photo.jpg"]
    for header, rows in ((lines[0], lines[1:3]), (lines[3], lines[4:6])):
        probabilities = image_probabilities[header]
        ranked = np.argsort(-probabilities)[:2]
        parsed = [RANK_ROW.match(row) for row in rows]
        assert all(parsed), rows
        assert [(int(m[1]), m[2]) for m in parsed if m] == [(1, LABELS[ranked[0]]), (2, LABELS[ranked[1]])]
        assert [float(m[3]) for m in parsed if m] == pytest.approx(probabilities[ranked], abs=1e-4)
    assert len(lines) == 6


def test_top_k_overrides_the_config_in_json(cli: Cli) -> None:
    (line,) = json_lines(cli("predict", "img_cls", "one.png", "--json", "--top-k", "1"))
    assert len(line["top_k"]) == 1 and line["top_k"][0]["label"] == line["label"]


def test_one_good_and_one_corrupt_image(cli: Cli, image_probabilities: dict[str, np.ndarray]) -> None:
    done = cli("predict", "img_cls", "one.png", "corrupt.png", "--json")
    assert done.returncode == 2
    (line,) = [json.loads(text) for text in done.stdout.splitlines()]
    assert line["input"] == "one.png"
    assert line["label"] == LABELS[int(np.argmax(image_probabilities["one.png"]))]
    errors = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert len(errors) == 1 and "corrupt.png" in errors[0] and "Traceback" not in done.stderr


def test_a_file_name_that_is_not_utf8_is_named_with_the_byte_escaped_in_json(
    cli: Cli, input_dir: Path, tmp_path: Path
) -> None:
    """--json ended in a TypeError traceback (exit 1): orjson takes no surrogate, Python's form of such a byte."""
    latin1 = tmp_path / os.fsdecode(b"caf\xe9.png")
    shutil.copy(input_dir / "one.png", latin1)
    done = cli("predict", "img_cls", latin1, "--json")
    assert done.returncode == 0, done.stderr
    (line,) = json_lines(done)
    assert line["input"] == f"{tmp_path}/caf\\xe9.png"


def test_images_of_different_sizes_that_cannot_share_a_batch(cli: Cli, input_dir: Path) -> None:
    lines = json_lines(cli("predict", "img_mean", "one.png", "two.png", "--json"))
    expected = [
        np.asarray(Image.open(input_dir / name).convert("L"), np.float64).mean() / 255
        for name in ("one.png", "two.png")
    ]
    assert [line["value"] for line in lines] == pytest.approx(expected, abs=1e-5)


def test_tabular_csv_rows_match_onnxruntime(cli: Cli, repository: Path, input_dir: Path) -> None:
    lines = json_lines(cli("predict", "tab_cls", "rows.csv", "--json"))
    assert [line["input"] for line in lines] == ["rows.csv#row1", "rows.csv#row2"]
    columns = yaml.safe_load((repository / "tab_cls" / "config.yaml").read_text())["preprocess"]["columns"]
    mean = np.array([c["mean"] for c in columns])
    std = np.array([c["std"] for c in columns])
    raw = np.loadtxt(input_dir / "rows.csv", delimiter=",", skiprows=1)
    probabilities = run_onnx(repository, "tab_cls", {"input": ((raw - mean) / std).astype(np.float32)})["probabilities"]
    for line, row in zip(lines, probabilities, strict=True):
        assert line["label"] == LABELS[int(np.argmax(row))]
        assert line["score"] == pytest.approx(float(row.max()), abs=1e-6)


def test_tabular_csv_human_listing(cli: Cli) -> None:
    done = cli("predict", "tab_cls", "rows.csv", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [lines[0], lines[3]] == ["rows.csv#row1", "rows.csv#row2"]
    assert all(RANK_ROW.match(row) for row in lines[1:3] + lines[4:6])


def test_regression_undoes_target_scaling(cli: Cli, repository: Path) -> None:
    done = cli("predict", "tab_reg", "records.json", '{"x1": -2, "x2": 7}', "--json")
    lines = json_lines(done)
    assert [line["input"] for line in lines] == ["records.json#row1", "records.json#row2", '{"x1": -2, "x2": 7}']
    target = yaml.safe_load((repository / "tab_reg" / "config.yaml").read_text())["postprocess"]["target"]
    features = np.array([[1, 2], [3.5, 0.5], [-2, 7]], dtype=np.float32)  # row 2 has no x2 (null): imputed 0.5
    scaled = run_onnx(repository, "tab_reg", {"input": features})["variable"].reshape(-1)
    assert [line["value"] for line in lines] == pytest.approx(scaled * target["std"] + target["mean"], rel=1e-5)


def test_regression_human_listing(cli: Cli) -> None:
    done = cli("predict", "tab_reg", "records.json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0::2] == ["records.json#row1", "records.json#row2"]
    assert all(re.fullmatch(r"\s+value: -?\d+(\.\d+)?", line) for line in lines[1::2]), lines


def test_npy_batch_gives_one_prediction_per_row(cli: Cli, repository: Path, input_dir: Path) -> None:
    lines = json_lines(cli("predict", "vec_raw", "batch.npy", "item.npy", "--json"))
    assert [line["input"] for line in lines] == ["batch.npy#row1", "batch.npy#row2", "batch.npy#row3", "item.npy"]
    weights = initializer(repository, "vec_raw", "w")
    inputs = np.concatenate([np.load(input_dir / "batch.npy"), np.load(input_dir / "item.npy")[None]])
    np.testing.assert_allclose([line["outputs"]["y"] for line in lines], inputs @ weights, rtol=1e-5, atol=1e-5)


def test_array_files_that_declare_more_than_they_hold_are_refused_in_one_line(cli: Cli, tmp_path: Path) -> None:
    """An .npy header declaring 2^40 rows ended in a MemoryError traceback (exit 1); an .npz of 0.5 MB expanding to
    480 MB of zeros was decompressed whole and run row by row (GBs, minutes). eval's reader of .npz data decompressed
    it whole before refusing it (586 MB resident)."""
    write_npy_declaring_a_terabyte(tmp_path / "huge.npy")
    write_npz_bomb(tmp_path / "bomb.npz")
    for command, name, problem in (
        ("predict", "huge.npy", "declares an array larger than"),
        ("predict", "bomb.npz", "a zip bomb, refused unread"),
        ("eval", "bomb.npz", "a zip bomb, refused unread"),
    ):
        done = cli(command, "vec_raw", tmp_path / name)
        assert done.returncode == 2, done.stderr
        assert problem in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_nan_row_fails_alone(cli: Cli) -> None:
    done = cli("predict", "vec_raw", "nan_row.npy", "--json")
    assert done.returncode == 2
    assert [json.loads(line)["input"] for line in done.stdout.splitlines()] == ["nan_row.npy#row1", "nan_row.npy#row3"]
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: nan_row.npy#row2: ") and "NaN" in error


def test_many_rows_run_in_several_batches_in_order(cli: Cli, repository: Path, input_dir: Path) -> None:
    done = cli("predict", "vec_raw", "many.npy", "--json")
    assert done.returncode == 2
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["input"] for line in lines] == [f"many.npy#row{n}" for n in range(1, 71) if n != 40]
    rows = np.delete(np.load(input_dir / "many.npy"), 39, axis=0)
    expected = rows @ initializer(repository, "vec_raw", "w")
    np.testing.assert_allclose([line["outputs"]["y"] for line in lines], expected, rtol=1e-5, atol=1e-5)
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: many.npy#row40:")


def test_raw_outputs_human_listing(cli: Cli) -> None:
    done = cli("predict", "vec_raw", "item.npy")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header == "item.npy"
    assert re.fullmatch(r"\s+y: shape \[6\]  \[(-?[\d.e+-]+, ){5}\.\.\.\]", row), row


def test_embedding_human_listing(cli: Cli, repository: Path, input_dir: Path) -> None:
    done = cli("predict", "vec_emb", "item.npy")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    norm = np.linalg.norm(np.load(input_dir / "item.npy") @ initializer(repository, "vec_emb", "w"))
    assert header == "item.npy"
    match = re.fullmatch(r"\s+embedding: 6 dims  \[.*, \.\.\.\]  L2 norm (\d+\.\d{4})", row)
    assert match, row
    assert float(match[1]) == pytest.approx(norm, abs=1e-4)


def test_text_string_and_txt_file(cli: Cli, repository: Path) -> None:
    lines = json_lines(cli("predict", "text_emb", "note.txt", "hello world", "--json"))
    assert [line["input"] for line in lines] == ["note.txt", "hello world"]
    table = initializer(repository, "text_emb", "table")
    expected = [table[4], (table[2] + table[3]) / 2]  # "cats"; "hello world" mean-pooled (padding masked out)
    np.testing.assert_allclose([line["embedding"] for line in lines], expected, rtol=1e-5, atol=1e-6)


def test_a_text_longer_than_a_file_name_can_be_is_read_as_text(cli: Cli, repository: Path) -> None:
    long_text = " ".join(["hello"] * 60)  # 359 characters: past the 255 bytes a file name can have
    (line,) = json_lines(cli("predict", "text_emb", long_text, "--json"))
    assert line["input"] == "hello hello hello hello hello hello h..."
    np.testing.assert_allclose(line["embedding"], initializer(repository, "text_emb", "table")[2], rtol=1e-5)


def test_several_embeddings_end_with_how_alike_each_pair_is(cli: Cli, repository: Path) -> None:
    done = cli("predict", "text_emb", "note.txt", "hello world")
    assert done.returncode == 0, done.stderr
    table = initializer(repository, "text_emb", "table")
    cats, hello_world = table[4], (table[2] + table[3]) / 2
    cosine = cats @ hello_world / np.linalg.norm(cats) / np.linalg.norm(hello_world)
    assert done.stdout.splitlines()[-2:] == ["cosine similarity:", f"  {cosine:+.4f}  note.txt  ~  hello world"]


def test_help_teaches_by_example(cli: Cli) -> None:
    done = cli("predict", "--help")
    assert done.returncode == 0
    assert done.stdout.count("forwardpass predict ") >= 5 and "--top-k" in done.stdout and ".txt" in done.stdout
