"""What `eval`, `bench` and `compare` share: list options, the progress display, JSON on stdout."""

from __future__ import annotations

import sys

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
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


def progress(*, items: str | None = None) -> Progress:
    """On stderr, so that stdout holds only the result (a table or JSON); gone once done; off when not a terminal.
    With `items` (the unit: "records", "images"): count done of all, rate and time left; else percent of time."""
    console = Console(stderr=True)
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
        disable=not console.is_terminal,
    )


def print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.4f}"
