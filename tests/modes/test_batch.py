"""Batch jobs against `Model.predict` row by row: tables and image folders, every output format, bad records in the
errors file with their reasons, every id exactly once, and the CLI's refusals."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import forwardpass
from forwardpass.errors import InputError
from forwardpass.model import Model
from forwardpass.modes.batch import BatchOptions, run_batch
from forwardpass.modes.sinks import ERRORS_FILE, LOCK_FILE, MANIFEST_FILE
from tests.vad_audio import recording, write

from .conftest import write_table

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
ROOT = Path(__file__).resolve().parents[2]


def read_rows(output: Path, output_format: str = "parquet") -> list[dict[str, Any]]:
    if output_format == "parquet":
        return pq.read_table(output).to_pylist()  # the folder reads as one dataset: no other file gets in the way
    rows: list[dict[str, Any]] = []
    for part in sorted(output.glob(f"part-*.{output_format}")):
        if output_format == "jsonl":
            rows.extend(json.loads(line) for line in part.read_text(encoding="utf-8").splitlines())
        else:
            with part.open(newline="", encoding="utf-8") as file:
                rows.extend(csv.DictReader(file))
    return rows


def read_errors(output: Path) -> dict[str, dict[str, str]]:
    lines = (output / ERRORS_FILE).read_text(encoding="utf-8").splitlines()
    return {error["id"]: error for error in map(json.loads, lines)}


def assert_close(got: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert set(got) >= set(expected), where
        for key, value in expected.items():
            assert_close(got[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_close(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), where
    else:
        assert got == expected, where


@pytest.fixture(scope="module")
def tab_cls(repository: Path) -> Model:
    return forwardpass.load("tab_cls", repository=repository)


@pytest.fixture(scope="module")
def img_cls(repository: Path) -> Model:
    return forwardpass.load("img_cls", repository=repository)


def test_table_rows_equal_model_predict_and_bad_records_land_in_the_errors_file(
    tab_cls: Model, table: Path, tmp_path: Path
):
    summary = run_batch(tab_cls, table, tmp_path / "out", BatchOptions(part_size=500, batch_size=32))
    rows = {row["id"]: row for row in read_rows(tmp_path / "out")}
    errors = read_errors(tmp_path / "out")
    with table.open(newline="", encoding="utf-8") as file:
        records = list(csv.DictReader(file))
    assert summary.records == len(records) == 3000
    assert summary.rows == len(rows) and summary.errors == len(errors) == 30
    assert not rows.keys() & errors.keys()
    for number, record in enumerate(records, 1):
        record_id = f"records.csv#row{number}"
        if number % 97 == 0:
            kind = (number // 97 - 1) % 3
            reason = errors[record_id]["error"]
            expected = ["column 'a' is empty", "'not-a-number' is not a number", "has 5 fields, the header has 4"][kind]
            assert expected in reason, (record_id, reason)
            continue
        row = rows[record_id]
        assert row["model"] == "tab_cls" and row["version"] == "1"
        assert_close(row, tab_cls.predict(record), record_id)


def test_image_folder_rows_equal_model_predict(img_cls: Model, images: Path, tmp_path: Path):
    summary = run_batch(img_cls, images, tmp_path / "out", BatchOptions(part_size=64, workers=2))
    rows = {row["id"]: row for row in read_rows(tmp_path / "out")}
    errors = read_errors(tmp_path / "out")
    files = sorted(p for p in images.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert summary.records == len(files) == 303
    assert set(errors) == {"group1/truncated.jpg", "group2/noise.png", "notes.txt"}
    assert all(error["type"] == "DecodeError" for error in errors.values())
    assert "not an image" in errors["group2/noise.png"]["error"]
    assert len(rows) == 300
    for path in files:
        name = path.relative_to(images).as_posix()
        if name not in errors:
            assert_close(rows[name], img_cls.predict(path), name)


def test_a_folder_of_sound_files_gets_each_files_speech_segments(tmp_path: Path):
    """The bundled VAD over recordings at three rates: each row is Model.predict's answer for its file, and a file
    that is no sound is a bad record naming why."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    for take, (seconds, rate, channels) in enumerate([(2.0, 16000, 1), (2.5, 44100, 2), (3.0, 8000, 1)]):
        write(folder / f"take{take}.wav", recording(seconds, rate, channels), rate, "PCM_16")
    (folder / "notes.txt").write_text("not a sound", encoding="utf-8")
    vad = forwardpass.load("silero_vad", warmup=0)
    summary = run_batch(vad, folder, tmp_path / "out", BatchOptions())
    assert (summary.records, summary.rows, summary.errors) == (4, 3, 1)
    assert "not a sound file" in read_errors(tmp_path / "out")["notes.txt"]["error"]
    rows = {row["id"]: row for row in read_rows(tmp_path / "out")}
    for take in range(3):
        expected = vad.predict(str(folder / f"take{take}.wav"))
        assert expected["segments"]  # speech in every take: rows of nothing could not tell a wrong answer
        assert {key: rows[f"take{take}.wav"][key] for key in expected} == expected


