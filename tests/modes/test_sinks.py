"""The output folder of a batch job (modes/sinks.py): one run at a time writes it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import forwardpass
from forwardpass.errors import InputError
from forwardpass.modes.batch import BatchOptions, run_batch
from forwardpass.modes.sinks import Output

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
