"""The measurement commands: `eval` (accuracy), `bench` (speed) and `compare` (saved reports side by side)."""

from __future__ import annotations

import typer

from forwardpass.cli import bench, compare, evaluate

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    for module in (evaluate, bench, compare):
        module.register(app)
