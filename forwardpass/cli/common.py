"""The CLI's one vocabulary: each meaning has one option name and one short letter in every subcommand.

`tests/cli/test_vocabulary.py` walks every subcommand and fails on a synonym (`--out` beside `--output`, `-f` for
two meanings, ...). Options whose help differs per command are factories; the others are shared objects.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from forwardpass.ensemble import find_pipeline
from forwardpass.errors import InputError
from forwardpass.model import Model, load

__all__ = [
    "AS_JSON",
    "REPOSITORY",
    "SERVE",
    "TRUST_PICKLE",
    "VERSION",
    "VOCABULARY",
    "Terminated",
    "at_least_one",
    "batch_size_option",
    "format_option",
    "make_output_folder",
    "model_argument",
    "open_model",
    "output_option",
    "stop_on_sigterm",
    "top_k_option",
]

# long name -> its short letter (None: deliberately none), for every option that several subcommands share
VOCABULARY: dict[str, str | None] = {
    "--output": "-o",
    "--top-k": "-k",
    "--format": "-f",
    "--batch-size": "-b",
    "--repository": "-r",
    "--version": "-v",
    "--precision": "-p",
    "--model": "-m",
    "--threads": None,
    "--trust-pickle": None,
    "--json": None,
}

REPOSITORY = typer.Option(
    None,
    "--repository",
    "-r",
    metavar="DIR",
    help="Model repository folder (default: $FORWARDPASS_REPOSITORY, else the bundled models/).",
    show_default=False,
)
VERSION = typer.Option(
    None, "--version", "-v", metavar="N", help="Model version (default: the highest).", show_default=False
)
SERVE = typer.Option(
    None,
    "--serve",
    metavar="MODE",
    help=(
        "Non-ONNX models: 'native' (their framework), 'onnx' (converted once, parity-checked) or 'auto' (the faster "
        "of the two that passes parity). Default: the config's source.serve, else auto."
    ),
    show_default=False,
)
TRUST_PICKLE = typer.Option(
    False,
    "--trust-pickle",
    envvar="FORWARDPASS_TRUST_PICKLE",
    help=(
        "Let pickled models (scikit-learn, joblib) load: unpickling runs code from the file"
        " (env FORWARDPASS_TRUST_PICKLE)."
    ),
    show_default=False,
)
AS_JSON = typer.Option(False, "--json", help="Print JSON instead of tables, for scripts.")


def model_argument(help: str = "A model name in the repository, a model folder, or a model file.") -> Any:
    return typer.Argument(..., metavar="MODEL", help=help, show_default=False)


def output_option(help: str, *, required: bool = False) -> Any:
    """Where a command writes what it makes: a folder or a file, always -o/--output."""
    return typer.Option(... if required else None, "--output", "-o", metavar="PATH", help=help, show_default=False)


def make_output_folder(path: Path) -> None:
    """-o's folder, made before the work that fills it: one that cannot be made is refused before a long run, not
    after it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create OUTPUT '{path}' ({exc.strerror}); choose a folder you can write to") from None


def top_k_option(help: str = "Classes to list per prediction, at least 1 (default: the config's top_k).") -> Any:
    return typer.Option(None, "--top-k", "-k", metavar="K", help=help, show_default=False)


def format_option(default: str | None, help: str) -> Any:
    return typer.Option(default, "--format", "-f", metavar="FORMAT", help=help, show_default=default is not None)


def batch_size_option(help: str = "Items per forward pass (default: the model's max_batch_size).") -> Any:
    return typer.Option(None, "--batch-size", "-b", metavar="N", help=help, show_default=False)


def at_least_one(**options: int | None) -> None:
    """Refuses, in one line, a count option below 1 (given as `top_k=...`, named `--top-k` in the message)."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def open_model(
    model: str,
    repository: Path | None,
    version: int | None,
    *,
    serve: str | None = None,
    trust_pickle: bool = False,
    **engine_options: Any,
) -> Model:
    """A model file, a model folder, or a name in the repository; options override the config's `engine:`. A
    pipeline of models is refused naming the commands that run one (the API's load_pipeline is no help here)."""
    if find_pipeline(model, repository) is not None:
        raise InputError(
            f"'{model}' is a pipeline of models and this command takes one model; "
            f"forwardpass predict {model} and forwardpass serve run pipelines"
        )
    loaded = load(
        model,
        repository=repository,
        version=version,
        serve=serve,  # type: ignore[arg-type]  # load() refuses a mode it does not know, naming the choices
        trust_pickle=trust_pickle,
        **engine_options,
    )
    loaded.check_audit_log()  # refused once, before any record is scored, not on every decision
    return loaded


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt: a command stopped by a scheduler, `timeout` or
    Kubernetes keeps what it finished and says how to go on, as after Ctrl-C."""

    exit_code = 128 + signal.SIGTERM  # the shell's code for a command ended by SIGTERM


def stop_on_sigterm() -> None:
    """From here on SIGTERM raises `Terminated` in the main thread (its default ends the process in silence)."""
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated
