"""The progress display when stderr is a log, not a terminal (CI, a container, `2> run.log`): a plain line now and
then instead of nothing until the summary."""

from __future__ import annotations

import pytest

from forwardpass.cli.reporting import progress


def test_without_a_terminal_a_long_run_says_how_far_it_got_in_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(items="records", log_every_s=0) as bar:
        task = bar.add_task("scoring", total=None)
        bar.update(task, completed=5)  # before the total is known
        bar.update(task, completed=50, total=200)
        bar.update(task, completed=120, total=200)  # two counts at this total: a rate and the time left
        bar.advance(task, 80)  # finished: the summary that follows says the rest
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["scoring: 5 records", "scoring: 50 of 200 records (25%)"]
    assert lines[2].startswith("scoring: 120 of 200 records (60%), ")
    assert lines[2].endswith(" left") and " records/s, " in lines[2]
    assert len(lines) == 3
    assert "\x1b" not in "".join(lines)


def test_the_lines_come_at_most_every_interval(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(items="images", log_every_s=3600) as bar:
        task = bar.add_task("eval", total=10)
        for _ in range(9):
            bar.advance(task)
    assert capsys.readouterr().err == ""
