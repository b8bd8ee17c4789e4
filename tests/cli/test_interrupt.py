"""Ctrl-C (SIGINT) in a long job: it says what was done and how to go on, and keeps what was finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import FORWARDPASS

POLL_S = 0.02


def _start(repository: Path, *args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "FORWARDPASS_REPOSITORY": str(repository), "NO_COLOR": "1"}
    command = [FORWARDPASS, *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _parts_done(manifest: Path) -> int:
    try:
        return len(json.loads(manifest.read_text())["parts"])
    except (OSError, ValueError, KeyError):  # not written yet
        return 0


def _interrupt(process: subprocess.Popen[str], signum: int = signal.SIGINT) -> tuple[str, str]:
    assert process.poll() is None, "the job ended before it could be interrupted: make it longer"
    process.send_signal(signum)
    return process.communicate(timeout=60)


# SIGTERM: what a scheduler, `timeout` or Kubernetes sends; it ended the job in silence (exit 143, no resume command)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_batch_says_how_far_it_got_and_resume_takes_the_jobs_options(
    repository: Path, tmp_path: Path, signum: int
) -> None:
    table = tmp_path / "big.csv"
    table.write_text("a,b,c\n" + "0.5,-1,2\n" * 100_000, encoding="utf-8")
    out = tmp_path / "out"
    job = _start(repository, "batch", "tab_cls", table, "-o", out, "--part-size", "1000", "--format", "csv")
    deadline = time.monotonic() + 60
    while _parts_done(out / "_manifest.json") < 1 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    _, stderr = _interrupt(job, signum)
    assert job.returncode == 128 + signum, stderr
    assert "of 100000 records saved in" in stderr and "--resume" in stderr and "Traceback" not in stderr
    again = stderr.strip().splitlines()[-1].split()  # the command it printed, as typed
    assert again[:3] == ["forwardpass", "batch", "tab_cls"] and again[-1] == "--resume"

    resumed = _start(repository, "batch", "tab_cls", table, "-o", out, "--resume")  # no --part-size, no --format
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "100000 records" in stdout and "done before resuming" in stdout
    assert sorted({path.suffix for path in out.glob("part-*")}) == [".csv"]


def test_bench_keeps_the_configurations_finished(repository: Path, tmp_path: Path) -> None:
    sizes = ",".join(str(n) for n in range(1, 33))  # up to vec_raw's max_batch_size (32, inferred)
    out = tmp_path / "bench"
    run = _start(repository, "bench", "vec_raw", "-b", sizes, "--duration", "0.2", "--warmup", "0", "-o", out)
    assert run.stderr is not None
    while not (line := run.stderr.readline()).startswith("measured "):  # a configuration is finished
        assert line, "bench ended before measuring anything"
    _, stderr = _interrupt(run)
    assert run.returncode == 130, stderr
    assert "configurations finished before Ctrl-C; saved in" in stderr
    report = json.loads((out / "report.json").read_text())
    assert 1 <= len(report["results"]) < 32, stderr
    assert report["interrupted"].endswith("of 32 configurations")
    assert "Interrupted (Ctrl-C)" in (out / "report.md").read_text()
