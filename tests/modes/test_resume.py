"""Exactly-once under SIGKILL, and bounded memory: real `forwardpass batch` processes, killed and measured."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import forwardpass
from forwardpass.modes.batch import BatchOptions, run_batch
from forwardpass.modes.sinks import ERRORS_FILE, MANIFEST_FILE

from .conftest import write_table
from .test_batch import read_errors, read_rows

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
POLL_S = 0.005


def start(repository: Path, data: Path, output: Path, *options: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FORWARDPASS_REPOSITORY": str(repository)}
    command = [FORWARDPASS, "batch", "tab_cls", str(data), "-o", str(output), *options]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def parts_done(output: Path) -> int:
    try:
        return len(json.loads((output / MANIFEST_FILE).read_bytes())["parts"])
    except (OSError, ValueError):  # not written yet
        return 0


def kill_after(process: subprocess.Popen[bytes], output: Path, parts: int, extra_s: float) -> bool:
    """SIGKILL once the manifest names `parts` parts, plus `extra_s` (into the next part's decoding, forward pass or
    file writes); False if the job ended first."""
    while parts_done(output) < parts:
        if process.poll() is not None:
            return False
        time.sleep(POLL_S)  # the manifest file is the only event the job shows
    time.sleep(extra_s)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return True


def test_sigkill_at_random_points_then_resume_gives_every_id_exactly_once(repository: Path, tmp_path: Path):
    table = tmp_path / "records.csv"
    write_table(table, 12_000, seed=5, bad_every=101)
    reference = tmp_path / "reference"
    run_batch(forwardpass.load("tab_cls", repository=repository), table, reference, BatchOptions(part_size=150))

    output = tmp_path / "killed"
    options = ("--part-size", "150", "--max-errors", "-1")
    rng = random.Random(8)
    kills = 0
    for target in sorted(rng.sample(range(1, 70), 4)):
        with start(repository, table, output, *options, *(("--resume",) if kills else ())) as process:
            if kill_after(process, output, target, rng.uniform(0.0, 0.03)):
                kills += 1
            else:
                assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    assert kills >= 3, "the job finished before it could be killed: make the input larger"
    with start(repository, table, output, *options, "--resume") as finished:
        assert finished.wait(timeout=120) == 0, finished.stderr.read() if finished.stderr else ""

    rows = read_rows(output)
    ids = [row["id"] for row in rows] + list(read_errors(output))
    assert len(ids) == len(set(ids)) == 12_000
    assert rows == read_rows(reference)
    assert (output / ERRORS_FILE).read_bytes() == (reference / ERRORS_FILE).read_bytes()
    assert not [p.name for p in output.iterdir() if p.name.startswith(".")]  # no temp file left behind


def peak_rss_kib(repository: Path, table: Path, output: Path) -> int:
    """The job's own peak resident memory, from the kernel's accounting of that one child (wait4)."""
    with start(repository, table, output, "--part-size", "500") as process:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    return usage.ru_maxrss


@pytest.mark.timeout(300)
def test_memory_stays_bounded_with_an_input_20_times_larger(repository: Path, tmp_path: Path):
    # a wide unused column makes the input big: holding it (or its results) in memory would show at once
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    write_table(small, 2_000, seed=6, note_bytes=4_000)
    write_table(large, 40_000, seed=6, note_bytes=4_000)
    assert large.stat().st_size > 150 * 2**20  # far more than the 1.5x bound leaves room for
    small_kib = peak_rss_kib(repository, small, tmp_path / "small")
    large_kib = peak_rss_kib(repository, large, tmp_path / "large")
    print(f"peak RSS: {small_kib} KiB (2,000 records), {large_kib} KiB (40,000)")
    assert large_kib <= 1.5 * small_kib, f"peak RSS {small_kib} KiB for 2,000 records, {large_kib} KiB for 40,000"
