"""Batch jobs: a folder or table of inputs → one prediction (or one error) per record, in part files, resumable.

The input is read as a stream and cut into parts of `part_size` records (part k holds records [k·size, (k+1)·size)).
The next part is read on a thread of its own; each part is decoded by a small thread pool while the previous batch
runs its forward pass (ONNX Runtime and Pillow release the GIL), then written atomically and recorded in the
output's manifest (`sinks.Output`). Memory is bounded by two parts, whatever the input's size. A killed job,
resumed, skips the parts the manifest names and computes the rest: every record ends up exactly once in the output
or the errors file.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from forwardpass.errors import ForwardpassError, InputError
from forwardpass.model import Model
from forwardpass.modes.sinks import ERRORS_FILE, Output, PartDone
from forwardpass.modes.sources import Item, Source, files_fingerprint, open_source, utf8_text
from forwardpass.pipeline import Arrays

if TYPE_CHECKING:  # sqlite and the audit log: imported by the models that decide
    from forwardpass.decisions import AuditLog

__all__ = [
    "BatchOptions",
    "Job",
    "Part",
    "Progress",
    "Scored",
    "Scorer",
    "Summary",
    "error_row",
    "job_identity",
    "model_fingerprint",
    "parts",
    "run_batch",
]

Row = dict[str, Any]
Progress = Callable[[int, int], None]  # (records done, records in all)


@dataclass(frozen=True)
class BatchOptions:
    output_format: str = "parquet"
    batch_size: int | None = None  # items per forward pass; None: the model's
    part_size: int = 2048  # records per part file (and per manifest entry)
    max_errors: int | None = 1000  # the job stops (resumably) once more records than this failed; None: no limit
    top_k: int | None = None
    workers: int = 2  # decoding threads
    resume: bool = False
    drop: tuple[str, ...] = ()  # table columns left out of the records (a label, an id)


@dataclass(frozen=True)
class Summary:
    records: int  # in the input
    rows: int  # predictions in the output
    errors: int  # bad records in the errors file
    computed: int  # records this run computed (the others were done before it resumed)
    seconds: float
    output: Path

    @property
    def per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        errors = f", {self.errors} errors (see {self.output / ERRORS_FILE})" if self.errors else ", no errors"
        resumed = f" ({self.records - self.computed} done before resuming)" if self.computed < self.records else ""
        return (
            f"{self.records} records{resumed}: {self.rows} predictions{errors}; "
            f"{self.computed} in {self.seconds:.1f} s ({self.per_second:.1f} records/s) -> {self.output}"
        )


def job_identity(model: Model, input_path: Path, source: Source, records: int, options: BatchOptions) -> dict[str, Any]:
    """What makes two runs the same job: a resume must match it (else results of two jobs would mix). The record
    count guards the numbering: an input that gained or lost records would shift every later part; the input's and
    the model's fingerprints guard the results: a record edited in place, or a model retrained into the same
    version folder, would give parts that disagree with the parts done."""
    return {
        "model": model.name,
        "version": model.version,
        "model_fingerprint": model_fingerprint(model),
        "input": str(input_path.resolve()),
        "input_fingerprint": source.fingerprint(),
        "records": records,
        "format": options.output_format,
        "part_size": options.part_size,
        "top_k": options.top_k,
        "drop": sorted(options.drop) or None,  # None: as a manifest written before --drop existed
    }


def model_fingerprint(model: Model) -> str:
    """The config as completed at load (but its engine settings), and the model's file (or folder of files): sizes
    and modification times."""
    # engine: settings of speed (threads, providers), not of results
    config = model.config.model_dump(mode="json", exclude={"engine"})
    artefact = model.entry.artefact
    files = sorted(path for path in artefact.rglob("*") if path.is_file()) if artefact.is_dir() else [artefact]
    digest = hashlib.blake2s(orjson.dumps(config, option=orjson.OPT_SORT_KEYS))
    digest.update(files_fingerprint(files, artefact).encode())
    return digest.hexdigest()


def error_row(item_id: str, error: ForwardpassError) -> Row:
    return {"id": item_id, "error": utf8_text(str(error)), "type": type(error).__name__}  # it may name the file


Part = tuple[int, int, list[Item]]  # (part index, index of its first record, its records)


def parts(items: Iterable[Item], part_size: int) -> Iterator[Part]:
    """The input's parts, in order. The next part is read on a thread of its own while this one is scored, so
    reading (a .npy's rows, a table's parsing) overlaps the forward pass; two parts at most are held."""
    stream = iter(items)

    def read(index: int) -> Part | None:
        chunk = list(itertools.islice(stream, part_size))
        return (index, index * part_size, chunk) if chunk else None

    with ThreadPoolExecutor(1, thread_name_prefix="forwardpass-read") as reader:
        ahead = reader.submit(read, 0)
        while (part := ahead.result()) is not None:
            ahead = reader.submit(read, part[0] + 1)
            yield part


@dataclass(frozen=True)
class Scored:
    """A part's records scored: output rows, error rows, and the audit rows of its decisions (models with a
    decision rule), which the job records with the part (`Job.commit`)."""

    rows: list[Row]
    errors: list[Row]
    audit: Sequence[Sequence[str]]


class Scorer:
    """Records → `Scored`: decoding on `workers` threads, a few batches ahead of the forward pass."""

    def __init__(self, model: Model, *, batch_size: int | None = None, top_k: int | None = None, workers: int = 2):
        # the job owns this Model: its forward passes take this many items, and its decisions wait for their part
        if model.batchable and batch_size:
            model.batch_size = batch_size
        if model.audit is not None:
            model.audit.held = []
        self.model = model
        self.top_k = top_k
        self.workers = max(1, workers)
        self._version = "" if model.version is None else str(model.version)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="forwardpass-decode")

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        if self.model.audit is not None:  # the model's predictions after the job record their decisions again
            self.model.audit.held = None

    def score(self, items: Iterable[Item], on_batch: Callable[[int], None] | None = None) -> Scored:
        """`on_batch(n)` after each forward pass of n records: progress finer than a part."""
        rows: list[Row] = []
        errors: list[Row] = []
        pending: deque[tuple[list[Item], Future[list[Arrays | ForwardpassError]]]] = deque()
        batches = iter(items)
        while batch := list(itertools.islice(batches, self.model.batch_size)):
            pending.append((batch, self._pool.submit(self._preprocess, batch)))
            if len(pending) > self.workers:  # keep the pool busy while this batch runs its forward pass
                self._finish(*pending.popleft(), rows, errors, on_batch)
        while pending:
            self._finish(*pending.popleft(), rows, errors, on_batch)
        audit = self.model.audit
        held: Sequence[Sequence[str]] = []
        if audit is not None and audit.held is not None:
            held, audit.held = audit.held, []
        return Scored(rows, errors, held)

    def _preprocess(self, batch: list[Item]) -> list[Arrays | ForwardpassError]:
        prepared: list[Arrays | ForwardpassError] = []
        for item in batch:
            if item.error is not None:
                prepared.append(item.error)
                continue
            try:
                prepared.append(self.model.preprocess(item.raw))
            except ForwardpassError as exc:
                prepared.append(exc)
        return prepared

    def _finish(
        self,
        batch: list[Item],
        future: Future[list[Arrays | ForwardpassError]],
        rows: list[Row],
        errors: list[Row],
        on_batch: Callable[[int], None] | None,
    ) -> None:
        prepared = future.result()
        ready = [p for p in prepared if not isinstance(p, ForwardpassError)]
        outcomes = iter(self.model.forward_each(ready, self.top_k))
        for item, arrays in zip(batch, prepared, strict=True):
            outcome = arrays if isinstance(arrays, ForwardpassError) else next(outcomes)
            if isinstance(outcome, ForwardpassError):
                errors.append(error_row(item.name, outcome))
            else:
                rows.append({"id": item.name, "model": self.model.name, "version": self._version, **outcome})
        if on_batch is not None:
            on_batch(len(batch))


class Job:
    """What a job sets up alike in this process and on Ray: its input's records, counted, and the output they go to
    (resumed when asked: the parts its manifest names are done)."""

    def __init__(
        self, model: Model, input_path: Path, output_dir: Path, options: BatchOptions, audit: AuditLog | None
    ) -> None:
        if input_path.is_dir() and output_dir.resolve().is_relative_to(input_path.resolve()):
            raise InputError(
                f"OUTPUT '{output_dir}' is inside INPUT '{input_path}': its part files would be read as input; "
                "choose a folder outside it"
            )
        self.started = time.perf_counter()
        self.options = options
        self.output_dir = output_dir
        self.audit = audit  # where the parts' decisions go
        self.source = open_source(input_path, model.config, options.drop)
        self.total = self.source.count()
        self.identity = job_identity(model, input_path, self.source, self.total, options)
        self.output = Output(output_dir, options.output_format, self.identity, resume=options.resume)

    def __enter__(self) -> Job:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.output.close()

    def commit(self, index: int, start: int, stop: int, scored: Scored) -> None:
        """One part written, its decisions audited, and the part recorded done; the job stops once more records
        failed than it allows. A run killed before the part is recorded leaves it to be scored again: its rows are
        written again over nothing (the leftovers are deleted), its decisions not at all (audited once by key)."""
        self.output.write(index, scored.rows, scored.errors)
        if self.audit is not None and scored.audit:
            self.audit.write_once(f"batch {self.output.token} part {index}", scored.audit)
        self.output.record(PartDone(index, start, stop, len(scored.rows), len(scored.errors)))
        check_errors(self.output, self.options.max_errors)

    def finish(self, computed: int) -> Summary:
        """The output completed (once), and what the job did; `computed`: records this run scored. Refused if the
        input changed while the job ran: its parts would mix records read before and after."""
        if not self.output.finished:
            if self.source.fingerprint() != self.identity["input_fingerprint"]:
                raise InputError(
                    f"INPUT's files were added, removed, replaced or edited while the job ran: the parts in "
                    f"'{self.output_dir}' may mix records read before and after; run the job again into a new folder"
                )
            self.output.finish()
        seconds = time.perf_counter() - self.started
        return Summary(self.total, self.output.rows, self.output.errors, computed, seconds, self.output_dir)


def run_batch(
    model: Model, input_path: Path, output_dir: Path, options: BatchOptions, progress: Progress | None = None
) -> Summary:
    """The whole job in this process (the default; `modes.ray_data` runs the same job on a Ray cluster)."""
    with Job(model, input_path, output_dir, options, model.audit) as job:
        total = job.total
        done = job.output.records  # before this run: reported once, first, so that no rate counts them
        computed = 0
        if progress is not None:
            progress(done, total)
        if not job.output.finished:
            with Scorer(model, batch_size=options.batch_size, top_k=options.top_k, workers=options.workers) as scorer:
                for index, start, items in parts(job.source.items(), options.part_size):
                    if job.output.is_done(index):
                        continue
                    scored = done + computed

                    def batch_done(n: int) -> None:
                        nonlocal scored
                        scored += n
                        if progress is not None:
                            progress(scored, total)

                    job.commit(index, start, start + len(items), scorer.score(items, batch_done))
                    computed += len(items)
        return job.finish(computed)


def check_errors(output: Output, max_errors: int | None) -> None:
    """Stop once more records than `max_errors` failed (the parts done stay done; --resume goes on from there)."""
    if max_errors is not None and output.errors > max_errors:
        errors_file = output.gather_errors()
        raise InputError(
            f"stopped: {output.errors} bad records, more than --max-errors {max_errors} (see {errors_file}); "
            "fix the input or raise --max-errors, then run again with --resume"
        )
