"""`forwardpass compare`: saved eval or bench reports side by side."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markdown import Markdown

from forwardpass.cli.common import output_option
from forwardpass.errors import InputError
from forwardpass.measure.report import compare_reports, load_report

__all__ = ["compare_command", "register"]


def compare_command(
    reports: list[Path] = typer.Argument(
        ..., metavar="REPORT", help="report.json files, or the --output folders that hold them.", show_default=False
    ),
    out: Path | None = output_option("Folder for compare.json, compare.md and compare.png."),
) -> None:
    """Set several saved reports (all from `eval`, or all from `bench`) side by side: one table, one plot.

    Each column is a report, named by its folder (or file); each row a figure: throughput per configuration for
    bench reports, accuracy figures for eval reports.

    Examples:

      forwardpass compare reports/fp32 reports/int8

      forwardpass compare runs/monday/report.json runs/tuesday/report.json -o reports/compare
    """
    if len(reports) < 2:
        raise InputError("compare needs at least two reports")
    named = [(_name(path), load_report(path)) for path in reports]
    markdown, written = compare_reports(named, out)
    console = Console()
    console.print(Markdown(markdown.split("\n![", 1)[0]))
    if written:
        console.print(f"written: {', '.join(str(path) for path in written)}", highlight=False)


def _name(path: Path) -> str:
    return path.name if path.is_dir() or path.name != "report.json" else path.parent.name


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
