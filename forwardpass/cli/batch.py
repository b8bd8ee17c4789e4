"""`forwardpass batch`: score a whole folder or table, in resumable part files, here or on a Ray cluster."""

from __future__ import annotations

import shlex
from pathlib import Path

import orjson
import typer

from forwardpass.cli.common import (
    REPOSITORY,
    TRUST_PICKLE,
    VERSION,
    Terminated,
    at_least_one,
    batch_size_option,
    format_option,
    model_argument,
    open_model,
    output_option,
    stop_on_sigterm,
    top_k_option,
)
from forwardpass.cli.reporting import progress, text_list
from forwardpass.errors import InputError
from forwardpass.modes.batch import BatchOptions, Summary, run_batch
from forwardpass.modes.sinks import ERRORS_FILE, FORMATS, saved_job

__all__ = ["register"]

DEFAULT_FORMAT = "parquet"
DEFAULT_PART_SIZE = 2048
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def batch(
    model: str = model_argument(),
    input_path: Path = typer.Argument(
        ...,
        metavar="INPUT",
        help=(
            "An image folder (recursive) or image; a .csv / .parquet / .jsonl table (.txt: one text per line; "
            ".npy: one array per row); or a folder of such tables."
        ),
        show_default=False,
    ),
    output_dir: Path = output_option("A new folder for the part files, _errors.jsonl and the manifest.", required=True),
    output_format: str | None = format_option(
        None, f"Part file format: {', '.join(FORMATS)} (default: {DEFAULT_FORMAT}; with --resume, the job's)."
    ),
    batch_size: int | None = batch_size_option(),
    part_size: int | None = typer.Option(
        None,
        "--part-size",
        metavar="N",
        help=f"Records per part file, the unit of resuming (default: {DEFAULT_PART_SIZE}; with --resume, the job's).",
        show_default=False,
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Finish the job a killed or stopped run left in OUTPUT, with the options it had."
    ),
    max_errors: int = typer.Option(
        1000, "--max-errors", help="Stop once more records than this failed (-1: never stop for bad records)."
    ),
    top_k: int | None = top_k_option("Classes per prediction (classification models; with --resume, the job's)."),
    drop: str | None = typer.Option(
        None,
        "--drop",
        metavar="COLUMNS",
        help=(
            "Table columns to leave out of the records, comma-separated: a label or an id that is none of the "
            "model's columns (with --resume, the job's)."
        ),
        show_default=False,
    ),
    workers: int = typer.Option(2, "--workers", help="Decoding threads beside the forward pass."),
    ray: bool = typer.Option(False, "--ray", help="Run on Ray Data, on a Ray started here (needs forwardpass\\[ray])."),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="Run on the Ray cluster at this address (HOST:6379, or auto for the local one).",
        show_default=False,
    ),
    actors: int = typer.Option(2, "--actors", help="Ray: model replicas (actors), each holding the model."),
    actor_cpus: float = typer.Option(
        0.5, "--actor-cpus", help="Ray: CPUs each actor asks for (fractional, so that small clusters do not stall)."
    ),
    trust_pickle: bool = TRUST_PICKLE,
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
) -> None:
    """Run a model over every record of INPUT; write one row per record (its id, the prediction, the model name
    and version) to part files in OUTPUT, and bad records (with the reason) to OUTPUT/_errors.jsonl.

    Memory stays bounded whatever the input's size. A job killed at any moment
    (even kill -9) or stopped with Ctrl-C or SIGTERM finishes with --resume, which takes
    the job's options from OUTPUT's manifest: every record ends up exactly once
    in the output or the errors file (and a decision model's audit log holds
    each decision once). --resume is refused if INPUT's files or the model
    changed since the job started, and while another run writes OUTPUT. Ids are
    file paths relative to INPUT, plus #rowN for a row of a table (#lineN for
    JSONL).

    Examples:

      forwardpass batch mobilenet_v2 samples/images -o scores/photos

      forwardpass batch breast_cancer data/breast_cancer/test.csv -o scores/cancer --drop label --format csv

      forwardpass batch breast_cancer data/breast_cancer/test.csv -o scores/cancer --resume

      forwardpass batch digits_cnn data/digits/test -o scores/digits --ray --actors 2

      forwardpass batch mobilenet_v2 /shared/photos -o /shared/scores --ray-address auto --actors 8
    """
    at_least_one(part_size=part_size, workers=workers, actors=actors, batch_size=batch_size, top_k=top_k)
    stop_on_sigterm()
    saved = saved_job(output_dir) if resume else None
    job = saved[0] if saved else {}
    options = BatchOptions(
        output_format=(output_format or job.get("format") or DEFAULT_FORMAT).lower(),
        batch_size=batch_size,
        part_size=part_size or job.get("part_size") or DEFAULT_PART_SIZE,
        max_errors=None if max_errors < 0 else max_errors,
        top_k=top_k if top_k is not None or not saved else job.get("top_k"),
        workers=workers,
        resume=resume,
        drop=tuple(text_list(drop, "--drop") if drop is not None else job.get("drop") or ()),
    )
    with progress(items="records") as bar:
        task = bar.add_task("scoring", total=None)
        started = False

        def advance(done: int, total: int) -> None:
            nonlocal started
            if started:
                bar.update(task, completed=done, total=total)
            else:  # the records done before this run: where the bar starts, not records scored at once
                started = True
                bar.reset(task, total=total, completed=done)

        try:
            if ray or ray_address:
                from forwardpass.modes.ray_data import run_batch_on_ray  # Ray only when asked for

                summary: Summary = run_batch_on_ray(
                    model,
                    input_path,
                    output_dir,
                    options,
                    repository=repository,
                    version=version,
                    address=ray_address,
                    actors=actors,
                    actor_cpus=actor_cpus,
                    progress=advance,
                    trust_pickle=trust_pickle,
                )
            else:
                # ONNX Runtime's threads sleep between operators instead of spinning: the decoding threads get the
                # cores (bench/results/batch.md measures the difference)
                loaded = open_model(model, repository, version, trust_pickle=trust_pickle, allow_spinning=False)
                try:
                    summary = run_batch(loaded, input_path, output_dir, options, advance)
                finally:
                    loaded.close()
        except KeyboardInterrupt as stopped:
            bar.stop()
            exit_code = stopped.exit_code if isinstance(stopped, Terminated) else INTERRUPTED
            _interrupted(model, input_path, output_dir, exit_code)
    typer.echo(summary.describe())
    if summary.errors and not summary.rows:
        raise InputError(f"no record was scored; the first, {_first_error(summary.output)}")


def _first_error(output_dir: Path) -> str:
    with (output_dir / ERRORS_FILE).open("rb") as errors:
        first = orjson.loads(errors.readline())
    return f"{first['id']}: {first['error']}"


def _interrupted(model: str, input_path: Path, output_dir: Path, exit_code: int) -> None:
    """What Ctrl-C or SIGTERM leaves: the parts written stay, and --resume computes only the rest."""
    saved = saved_job(output_dir)
    if saved is None:
        typer.echo("interrupted before the first part was saved: nothing to resume", err=True)
    else:
        job, done = saved
        again = shlex.join(["forwardpass", "batch", model, str(input_path), "-o", str(output_dir), "--resume"])
        typer.echo(
            f"interrupted: {done} of {job['records']} records saved in {output_dir}; finish the job with:\n  {again}",
            err=True,
        )
    raise typer.Exit(exit_code)


def register(app: typer.Typer) -> None:
    app.command()(batch)
