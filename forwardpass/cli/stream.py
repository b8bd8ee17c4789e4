"""`forwardpass stream`: online inference over a stream of records (stdin or a growing file), one answer per line."""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path
from typing import TextIO

import typer

from forwardpass.cli.common import (
    REPOSITORY,
    TRUST_PICKLE,
    VERSION,
    at_least_one,
    batch_size_option,
    format_option,
    model_argument,
    open_model,
    stop_on_sigterm,
    top_k_option,
)
from forwardpass.errors import InputError, NotFoundError
from forwardpass.modes.stream import FORMATS, RecordFormat, StreamStats, guess_format, read_lines, run_stream

__all__ = ["register"]


def stream(
    model: str = model_argument(),
    source: Path | None = typer.Argument(
        None, metavar="FILE", help="File of records (default: stdin).", show_default=False
    ),
    follow: bool = typer.Option(
        False, "--follow", help="Keep reading FILE as it grows (like tail -f) until Ctrl-C or SIGTERM."
    ),
    record_format: str | None = format_option(
        None,
        "jsonl (a JSON value per line), csv (header line, then rows) or text (each line is one input). "
        "Default: from FILE's suffix (.csv, .txt), else jsonl.",
    ),
    max_batch: int | None = batch_size_option(
        "Most records per forward pass, formed only from records already waiting (default: the model's)."
    ),
    top_k: int | None = top_k_option("Classes per answer (classifiers)."),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
    trust_pickle: bool = TRUST_PICKLE,
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
    at_least_one(batch_size=max_batch, top_k=top_k)
    chosen = _record_format(record_format, source)
    if follow and source is None:
        raise InputError("--follow needs a file to follow: forwardpass stream MODEL FILE --follow")
    loaded = open_model(model, repository, version, trust_pickle=trust_pickle)
    stop = threading.Event()
    stats = StreamStats()
    out = sys.stdout.buffer

    def write(line: bytes) -> None:
        out.write(line)
        out.flush()

    if source is None and isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(encoding="utf-8", errors="surrogateescape")  # as `_open`'s, whatever the locale
    file = sys.stdin if source is None else _open(source)
    stop_on_sigterm()
    try:
        run_stream(
            loaded,
            read_lines(file, stop if follow else None),
            write,
            record_format=chosen,
            max_batch=max_batch,
            top_k=top_k,
            stats=stats,
        )
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
    """A byte that is not UTF-8 is read escaped: its line gets an error answer (`run_stream`), where a strict
    decoder ended the reader, and with it the stream, at the block that held one."""
    try:
        return source.open(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {source}") from None
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror}") from None


def register(app: typer.Typer) -> None:
    app.command()(stream)
