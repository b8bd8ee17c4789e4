"""Record streams: records arrive one by one (JSONL, CSV rows or lines of text, from a pipe or a growing file) and
each answer is written the moment it is ready, in input order.

    reader thread: lines ──► queue ──► main loop: the oldest record, plus whatever else is already waiting
                                          (never waiting for more) ──► one forward pass ──► one JSON line per record

A lone record is never held back for company: micro-batches form only from records that queued while the previous
forward pass ran, so batching costs no latency at low rates and saves work at high ones. A record that cannot be
parsed or predicted gets an error line of its own and the stream goes on.

Memory stays bounded however much is piped in and however long the stream runs: the queue holds at most a few
batches (the rest waits in the pipe or the file), a line over MAX_LINE_CHARS is skipped to its end and answered with
an error, and latency is summarized over the last LATENCY_WINDOW records.

    {"line": 3, "prediction": {...}}           the record on input line 3 and the model's answer
    {"line": 4, "error": "is not valid JSON"}  a record that failed alone
"""

from __future__ import annotations

import csv
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from forwardpass.config import ModelConfig
from forwardpass.errors import ConfigError, DecodeError, ForwardpassError
from forwardpass.measure.stats import LatencySummary
from forwardpass.model import Model
from forwardpass.modes.sources import (
    NOT_UTF8,
    OPEN_QUOTE,
    TEXT_FIELD,
    csv_reader,
    is_utf8,
    named_twice,
    parse_json_line,
)
from forwardpass.pipeline.kinds import kind_of

__all__ = [
    "FORMATS",
    "LineTooLong",
    "RecordFormat",
    "RecordParser",
    "StreamStats",
    "guess_format",
    "read_lines",
    "run_stream",
]

RecordFormat = Literal["jsonl", "csv", "text"]
FORMATS: tuple[RecordFormat, ...] = ("jsonl", "csv", "text")
FOLLOW_POLL_S = 0.05  # how often a followed file is looked at again once its end is reached
MAX_LINE_CHARS = 8 << 20  # a record's line: far beyond any record, short of a pipe that never sends a newline
QUEUED_BATCHES = 4  # records read ahead of the forward passes: this many batches' worth
LATENCY_WINDOW = 100_000  # the records whose latency the summary describes: the latest


def guess_format(path: Path | None) -> RecordFormat:
    """From the file's suffix; JSONL for stdin and anything unknown."""
    suffix = path.suffix.lower() if path is not None else ""
    if suffix == ".csv":
        return "csv"
    if suffix == ".txt":
        return "text"
    return "jsonl"


class RecordParser:
    """One input line → the raw item `Model.preprocess` takes. CSV's first line is its header, not a record."""

    def __init__(self, record_format: RecordFormat, config: ModelConfig) -> None:
        if record_format not in FORMATS:
            raise ConfigError(f"unknown record format '{record_format}'; use one of {', '.join(FORMATS)}")
        self.format = record_format
        self._text_model = kind_of(config).name == "text"
        self.header: list[str] | None = None
        self._header_problem: str | None = None  # a header naming a column twice: every record's error

    def is_header(self, line: str) -> bool:
        """True for (and consumes) a CSV stream's first line."""
        if self.format != "csv" or self.header is not None:
            return False
        self.header = _csv_fields(line)
        if not self.header:
            raise DecodeError("the first line of a CSV stream must name the columns")
        if twice := named_twice(self.header):
            self._header_problem = f"the header {twice}"
        return True

    def parse(self, line: str) -> object:
        if self.format == "text":
            return line
        if self.format == "csv":
            assert self.header is not None, "is_header() sees the first line"
            if self._header_problem is not None:
                raise DecodeError(self._header_problem)
            fields = _csv_fields(line)
            if len(fields) != len(self.header):
                raise DecodeError(f"has {len(fields)} fields, the header has {len(self.header)}")
            record: object = dict(zip(self.header, fields, strict=True))
        else:
            record = parse_json_line(line)
        if self._text_model and isinstance(record, dict):
            if TEXT_FIELD not in record:
                raise DecodeError(f"a text model's record needs a '{TEXT_FIELD}' field; it has {sorted(record)}")
            return record[TEXT_FIELD]
        return record


