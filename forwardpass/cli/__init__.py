"""The `forwardpass` command. Each subcommand lives in its own module; this one composes them and maps errors.

Errors from forwardpass's own tree become one line on stderr and their exit code (2 for bad input); nothing
the user typed ends in a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version

import typer

from forwardpass.cli.help import polish
from forwardpass.errors import ForwardpassError, InputError

__all__ = ["COMMANDS", "build_app", "main", "versions"]

# Each command and the module that defines it, in --help order. Only the module of the command being run is imported:
# the measurement and precision modules alone take ~0.2 s, which `forwardpass serve`'s start-up should not pay.
COMMANDS = {
    "predict": "predict",
    "models": "models",
    "init": "init",
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
    "  forwardpass init my_model.joblib --trust-pickle -o models/mine   # the config inferred, with why\n\n"
    "  forwardpass eval digits_cnn data/digits/test --top-k 5\n\n"
    "  forwardpass bench mobilenet_v2 --batch-size 1,8\n\n"
    "  forwardpass serve                                    # KServe V2 over HTTP :8000 and gRPC :8001\n\n"
    "  forwardpass convert model.pt -o build/model          # to ONNX, with a parity check\n\n"
    "  forwardpass optimize digits_cnn --precision int8 --calibration data/digits/train\n\n"
    "  forwardpass batch breast_cancer big.csv -o scores/ --resume\n\n"
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


# The libraries whose version changes what a model answers or how fast: reported by `forwardpass --version`.
LIBRARIES = (
    "onnxruntime",
    "numpy",
    "onnx",
    "torch",
    "tensorflow",
    "scikit-learn",
    "transformers",
    "pillow",
    "soundfile",
    "soxr",
)


def _group(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        is_eager=True,
        callback=lambda asked: _print_versions() if asked else None,
        help="Print the versions of forwardpass and its libraries, then exit.",
    ),
) -> None:
    """Run trained models on new data."""


def _print_versions() -> None:
    typer.echo(versions())
    raise typer.Exit()


def versions() -> str:
    """e.g. "forwardpass 0.1.0 (python 3.11.2; onnxruntime 1.22.0, numpy 2.2.6, ...)": installed libraries only."""
    found = []
    for library in LIBRARIES:
        try:
            found.append(f"{library} {installed_version(library)}")
        except PackageNotFoundError:
            continue
    python = ".".join(map(str, sys.version_info[:3]))
    return f"forwardpass {installed_version('forwardpass')} (python {python}; {', '.join(found)})"


def main() -> None:
    if not sys.stdout.isatty():  # rich wraps tables at 80 columns when piped: logs and CI read wider ones better
        os.environ.setdefault("COLUMNS", "160")
    command = typer.main.get_command(build_app(sys.argv[1] if len(sys.argv) > 1 else None))
    polish(command)
    try:
        command()
    except ForwardpassError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.filename is None:  # not a path's fault (a broken pipe, a socket): a defect to show whole
            raise
        # a path given that cannot be written or read: -o under a file, a read-only or full disk, no permission
        typer.secho(f"error: '{exc.filename}': {exc.strerror}; choose another path", fg=typer.colors.RED, err=True)
        sys.exit(InputError.exit_code)
