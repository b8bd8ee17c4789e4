"""What `eval`, `bench` and `compare` share: list options, the progress display (a line now and then in a log),
JSON on stdout."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from forwardpass.errors import InputError

__all__ = ["float_list", "int_list", "ms", "print_json", "progress", "text_list"]


def text_list(text: str, option: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise InputError(f"{option}: expected a comma-separated list; got '{text}'")
    return values


def int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InputError(f"{option}: expected comma-separated positive integers such as 1,8; got '{text}'")
    return values


def float_list(text: str, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise InputError(f"{option}: expected comma-separated positive numbers such as 100,500; got '{text}'")
    return values


class RateColumn(ProgressColumn):
    """Items per second, e.g. "1,250 records/s" (rich's own speed column counts bytes)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="progress.data.speed")


# Without a terminal (a log file, CI, a container's output), how often a long run says how far it got.
LOG_EVERY_S = 30.0


def progress(*, items: str | None = None, log_every_s: float = LOG_EVERY_S) -> Progress:
    """On stderr, so that stdout holds only the result (a table or JSON); gone once done. With `items` (the unit:
    "records", "images"): count done of all, rate and time left; else percent of time. When stderr is not a
    terminal: one plain line every `log_every_s` instead of a redrawn bar."""
    console = Console(stderr=True)
    if not console.is_terminal:
        return LoggedProgress(console, items, log_every_s)
    counts: list[ProgressColumn] = [MofNCompleteColumn(), RateColumn(items)] if items else []
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *(counts or [TextColumn("{task.percentage:>3.0f}%")]),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


class LoggedProgress(Progress):
    """rich's task bookkeeping (counts, rate, time left) without its display: a line such as "scoring: 1,200 of
    5,000 records (24%), 310 records/s, 0:00:12 left" at most every `log_every_s`, as the run moves."""

    def __init__(self, console: Console, items: str | None, log_every_s: float) -> None:
        super().__init__(console=console, disable=True)
        self._items = items
        self._every_s = log_every_s
        self._logged_at = time.monotonic()

    def update(self, task_id: TaskID, **changes: Any) -> None:
        super().update(task_id, **changes)
        self._log()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log()

    def _log(self) -> None:
        now = time.monotonic()
        if now - self._logged_at < self._every_s:
            return
        self._logged_at = now
        for task in self.tasks:
            if not task.finished:
                self.console.print(self._line(task), markup=False, highlight=False, soft_wrap=True)

    def _line(self, task: Task) -> str:
        unit = f" {self._items}" if self._items else ""
        done = (
            f"{task.completed:,.0f}{unit}"
            if task.total is None
            else f"{task.completed:,.0f} of {task.total:,.0f}{unit}"
        )
        parts = [f"{task.description}: {done}" + (f" ({task.percentage:.0f}%)" if task.total else "")]
        if self._items and task.speed:
            parts.append(f"{task.speed:,.0f}{unit}/s")
        if task.time_remaining is not None:
            parts.append(f"{timedelta(seconds=round(task.time_remaining))} left")
        return ", ".join(parts)


def print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.4f}"