@pytest.mark.parametrize("output_format", ["csv", "jsonl"])
def test_every_format_holds_the_same_rows(tab_cls: Model, table: Path, tmp_path: Path, output_format: str):
    run_batch(tab_cls, table, tmp_path / "parquet", BatchOptions(part_size=1000))
    run_batch(tab_cls, table, tmp_path / "other", BatchOptions(output_format=output_format, part_size=1000))
    expected = read_rows(tmp_path / "parquet")
    got = read_rows(tmp_path / "other", output_format)
    assert [row["id"] for row in got] == [row["id"] for row in expected]
    for row, want in zip(got, expected, strict=True):
        if output_format == "csv":  # CSV cells are text: numbers as written, lists as JSON
            row = {**row, "index": int(row["index"]), "score": float(row["score"]), "top_k": json.loads(row["top_k"])}
        assert_close(row, want, row["id"])


def test_parquet_jsonl_and_a_folder_of_tables_read_like_csv(tab_cls: Model, tmp_path: Path):
    values = np.random.default_rng(3).normal(size=(200, 3)).round(4)
    good = [dict(zip("abc", map(float, row), strict=True)) for row in values]
    folder = tmp_path / "tables"
    (folder / "nested").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(good[:120]), folder / "first.parquet")
    (folder / "nested" / "second.jsonl").write_text(
        "\n".join(json.dumps(r) for r in good[120:]) + "\n{broken\n", encoding="utf-8"
    )
    run_batch(tab_cls, folder, tmp_path / "out", BatchOptions(part_size=50))
    rows = read_rows(tmp_path / "out")
    assert [row["id"] for row in rows] == [f"first.parquet#row{i}" for i in range(1, 121)] + [
        f"nested/second.jsonl#line{i}" for i in range(1, len(good) - 119)
    ]
    for row, record in zip(rows, good, strict=True):
        assert_close(row, tab_cls.predict(record), row["id"])
    errors = read_errors(tmp_path / "out")
    assert list(errors) == [f"nested/second.jsonl#line{len(good) - 119}"]
    assert "not valid JSON" in errors[f"nested/second.jsonl#line{len(good) - 119}"]["error"]


def test_npy_rows_for_a_model_without_preprocessing(tmp_path: Path, add_model: Any):
    model = forwardpass.load(add_model(tmp_path / "add.onnx", constant=2.0))
    arrays = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "rows.npy", arrays)
    run_batch(model, tmp_path / "rows.npy", tmp_path / "out", BatchOptions(part_size=3))
    rows = read_rows(tmp_path / "out")
    assert [row["id"] for row in rows] == [f"rows.npy#row{i}" for i in range(1, 11)]
    np.testing.assert_allclose([row["outputs"]["y"] for row in rows], arrays + 2.0)

    whole = (tmp_path / "rows.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[: len(whole) - 8])  # the last row lost its last two numbers
    run_batch(model, tmp_path / "cut.npy", tmp_path / "cut", BatchOptions(part_size=3))
    assert read_errors(tmp_path / "cut").keys() == {"cut.npy#row1"}  # one chunk: the whole of it is unreadable
    assert "truncated" in read_errors(tmp_path / "cut")["cut.npy#row1"]["error"]


def test_texts_from_txt_jsonl_and_csv_equal_model_predict(repository: Path, tmp_path: Path):
    model = forwardpass.load("text_emb", repository=repository)
    words = ["hello", "world", "cats", "dogs", "unknown"]
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 6)))) for _ in range(60)]
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(texts[:20]) + "\n\n", encoding="utf-8")  # the blank line is skipped
    jsonl = [json.dumps(t) if i % 2 else json.dumps({"text": t}) for i, t in enumerate(texts[20:40])]
    (folder / "b.jsonl").write_text("\n".join([*jsonl, json.dumps({"title": "no text"})]) + "\n", encoding="utf-8")
    with (folder / "c.csv").open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["text"], *([t] for t in texts[40:])])
    run_batch(model, folder, tmp_path / "out", BatchOptions(part_size=16))
    rows = read_rows(tmp_path / "out")
    assert [row["id"] for row in rows] == (
        [f"a.txt#line{i}" for i in range(1, 21)]
        + [f"b.jsonl#line{i}" for i in range(1, 21)]
        + [f"c.csv#row{i}" for i in range(1, 21)]
    )
    for row, text in zip(rows, texts, strict=True):
        assert_close(row, model.predict(text), row["id"])
    errors = read_errors(tmp_path / "out")
    assert list(errors) == ["b.jsonl#line21"] and "'text' text field" in errors["b.jsonl#line21"]["error"]