def _csv_fields(line: str) -> list[str]:
    try:  # strict: not strict, a quote left open ends with the line, and a record of the fields so far is answered
        return next(csv_reader([line]), [])
    except csv.Error as exc:
        if str(exc) == OPEN_QUOTE:
            raise DecodeError(
                "is not a CSV row: a quote opened on this line is not closed on it (a CSV stream takes one record "
                "per line)"
            ) from None
        raise DecodeError(f"is not a CSV row ({exc})") from None


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line over `read_lines`' limit, skipped unread: it gets an error answer in its place."""

    chars: int


def read_lines(
    file: IO[str],
    follow: threading.Event | None = None,
    *,
    poll_s: float = FOLLOW_POLL_S,
    limit: int = MAX_LINE_CHARS,
) -> Iterator[str | LineTooLong]:
    """The lines of `file`; one over `limit` characters is read to its end without being kept, and given as a
    LineTooLong. With `follow`, a file that keeps growing (`tail -f`): at its end, look again every `poll_s` until
    `follow` is set, and hold a last line still being written until its newline arrives; a followed file cut
    shorter than what was read (log rotation by copytruncate) is read again from its start."""
    partial = ""
    skipped = 0  # characters of an over-long line read so far
    while follow is None or not follow.is_set():
        chunk = file.readline(limit + 1 - len(partial))
        if not chunk:
            if follow is None:
                break
            if _truncated(file):  # what was read is gone: every line now in the file is new
                file.seek(0)
                partial, skipped = "", 0
                continue
            follow.wait(poll_s)
            continue
        if skipped:
            skipped += len(chunk)
            if chunk.endswith("\n"):
                yield LineTooLong(skipped)
                skipped = 0
            continue
        partial += chunk
        if partial.endswith("\n"):
            yield partial
            partial = ""
        elif len(partial) > limit:
            skipped, partial = len(partial), ""
    if follow is None and (skipped or partial):  # the file's last line, without a newline
        yield LineTooLong(skipped) if skipped else partial


def _truncated(file: IO[str]) -> bool:
    """The file is shorter than the position read to (False for what cannot tell: a pipe)."""
    try:
        return os.fstat(file.fileno()).st_size < file.tell()
    except (OSError, ValueError):
        return False


@dataclass
class StreamStats:
    """What `run_stream` did: records answered, errors among them, forward passes and the records they held,
    per-record latency (from reading its line to writing its answer) of the latest LATENCY_WINDOW records."""

    records: int = 0
    errors: int = 0
    batches: int = 0
    batched_records: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    def summary(self) -> str:
        elapsed = (self.finished or time.perf_counter()) - self.started
        rate = self.records / elapsed if elapsed > 0 else 0.0
        line = f"{self.records} records ({self.errors} errors) in {elapsed:.2f} s, {rate:.1f} records/s"
        if self.latencies_s:
            latency = LatencySummary.of(self.latencies_s)
            latest = f" (last {len(self.latencies_s)} records)" if len(self.latencies_s) < self.records else ""
            line += f"; latency ms{latest} p50 {latency.p50_ms:.2f} p99 {latency.p99_ms:.2f} max {latency.max_ms:.2f}"
        if self.batches:
            line += f"; forward passes {self.batches}, mean batch {self.batched_records / self.batches:.2f}"
        return line


@dataclass(slots=True)
class _Record:
    line: int
    text: str | LineTooLong
    arrived: float


