"""What a Ray Data actor (`PartScorer`) is given opens the model the driver located, as the local job would: built
and called without Ray (the class is plain Python; tests/system/test_ray.py runs the job on a real cluster)."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from forwardpass.errors import InputError
from forwardpass.model import load
from forwardpass.modes.batch import BatchOptions, run_batch
from forwardpass.modes.ray_data import PartScorer, _actor_arguments, _job, part_scored
from tests.modes.conftest import write_table
from tests.user_models import random_forest


def write_records(path: Path, records: list[dict[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def score_part(scorer: PartScorer, start: int, stop: int) -> dict[str, list[dict[str, object]]]:
    batch = {"part": np.array([0]), "start": np.array([start]), "stop": np.array([stop])}
    result: dict[str, list[dict[str, object]]] = orjson.loads(scorer(batch)["result"][0])
    return result


def test_an_actor_loads_a_pickled_model_when_the_job_trusts_pickles(tmp_path: Path):
    """`batch --ray --trust-pickle` left the trust behind: every actor refused the scikit-learn model."""
    forest = random_forest(tmp_path)
    rows = write_records(tmp_path / "rows.csv", forest.records)
    arguments = _actor_arguments(str(forest.artefact), None, rows, BatchOptions(), None, 0.5, trust_pickle=True)
    scored = score_part(PartScorer(**arguments), 0, 3)
    assert not scored["errors"]
    assert [row["label"] for row in scored["rows"]] == forest.predicted[:3]


def test_an_actor_opens_the_repository_model_not_a_folder_of_that_name_where_the_job_started(
    tmp_path: Path, repository: Path, monkeypatch: pytest.MonkeyPatch
):
    """With a repository named, the driver locates the name there; the actors took a same-named folder of the
    working directory instead when there was one."""
    elsewhere = tmp_path / "cwd"
    shutil.copytree(repository / "img_cls", elsewhere / "tab_cls")  # another model under the same name
    monkeypatch.chdir(elsewhere)
    write_table(tmp_path / "t.csv", 3)
    arguments = _actor_arguments("tab_cls", 1, tmp_path / "t.csv", BatchOptions(), repository, 0.5, trust_pickle=False)
    scorer = PartScorer(**arguments)
    assert scorer.model.entry.directory.resolve() == (repository / "tab_cls").resolve()
    assert len(score_part(scorer, 0, 3)["rows"]) == 3


def test_the_driver_counts_the_records_as_the_actors_read_them(tmp_path: Path):
    """A model without config.yaml takes its columns from the model file: the driver counted a CSV of 12 rows for
    the random forest as one record (the declared config has no preprocessing), so the actors scored row 0 alone and
    the job said '1 records: 1 predictions, no errors'."""
    forest = random_forest(tmp_path)
    rows = write_records(tmp_path / "rows.csv", forest.records)
    job, version = _job(str(forest.artefact), rows, tmp_path / "out", BatchOptions(), None, None, trust_pickle=True)
    assert (job.total, version) == (len(forest.records), None)


def test_the_driver_resumes_a_job_a_local_run_started(tmp_path: Path, repository: Path):
    """The job's identity (the model's fingerprint among it) is the same whichever path opened the model: a job
    started locally and resumed with --ray is the same job."""
    write_table(tmp_path / "t.csv", 40)
    options = BatchOptions(part_size=15, output_format="jsonl")
    run_batch(load("tab_cls", repository=repository), tmp_path / "t.csv", tmp_path / "out", options)
    resumed = replace(options, resume=True)
    job, _ = _job("tab_cls", tmp_path / "t.csv", tmp_path / "out", resumed, repository, None, trust_pickle=False)
    with job:
        assert job.output.finished and job.total == 40


def test_an_actor_that_cannot_open_the_input_or_opens_other_files_refuses_the_job_in_one_line(
    tmp_path: Path, repository: Path
):
    """A node without the input (no shared file system) ended `batch --ray` in ~250 lines of Ray tracebacks, exit 1
    (the actor raised as Ray built it); a node whose copy differed scored its own records under the job's ids."""
    table = tmp_path / "t.csv"
    write_table(table, 30)
    job, _ = _job("tab_cls", table, tmp_path / "out", BatchOptions(), repository, None, trust_pickle=False)
    arguments = _actor_arguments("tab_cls", 1, table, BatchOptions(), repository, 0.5, trust_pickle=False)
    batch = {"part": np.array([0]), "start": np.array([0]), "stop": np.array([30])}
    with job:
        assert len(part_scored(PartScorer(**arguments)(batch)["result"][0], job.identity).rows) == 30

        write_table(table, 30, seed=9)  # another node's copy: as many records, other values
        with pytest.raises(InputError, match=r"INPUT's files differ from those the job started with .*shared file"):
            part_scored(PartScorer(**arguments)(batch)["result"][0], job.identity)

        table.unlink()
        with pytest.raises(InputError, match=r"cannot score it, on Ray node .*: input '.*t.csv': no such file"):
            part_scored(PartScorer(**arguments)(batch)["result"][0], job.identity)
