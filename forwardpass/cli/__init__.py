"""The `forwardpass` command. Each subcommand lives in its own module; this one composes them and maps errors.

Errors from forwardpass's own tree become one line on stderr and their exit code (2 for bad input); nothing
the user typed ends in a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from forwardpass.errors import ForwardpassError

__all__ = ["COMMANDS", "build_app", "main"]

# Each command and the module that defines it, in --help order. Only the module of the command being run is imported:
# the measurement and precision modules alone take ~0.2 s, which `forwardpass serve`'s start-up should not pay.
COMMANDS = {
    "predict": "predict",
    "models": "models",
    "eval": "measure",
    "bench": "measure",
    "compare": "measure",
    "serve": "serve",
    "convert": "convert",
    "optimize": "optimize",
    "batch": "batch",
    "audit": "audit",
    "drift": "drift",
    "generate": "generate",
    "stream": "stream",
}
HELP = (
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
)


def build_app(command: str | None = None) -> typer.Typer:
    """The CLI with `command`'s module registered (every module when `command` is None or not a command)."""
    app = typer.Typer(
        name="forwardpass",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )
    app.callback()(_group)  # keeps `forwardpass COMMAND` a subcommand even when only one command is registered
    modules = [COMMANDS[command]] if command in COMMANDS else COMMANDS.values()
    for module in dict.fromkeys(modules):
        importlib.import_module(f"forwardpass.cli.{module}").register(app)
    return app


def _group() -> None:
    """Run trained models on new data."""


def main() -> None:
    if not sys.stdout.isatty():  # rich wraps tables at 80 columns when piped: logs and CI read wider ones better
        os.environ.setdefault("COLUMNS", "160")
    try:
        build_app(sys.argv[1] if len(sys.argv) > 1 else None)()
    except ForwardpassError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
