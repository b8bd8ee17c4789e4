"""The `forwardpass` command. Each subcommand lives in its own module; this one composes them and maps errors.

Errors from forwardpass's own tree become one line on stderr and their exit code (2 for bad input); nothing
the user typed ends in a traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from forwardpass.cli import audit, batch, convert, drift, generate, measure, models, optimize, predict, serve, stream
from forwardpass.errors import ForwardpassError

__all__ = ["app", "main"]

app = typer.Typer(
    name="forwardpass",
    help=(
        "Run trained models on new data: load, preprocess, forward pass, postprocess, measure.\n\n"
        "Examples:\n\n"
        "  forwardpass models                                   # what the bundled repository holds\n\n"
        "  forwardpass predict mobilenet_v2 samples/images/china.jpg\n\n"
        "  forwardpass predict diabetes samples/records/diabetes.json --json\n\n"
        "  forwardpass eval digits_cnn data/digits/test --top-k 1,5\n\n"
        "  forwardpass bench mobilenet_v2 --batch-sizes 1,8\n\n"
        "  forwardpass serve                                    # KServe V2 over HTTP :8000 and gRPC :8001\n\n"
        "  forwardpass convert model.pt -o build/model          # to ONNX, with a parity check\n\n"
        "  forwardpass optimize digits_cnn --precision int8 --calibration data/digits/test\n\n"
        "  forwardpass batch breast_cancer big.csv scores/ --resume\n\n"
        "  forwardpass stream diabetes data/diabetes/test.csv\n\n"
        "Every command's --help has its own examples."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
for module in (predict, models, measure, serve, convert, optimize, batch, audit, drift, generate, stream):
    module.register(app)


def main() -> None:
    if not sys.stdout.isatty():  # rich wraps tables at 80 columns when piped: logs and CI read wider ones better
        os.environ.setdefault("COLUMNS", "160")
    try:
        app()
    except ForwardpassError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