def run_stream(
    model: Model,
    lines: Iterable[str | LineTooLong],
    write: Callable[[bytes], None],
    *,
    record_format: RecordFormat = "jsonl",
    max_batch: int | None = None,
    top_k: int | None = None,
    stats: StreamStats | None = None,
) -> StreamStats:
    """Answer every record of `lines` (read in a thread of their own, a few batches ahead) with one JSON line given
    to `write`, in input order, each as soon as its forward pass is done. Returns when `lines` ends; `stats` fills
    in as it goes."""
    if model.config.sequence_batching is not None:
        raise ConfigError(
            f"model '{model.name}' keeps state per sequence: serve it (forwardpass serve) and stream its steps with "
            "sequence ids over gRPC ModelStreamInfer or the WebSocket endpoint"
        )
    stats = stats if stats is not None else StreamStats()
    parser = RecordParser(record_format, model.config)
    limit = max_batch or model.batch_size
    records: queue.Queue[_Record | ForwardpassError | None] = queue.Queue(QUEUED_BATCHES * limit)
    reader = threading.Thread(target=_read, args=(lines, records), name="forwardpass-stream-reader", daemon=True)
    reader.start()
    ended = False
    failure: ForwardpassError | None = None  # the input failed to read: raised once the records before it are answered
    while not ended:
        first = records.get()
        if first is None or isinstance(first, ForwardpassError):
            failure = first
            break
        # Not the server's Batcher: this loop is one thread answering in input order, and never waits for a fuller
        # batch; the forward passes are Model.predict_each's (see forwardpass.scheduler.batches).
        batch = [first]
        while len(batch) < limit:  # only what is already waiting
            try:
                waiting = records.get_nowait()
            except queue.Empty:
                break
            if waiting is None or isinstance(waiting, ForwardpassError):
                ended, failure = True, waiting
                break
            batch.append(waiting)
        _answer(model, parser, batch, write, top_k, stats)
    stats.finished = time.perf_counter()
    if failure is not None:
        raise failure
    return stats


def _read(lines: Iterable[str | LineTooLong], records: queue.Queue[_Record | ForwardpassError | None]) -> None:
    number = 0  # the last line read: the next is where a failure to read came
    try:
        for number, text in enumerate(lines, 1):
            if isinstance(text, LineTooLong):
                records.put(_Record(number, text, time.perf_counter()))
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte order mark (Excel's "CSV UTF-8"), file or stdin
            if text.strip():
                records.put(_Record(number, text.rstrip("\r\n"), time.perf_counter()))
    except OSError as exc:  # not the input's end: the stream must not end as if it were
        records.put(ForwardpassError(f"cannot read line {number + 1} of the input ({exc.strerror or exc})"))
    finally:
        records.put(None)


def _answer(
    model: Model,
    parser: RecordParser,
    batch: list[_Record],
    write: Callable[[bytes], None],
    top_k: int | None,
    stats: StreamStats,
) -> None:
    outcomes: dict[int, Any] = {}
    raws: dict[int, object] = {}
    for index, record in enumerate(batch):
        if isinstance(record.text, LineTooLong):
            outcomes[index] = DecodeError(
                f"is {record.text.chars} characters long, over the {MAX_LINE_CHARS} a line may be"
            )
            continue
        try:
            if not is_utf8(record.text):  # bytes read escaped (as the CLI reads FILE and stdin): no model takes them
                raise DecodeError(NOT_UTF8)
            if parser.is_header(record.text):
                continue
            raws[index] = parser.parse(record.text)
        except ForwardpassError as exc:
            outcomes[index] = exc
    if raws:
        stats.batches += 1
        stats.batched_records += len(raws)
        for index, outcome in zip(raws, model.predict_each(list(raws.values()), top_k=top_k), strict=True):
            outcomes[index] = outcome
    for index, record in enumerate(batch):
        if index not in outcomes:
            continue  # the CSV header
        outcome = outcomes[index]
        if isinstance(outcome, ForwardpassError):
            stats.errors += 1
            answer: dict[str, Any] = {"line": record.line, "error": str(outcome)}
        else:
            answer = {"line": record.line, "prediction": outcome}
        write(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE))
        stats.records += 1
        stats.latencies_s.append(time.perf_counter() - record.arrived)
