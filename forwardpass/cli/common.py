"""Options shared by several subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from forwardpass.model import Model, load

__all__ = ["REPOSITORY", "VERSION", "open_model"]

REPOSITORY = typer.Option(
    None,
    "--repository",
    "-r",
    help="Model repository folder (default: $FORWARDPASS_REPOSITORY, else the bundled models/).",
    show_default=False,
)
VERSION = typer.Option(None, "--version", "-v", help="Model version (default: the highest).", show_default=False)


def open_model(model: str, repository: Path | None, version: int | None, **engine_options: Any) -> Model:
    """A model file, a model folder, or a name in the repository; options override the config's `engine:`."""
    return load(model, repository=repository, version=version, **engine_options)