def run_cli(model: str, data: Path, output: Path, *options: str, repository: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FORWARDPASS_REPOSITORY": str(repository), "NO_COLOR": "1"}
    command = [FORWARDPASS, "batch", model, str(data), "-o", str(output), *options]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_cli_runs_refuses_to_mix_jobs_and_stops_at_max_errors(repository: Path, table: Path, tmp_path: Path):
    out = tmp_path / "out"
    done = run_cli("tab_cls", table, out, "--part-size", "1000", repository=repository)
    assert done.returncode == 0, done.stderr
    assert "3000 records: 2970 predictions, 30 errors" in done.stdout
    again = run_cli("tab_cls", table, out, repository=repository)
    assert again.returncode == 2 and "pass --resume" in again.stderr and "Traceback" not in again.stderr
    other = run_cli("tab_cls", table, out, "--resume", "--part-size", "10", repository=repository)
    assert other.returncode == 2 and "holds a different job" in other.stderr and "part_size=1000" in other.stderr
    finished = run_cli("tab_cls", table, out, "--resume", "--part-size", "1000", repository=repository)
    assert finished.returncode == 0 and "0 in" in finished.stdout  # nothing left to compute

    stopped = tmp_path / "stopped"
    too_many = run_cli("tab_cls", table, stopped, "--part-size", "500", "--max-errors", "4", repository=repository)
    assert too_many.returncode == 2 and "more than --max-errors 4" in too_many.stderr
    manifest = json.loads((stopped / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert [part["index"] for part in manifest["parts"]] == [0] and not manifest["finished"]
    assert len(read_errors(stopped)) == 5  # the first part's, kept for the user to read
    resumed = run_cli("tab_cls", table, stopped, "--resume", "--part-size", "500", "--max-errors", "-1",
                      repository=repository)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert read_rows(stopped) == read_rows(out)

    not_empty = run_cli("tab_cls", table, table.parent, repository=repository)
    assert not_empty.returncode == 2 and "not empty" in not_empty.stderr


def test_resume_refuses_an_input_that_changed(tab_cls: Model, tmp_path: Path):
    table = tmp_path / "grows.csv"
    write_table(table, 100)
    run_batch(tab_cls, table, tmp_path / "out", BatchOptions(part_size=30))
    write_table(table, 130)  # 30 more records: every part after them would be numbered differently
    with pytest.raises(InputError, match="records=100"):
        run_batch(tab_cls, table, tmp_path / "out", BatchOptions(part_size=30, resume=True))


def test_resume_refuses_an_input_edited_or_replaced_with_as_many_records(
    tab_cls: Model, img_cls: Model, images: Path, tmp_path: Path
):
    """An edit that kept the count (a row's values changed, an image swapped for another) was resumed: the parts done
    held the old records' predictions, the rest the new ones', under the same ids, exit 0."""
    table = tmp_path / "rows.csv"
    write_table(table, 100)
    run_batch(tab_cls, table, tmp_path / "table", BatchOptions(part_size=30))
    write_table(table, 100, seed=1)  # the same ids, other values
    with pytest.raises(InputError, match="INPUT's files were added, removed, replaced or edited"):
        run_batch(tab_cls, table, tmp_path / "table", BatchOptions(part_size=30, resume=True))

    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    run_batch(img_cls, folder, tmp_path / "images-out", BatchOptions(part_size=64))
    first, *_, last = sorted(p for p in folder.rglob("*") if p.is_file())
    last.unlink()
    shutil.copy(first, first.with_name("0-added" + first.suffix))  # one out, one in: as many records
    with pytest.raises(InputError, match="INPUT's files were added"):
        run_batch(img_cls, folder, tmp_path / "images-out", BatchOptions(part_size=64, resume=True))


def test_resume_refuses_a_model_changed_in_its_version_folder(repository: Path, table: Path, tmp_path: Path):
    """A model retrained, or its config edited, under the same name and version was resumed: two models' parts."""
    models = tmp_path / "models"
    shutil.copytree(repository / "tab_cls", models / "tab_cls")
    run_batch(forwardpass.load("tab_cls", repository=models), table, tmp_path / "out", BatchOptions(part_size=1000))
    config = models / "tab_cls" / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("mean: 1.0", "mean: 1.5"), encoding="utf-8")
    edited = forwardpass.load("tab_cls", repository=models)
    with pytest.raises(InputError, match="the model's config or file changed"):
        run_batch(edited, table, tmp_path / "out", BatchOptions(part_size=1000, resume=True))


def test_a_run_killed_before_its_first_manifest_write_leaves_a_folder_that_starts_afresh(
    tab_cls: Model, tmp_path: Path
):
    table = tmp_path / "rows.csv"
    write_table(table, 50)
    output = tmp_path / "out"
    output.mkdir()
    (output / f".{MANIFEST_FILE}.tmp").write_bytes(b'{"job": ')  # the half-written temp file of that run
    summary = run_batch(tab_cls, table, output, BatchOptions(part_size=20, resume=True))
    assert (summary.records, summary.rows) == (50, 50)
    assert sorted(p.name for p in output.iterdir()) == [
        ERRORS_FILE,
        LOCK_FILE,
        MANIFEST_FILE,
        "part-000000.parquet",
        "part-000001.parquet",
        "part-000002.parquet",
    ]


def test_an_output_folder_that_cannot_be_made_is_refused_naming_it(tab_cls: Model, table: Path, tmp_path: Path):
    """A path under a file (or on a read-only disk) ended the job in a NotADirectoryError traceback, exit 1."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder", encoding="utf-8")
    with pytest.raises(InputError, match=r"cannot write to OUTPUT '.*notes.txt/scores' \(Not a directory\)"):
        run_batch(tab_cls, table, a_file / "scores", BatchOptions())


def test_an_output_folder_inside_the_input_folder_is_refused(tab_cls: Model, tmp_path: Path):
    """Its part files would be read as input: the job ran once, then --resume found more records and refused."""
    tables = tmp_path / "tables"
    tables.mkdir()
    write_table(tables / "rows.csv", 20)
    for output in (tables / "scores", tables):
        with pytest.raises(InputError, match="is inside INPUT"):
            run_batch(tab_cls, tables, output, BatchOptions(output_format="csv"))
        assert not (tables / "scores").exists()


def test_drop_leaves_a_label_column_out_of_the_records(tmp_path: Path):
    """A table with its label column (data/*/test.csv) gave only errors: the model refuses fields that are not its
    columns. Dropped, the rows are the model's answers on the records without it; the job remembers the choice."""
    diabetes = forwardpass.load("diabetes")
    with (ROOT / "data" / "diabetes" / "test.csv").open(newline="", encoding="utf-8") as file:
        records = list(csv.DictReader(file))[:20]
    table = tmp_path / "labelled.csv"
    with table.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    kept = run_batch(diabetes, table, tmp_path / "kept", BatchOptions())
    assert (kept.rows, kept.errors) == (0, 20)
    assert "unknown field 'target'" in read_errors(tmp_path / "kept")["labelled.csv#row1"]["error"]

    dropped = run_batch(diabetes, table, tmp_path / "dropped", BatchOptions(drop=("target",)))
    assert (dropped.rows, dropped.errors) == (20, 0)
    for number, (row, record) in enumerate(zip(read_rows(tmp_path / "dropped"), records, strict=True), 1):
        del record["target"]
        assert_close(row, diabetes.predict(record), f"row {number}")
    with pytest.raises(InputError, match="holds a different job"):
        run_batch(diabetes, table, tmp_path / "dropped", BatchOptions(resume=True))


def test_drop_is_refused_for_a_model_that_reads_no_table_columns(img_cls: Model, images: Path, tmp_path: Path):
    with pytest.raises(InputError, match="--drop"):
        run_batch(img_cls, images, tmp_path / "out", BatchOptions(drop=("label",)))


def test_cli_a_job_where_every_record_failed_exits_2_naming_the_first_reason(repository: Path, tmp_path: Path):
    """It exited 0 (the README's example on a labelled table wrote 0 predictions and passed its test)."""
    table = tmp_path / "unnamed.csv"
    table.write_text("x,y,z\n1,2,3\n4,5,6\n", encoding="utf-8")
    done = run_cli("tab_cls", table, tmp_path / "out", repository=repository)
    assert done.returncode == 2, done.stderr
    assert "2 records: 0 predictions, 2 errors" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        "error: no record was scored; the first, unnamed.csv#row1: record is missing column 'a', 'b', 'c'"
    )


@pytest.mark.parametrize("output_format", ["parquet", "csv", "jsonl"])
def test_a_file_name_that_is_not_utf8_gets_an_id_with_the_byte_escaped(
    img_cls: Model, tmp_path: Path, output_format: str
):
    """Such a name (0xe9, é on an old Latin-1 disk) ended the job in a UnicodeEncodeError traceback, exit 1."""
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / os.fsdecode(b"caf\xe9.png"))
    (folder / os.fsdecode(b"cut\xe9.png")).write_bytes(b"\x89PNG\r\n")
    summary = run_batch(img_cls, folder, tmp_path / "out", BatchOptions(output_format=output_format))
    assert (summary.rows, summary.errors) == (1, 1)
    assert [row["id"] for row in read_rows(tmp_path / "out", output_format)] == ["caf\\xe9.png"]
    error = read_errors(tmp_path / "out")["cut\\xe9.png"]["error"]
    assert "photos/cut\\xe9.png" in error and "not an image" in error


def test_links_and_pipes_in_an_input_folder_are_each_a_bad_record_not_left_out(img_cls: Model, tmp_path: Path):
    """A broken link, a link to a folder and a named pipe were left out without a word: the job said '1 records:
    1 predictions, no errors' for a folder of four entries (the linked folder's photos unscored, unmentioned)."""
    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "good.png")
    Image.fromarray(pixels).save(elsewhere / "linked.png")
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    (folder / "more").symlink_to(elsewhere)
    (folder / "sub" / "up").symlink_to(folder)  # followed, it would loop
    os.mkfifo(folder / "pipe.png")  # opened, it would wait for a writer forever
    summary = run_batch(img_cls, folder, tmp_path / "out", BatchOptions())
    assert (summary.records, summary.rows, summary.errors) == (5, 1, 4)
    errors = {name: error["error"] for name, error in read_errors(tmp_path / "out").items()}
    assert errors == {
        "gone.png": "is a broken link: what it points to does not exist",
        "more": "is a link to a folder, which is not followed (a link can loop): give that folder as INPUT",
        "pipe.png": "is not a regular file (a pipe, a socket or a device)",
        "sub/up": "is a link to a folder, which is not followed (a link can loop): give that folder as INPUT",
    }


def test_a_broken_link_to_a_table_and_a_linked_folder_in_a_table_folder_are_bad_records(tab_cls: Model, tmp_path: Path):
    (tmp_path / "tables").mkdir()
    write_table(tmp_path / "tables" / "rows.csv", 3)
    (tmp_path / "tables" / "old.csv").symlink_to(tmp_path / "deleted.csv")
    (tmp_path / "tables" / "notes.md").symlink_to(tmp_path / "deleted.md")  # no table: not read either way
    (tmp_path / "tables" / "more").symlink_to(tmp_path)
    summary = run_batch(tab_cls, tmp_path / "tables", tmp_path / "out", BatchOptions())
    assert (summary.records, summary.rows, summary.errors) == (5, 3, 2)
    assert sorted(read_errors(tmp_path / "out")) == ["more", "old.csv"]


def test_a_table_that_fails_to_read_is_a_bad_record_not_the_end_of_the_job(tab_cls: Model, tmp_path: Path):
    """A read error (EIO, here /proc/self/mem's) in one CSV or JSONL of a folder ended the job in an OSError
    traceback, exit 1, before any record was scored."""
    (tmp_path / "tables").mkdir()
    write_table(tmp_path / "tables" / "rows.csv", 3)
    for name in ("broken.csv", "broken.jsonl"):
        (tmp_path / "tables" / name).symlink_to("/proc/self/mem")
    summary = run_batch(tab_cls, tmp_path / "tables", tmp_path / "out", BatchOptions())
    assert (summary.records, summary.rows, summary.errors) == (5, 3, 2)
    errors = read_errors(tmp_path / "out")
    assert errors["broken.csv"]["error"] == errors["broken.jsonl"]["error"] == "cannot be read (Input/output error)"


def test_an_empty_image_folder_is_refused(img_cls: Model, tmp_path: Path):
    """It was a job of 0 records with exit 0, as a table folder without tables is not: most likely the wrong path."""
    (tmp_path / "photos" / ".thumbnails").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no files"):
        run_batch(img_cls, tmp_path / "photos", tmp_path / "out", BatchOptions())


def test_a_zero_byte_csv_is_a_bad_record_and_a_header_only_csv_has_no_records(tab_cls: Model, tmp_path: Path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "empty.csv").write_bytes(b"")
    (tmp_path / "tables" / "header.csv").write_text("a,b,c\n", encoding="utf-8")
    summary = run_batch(tab_cls, tmp_path / "tables", tmp_path / "out", BatchOptions())
    assert (summary.records, summary.rows, summary.errors) == (1, 0, 1)
    assert "is empty: expected a header row" in read_errors(tmp_path / "out")["empty.csv"]["error"]


def test_an_input_edited_while_the_job_runs_is_not_finished_as_one_job(tab_cls: Model, tmp_path: Path):
    """Records rewritten while the job ran (here once the first part is scored): its first part came from the old
    file, the rest from the new one, and the job finished, exit 0. It ends refused instead, and --resume refuses it
    too: the parts done disagree with the input."""
    table = tmp_path / "rows.csv"
    write_table(table, 90)
    edits: list[int] = []

    def edit_once(done: int, total: int) -> None:
        if done >= 30 and not edits:
            edits.append(done)
            write_table(table, 90, seed=1)  # the same ids, other values

    with pytest.raises(InputError, match="INPUT's files were added, removed, replaced or edited while the job ran"):
        run_batch(tab_cls, table, tmp_path / "out", BatchOptions(part_size=30), edit_once)
    assert not json.loads((tmp_path / "out" / MANIFEST_FILE).read_bytes())["finished"]
    with pytest.raises(InputError, match="INPUT's files were added, removed, replaced or edited since the job started"):
        run_batch(tab_cls, table, tmp_path / "out", BatchOptions(part_size=30, resume=True))


def test_a_resumed_job_reports_the_records_done_before_it_once_and_first(tab_cls: Model, tmp_path: Path):
    """Resumed, the job reported each part done before it as it skipped past it, in its first moments: the bar
    counted them as scored then, so its rate (and time left) was thousands of records/s off."""
    table = tmp_path / "rows.csv"
    write_table(table, 100, bad_every=25)  # row 25, in the second part of 20, is bad
    with pytest.raises(InputError, match="more than --max-errors 0"):
        run_batch(tab_cls, table, tmp_path / "out", BatchOptions(part_size=20, max_errors=0))
    reported: list[tuple[int, int]] = []
    summary = run_batch(
        tab_cls,
        table,
        tmp_path / "out",
        BatchOptions(part_size=20, max_errors=None, resume=True),
        lambda done, total: reported.append((done, total)),
    )
    assert reported[0] == (40, 100) and reported[-1] == (100, 100)
    assert [done for done, _ in reported] == sorted(done for done, _ in reported)  # only forwards, from 40
    assert (summary.records, summary.computed, summary.rows + summary.errors) == (100, 60, 100)
