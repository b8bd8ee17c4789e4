"""Options shared by several subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from forwardpass.model import Model, load

__all__ = ["REPOSITORY", "SERVE", "TRUST_PICKLE", "VERSION", "open_model"]

REPOSITORY = typer.Option(
    None,
    "--repository",
    "-r",
    help="Model repository folder (default: $FORWARDPASS_REPOSITORY, else the bundled models/).",
    show_default=False,
)
VERSION = typer.Option(None, "--version", "-v", help="Model version (default: the highest).", show_default=False)
SERVE = typer.Option(
    None,
    "--serve",
    help=(
        "Non-ONNX models: 'native' (their framework), 'onnx' (converted once, parity-checked) or 'auto' (the faster "
        "of the two that passes parity). Default: the config's source.serve, else auto."
    ),
    show_default=False,
)
TRUST_PICKLE = typer.Option(
    False, "--trust-pickle", help="Let pickled models (scikit-learn, joblib) load: unpickling runs code from the file."
)


def open_model(
    model: str,
    repository: Path | None,
    version: int | None,
    *,
    serve: str | None = None,
    trust_pickle: bool = False,
    **engine_options: Any,
) -> Model:
    """A model file, a model folder, or a name in the repository; options override the config's `engine:`."""
    return load(
        model,
        repository=repository,
        version=version,
        serve=serve,  # type: ignore[arg-type]  # load() refuses a mode it does not know, naming the choices
        trust_pickle=trust_pickle,
        **engine_options,
    )
