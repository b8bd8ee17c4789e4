"""The output folder of a batch job (modes/sinks.py): one run at a time writes it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import forwardpass
from forwardpass.errors import InputError
from forwardpass.modes.batch import BatchOptions, run_batch
from forwardpass.modes.sinks import Output, PartDone, saved_job

from .conftest import write_table
from .test_batch import FORWARDPASS, read_rows

JOB = {"model": "tab_cls"}


def test_a_second_run_on_a_folder_a_run_is_writing_is_refused_until_that_one_ends(repository: Path, tmp_path: Path):
    """Two runs at once (a --resume started while the job still runs) each rewrote the manifest with the parts they
    knew of, and deleted each other's temp files as leftovers: the first died on a missing file."""
    table = tmp_path / "rows.csv"
    write_table(table, 60)
    output = tmp_path / "out"
    writing = Output(output, "parquet", JOB, resume=False)  # a run in the middle of the job
    command = [FORWARDPASS, "batch", "tab_cls", str(table), "-o", str(output), "--resume"]
    env = {**os.environ, "FORWARDPASS_REPOSITORY": str(repository), "NO_COLOR": "1"}
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    assert "is being written by another run of the job" in second.stderr
    with pytest.raises(InputError, match="being written by another run"):
        Output(output, "parquet", JOB, resume=True)  # in this process too: the lock is the folder's, not the process's
    writing.close()
    output.joinpath("_manifest.json").unlink()  # the stand-in run's job is not tab_cls's: start it afresh
    tab_cls = forwardpass.load("tab_cls", repository=repository)
    summary = run_batch(tab_cls, table, output, BatchOptions(part_size=25, resume=True))
    assert (summary.records, summary.rows) == (60, 60)
    assert len(read_rows(output)) == 60
    again = run_batch(tab_cls, table, output, BatchOptions(part_size=25, resume=True))  # the lock went with the run
    assert again.computed == 0


def test_a_write_that_fails_ends_the_job_in_one_line_and_resume_finishes_it(repository: Path, tmp_path: Path):
    """A full disk ended the job in an OSError traceback, exit 1. Files limited to 4 KiB (ulimit -f) make the same
    failure: the manifest outgrows them after some tens of parts."""
    table = tmp_path / "rows.csv"
    write_table(table, 300)
    output = tmp_path / "out"
    job = [FORWARDPASS, "batch", "tab_cls", str(table), "-o", str(output), "--part-size", "5", "--format", "jsonl"]
    env = {**os.environ, "FORWARDPASS_REPOSITORY": str(repository), "NO_COLOR": "1"}
    small_files = ["bash", "-c", 'ulimit -f 4 && exec "$@"', "bash"]
    failed = subprocess.run([*small_files, *job], env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr and "File too large" in failed.stderr and "--resume" in failed.stderr
    saved = saved_job(output)
    assert saved is not None and 0 < saved[1] < 300
    finished = subprocess.run([*job, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    ids = sorted(row["id"] for row in read_rows(output, "jsonl"))
    assert ids == sorted(f"rows.csv#row{n}" for n in range(1, 301))


def test_parquet_parts_typed_from_rows_without_a_value_read_as_one_dataset(tmp_path: Path):
    """A part in which no image had a detection wrote `detections` as a list of nulls, and a part of records that
    all lacked a field wrote no column: with such a part first, pq.read_table (and pd.read_parquet) of the folder
    failed ('Unsupported cast from struct<...> to null')."""
    output = Output(tmp_path / "out", "parquet", JOB, resume=False)
    found = {"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "label": "face"}
    parts: list[list[dict[str, object]]] = [
        [{"id": "empty.png", "detections": []}],
        [{"id": "one.png", "detections": [found], "note": "n"}, {"id": "none.png", "detections": []}],
    ]
    for index, rows in enumerate(parts):
        output.write(index, rows, [])
        output.record(PartDone(index, index, index + 1, len(rows), 0))
    output.finish()
    output.close()
    read = pq.read_table(tmp_path / "out").to_pylist()
    assert read == [
        {"id": "empty.png", "detections": [], "note": None},
        {"id": "one.png", "detections": [found], "note": "n"},
        {"id": "none.png", "detections": [], "note": None},
    ]
