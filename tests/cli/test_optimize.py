"""`forwardpass optimize` as users run it: a new version and a table on success; one error line and exit code 2,
with nothing written, on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.test_arrays import write_npy_declaring_a_terabyte, write_npz_bomb
from tests.precision.digits_resnet import write_digits
from tests.precision.test_optimize import scaled_classifier

ROOT = Path(__file__).resolve().parents[2]
FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
HELD_OUT = ROOT / "data" / "digits" / "test"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"), limit_train=48).train


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "models" / "digits_cnn", tmp_path / "repo" / "digits_cnn")
    return tmp_path / "repo"


def run(repo: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    command = [FORWARDPASS, "optimize", "digits_cnn", "-r", str(repo), "--duration", "0.2", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def assert_one_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


def models(repo: Path) -> subprocess.CompletedProcess[str]:
    """`forwardpass models` on the repository, wide enough for its versions column."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
    return subprocess.run(
        [FORWARDPASS, "models", "-r", str(repo)], env=env, capture_output=True, text=True, timeout=300
    )


def versions(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "digits_cnn").iterdir())


def test_int8_writes_a_new_version_and_prints_the_comparison(repo: Path, calibration: Path) -> None:
    # the bundled digits CNN runs INT8 at about FP32's speed, either side of it: asked for by name
    done = run(repo, "-p", "int8", "--calibration", calibration, "--eval", HELD_OUT, "--allow-slower")
    assert done.returncode == 0, done.stderr
    assert "chosen" in done.stdout and "original" in done.stdout
    assert "top-1 accuracy on the labels (%)" in done.stdout  # the table names its metric
    assert f"wrote version 2 of digits_cnn: {repo / 'digits_cnn' / '2'}" in done.stdout
    assert "version 2 is now the default of digits_cnn" in done.stdout  # never silently
    record = json.loads((repo / "digits_cnn" / "2" / "precision.json").read_text())
    assert record["precision"] == "int8" and record["source"]["version"] == 1
    assert (repo / "digits_cnn" / "2" / "precision.png").is_file()
    assert not [p for p in (repo / "digits_cnn").iterdir() if p.name.startswith(".")]  # no staging left behind
    listing = models(repo)
    assert listing.returncode == 0, listing.stderr
    assert "1, 2 (int8 of 1)" in listing.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-p", "int7"], ["--precision", "'int7'", "int8"]),
        (["-p", "int8"], ["needs --calibration"]),
        (["-p", "int8", "--calibration", "nowhere"], ["no calibration data at 'nowhere'"]),
        (["-p", "int8", "--calibration-method", "median", "--calibration", "x"], ["--calibration-method"]),
        (["-p", "fp16"], ["give --eval DATA"]),
    ],
)
def test_bad_options_end_in_one_line(repo: Path, args: list[str], words: list[str]) -> None:
    assert_one_error(run(repo, *args), *words)
    assert versions(repo) == ["1", "config.yaml", "labels.txt", "metrics.json"]


def test_calibration_data_that_does_not_match_the_model(repo: Path, tmp_path: Path) -> None:
    records = tmp_path / "records.csv"
    records.write_text("a,b\n1,2\n")
    done = run(repo, "-p", "int8", "--calibration", records)
    assert_one_error(done, "calibration data", "does not match model 'digits_cnn'")
    assert versions(repo) == ["1", "config.yaml", "labels.txt", "metrics.json"]


def test_a_zip_bomb_as_samples_is_refused_unread(repo: Path, tmp_path: Path) -> None:
    """optimize's samples reader decompressed a 0.5 MB .npz of 512 MB of zeros whole before refusing it (9.3 GB
    resident, 60 s); it is refused as predict's reader refuses it, before a byte of it is decompressed."""
    bomb = write_npz_bomb(tmp_path / "bomb.npz", member_bytes=512 << 20)
    for option in ("--eval", "--calibration"):
        done = run(repo, "-p", "int8" if option == "--calibration" else "fp16", option, bomb)
        assert_one_error(done, f"data '{bomb}' member 'x0.npy' expands", "a zip bomb, refused unread")
    # and an .npy whose header declares 2^40 rows ended in a MemoryError traceback
    huge = write_npy_declaring_a_terabyte(tmp_path / "huge.npy")
    assert_one_error(run(repo, "-p", "int8", "--calibration", huge), f"data '{huge}' declares an array larger than")
    assert versions(repo) == ["1", "config.yaml", "labels.txt", "metrics.json"]


