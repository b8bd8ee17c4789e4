"""`forwardpass stream`: online inference over a stream of records (stdin or a growing file), one answer per line."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import TextIO

import typer

from forwardpass.cli.common import REPOSITORY, VERSION, open_model
from forwardpass.errors import InputError, NotFoundError
from forwardpass.modes.stream import FORMATS, RecordFormat, StreamStats, follow_lines, guess_format, run_stream

__all__ = ["register"]


def stream(
    model: str = typer.Argument(..., help="Model name in the repository, model folder, or model file."),
    source: Path | None = typer.Argument(None, help="File of records (default: stdin).", show_default=False),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep reading SOURCE as it grows (like tail -f) until Ctrl-C or SIGTERM."
    ),
    record_format: str | None = typer.Option(
        None,
        "--format",
        help="jsonl (a JSON value per line), csv (header line, then rows) or text (each line is one input). "
        "Default: from SOURCE's suffix (.csv, .txt), else jsonl.",
        show_default=False,
    ),
    max_batch: int | None = typer.Option(
        None,
        "--max-batch",
        min=1,
        help="Most records per forward pass, formed only from records already waiting (default: the model's).",
        show_default=False,
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", min=1, help="Classes per answer (classifiers).", show_default=False
    ),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
) -> None:
    """Answer records as they arrive: one JSON line per record on stdout, in input order, each written as soon as
    its forward pass is done; a bad record gets an error line and the stream goes on. Records that queue while a
    forward pass runs share the next one; a lone record never waits. Rate and latency go to stderr at the end.

    Examples:

      tail -f events.jsonl | forwardpass stream breast_cancer

      forwardpass stream diabetes data/diabetes/test.csv

      forwardpass stream diabetes incoming.jsonl --follow

      head -4 data/diabetes/test.csv | forwardpass stream diabetes --format csv

      cat sentences.txt | forwardpass stream minilm --format text
    """
    chosen = _record_format(record_format, source)
    if follow and source is None:
        raise InputError("--follow needs a file to follow: forwardpass stream MODEL FILE --follow")
    loaded = open_model(model, repository, version)
    stop = threading.Event()
    stats = StreamStats()
    out = sys.stdout.buffer

    def write(line: bytes) -> None:
        out.write(line)
        out.flush()

    file = sys.stdin if source is None else _open(source)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        lines: Iterable[str] = follow_lines(file, stop) if follow else file
        run_stream(loaded, lines, write, record_format=chosen, max_batch=max_batch, top_k=top_k, stats=stats)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the way a followed stream ends
        stop.set()
    except BrokenPipeError:  # the reader of our output went away: nobody left to answer
        stop.set()
        sys.stdout = None  # keeps Python from flushing the dead pipe at exit
    finally:
        if source is not None:
            file.close()
        loaded.close()
        typer.echo(f"forwardpass stream: {stats.summary()}", err=True)


def _record_format(given: str | None, source: Path | None) -> RecordFormat:
    if given is None:
        return guess_format(source)
    for known in FORMATS:
        if given == known:
            return known
    raise InputError(f"--format '{given}' is not a record format; use one of {', '.join(FORMATS)}")


def _open(source: Path) -> TextIO:
    try:
        return source.open(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {source}") from None
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror}") from None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    app.command()(stream)