def test_auto_says_why_it_left_out_an_fp16_that_overflows_when_no_budget_was_given(tmp_path: Path) -> None:
    """Its table marked the FP16 variant past FP16's range 'over budget', though no --max-accuracy-drop was given."""
    (tmp_path / "repo").mkdir()
    data = scaled_classifier(tmp_path / "repo", 3e4)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
    command = [FORWARDPASS, "optimize", "big", "-r", str(tmp_path / "repo"), "-p", "auto", "--eval", str(data)]
    options = [
        "--calibration",
        str(data),
        "--duration",
        "0.2",
        "--allow-slower",
        "--no-plot",
        "-o",
        str(tmp_path / "o"),
    ]
    done = subprocess.run([*command, *options], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    fp16 = next(line for line in done.stdout.splitlines() if line.split()[:2] == ["fp16", "fp16"])
    assert "past fp16's range: outputs moved" in fp16 and "(held to 0.01)" in fp16, fp16
    assert "over budget" not in done.stdout
    record = json.loads((tmp_path / "o" / "precision.json").read_text())
    refused = next(c for c in record["candidates"] if c["label"] == "fp16")
    assert refused["within_budget"] and refused["off_range"].startswith("past fp16's range"), refused


def test_an_impossible_budget_writes_nothing(repo: Path, calibration: Path) -> None:
    config = repo / "digits_cnn" / "config.yaml"  # raw scores (no postprocess): cosine, which INT8 always moves
    config.write_text(config.read_text().split("postprocess:")[0])
    done = run(repo, "-p", "int8", "--calibration", calibration, "--max-accuracy-drop", "0", "--allow-slower")
    assert_one_error(done, "no candidate keeps the drop in cosine similarity", "within 0.0", "nothing was written")
    assert versions(repo) == ["1", "config.yaml", "labels.txt", "metrics.json"]


def test_help_teaches_by_example() -> None:
    done = subprocess.run([FORWARDPASS, "optimize", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--max-accuracy-drop 0.5" in done.stdout and 'precision="int8"' in done.stdout


def test_a_new_version_the_version_policy_leaves_out_is_said_to_be_unserved(repo: Path) -> None:
    """optimize said only 'the default stays version 1', and models listed it as any other, as if it could be run
    by precision or number."""
    (repo / "digits_cnn" / "config.yaml").write_text(
        (repo / "digits_cnn" / "config.yaml").read_text() + "version_policy: {specific: [1]}\n"
    )
    done = run(repo, "-p", "fp16", "--eval", HELD_OUT)
    assert done.returncode == 0, done.stderr
    assert "version 2 of digits_cnn is not served: its config.yaml's version_policy serves [1]" in done.stdout
    listing = models(repo)
    assert "1, 2 (fp16 of 1, not served)" in listing.stdout  # it listed "1, 2 (fp16 of 1)", as if served


def test_throughput_is_timed_at_a_batch_the_model_takes(repo: Path) -> None:
    """optimize timed batches of 16 (its default) for a model whose max_batch_size is smaller: ocr_cls (6) and
    ocr_det (4) were timed at passes their server never runs. The default is now capped by the model's maximum, and a
    larger batch asked for by name is refused as bench refuses it."""
    config = repo / "digits_cnn" / "config.yaml"
    config.write_text(config.read_text().replace("max_batch_size: 64", "max_batch_size: 8"))
    assert_one_error(run(repo, "-p", "fp16", "--eval", HELD_OUT, "-b", "16"), "batch size 16", "max_batch_size of 8")
    done = run(repo, "-p", "fp16", "--eval", HELD_OUT, "--no-plot")
    assert done.returncode == 0, done.stderr
    record = json.loads((repo / "digits_cnn" / "2" / "precision.json").read_text())
    assert record["measured"]["batch_size"] == 8
