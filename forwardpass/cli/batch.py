"""`forwardpass batch`: score a whole folder or table, in resumable part files, here or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from forwardpass.cli.common import REPOSITORY, VERSION, open_model
from forwardpass.errors import InputError
from forwardpass.modes.batch import BatchOptions, Summary, run_batch
from forwardpass.modes.sinks import FORMATS

__all__ = ["register"]


def batch(
    model: str = typer.Argument(
        ...,
        metavar="MODEL",
        help="A model file or folder, or a model name in the repository.",
        show_default=False,
    ),
    input_path: Path = typer.Argument(
        ...,
        metavar="INPUT",
        help=(
            "An image folder (recursive) or image; a .csv / .parquet / .jsonl table (.txt: one text per line; "
            ".npy: one array per row); or a folder of such tables."
        ),
        show_default=False,
    ),
    output_dir: Path = typer.Argument(
        ...,
        metavar="OUTPUT",
        help="A new folder: part files, _errors.jsonl, manifest.",
        show_default=False,
    ),
    output_format: str = typer.Option("parquet", "--format", "-f", help=f"Part file format: {', '.join(FORMATS)}."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", help="Items per forward pass (default: the model's).", show_default=False
    ),
    part_size: int = typer.Option(2048, "--part-size", help="Records per part file: the unit of resuming."),
    resume: bool = typer.Option(False, "--resume", help="Finish the job a killed or stopped run left in OUTPUT."),
    max_errors: int = typer.Option(
        1000, "--max-errors", help="Stop once more records than this failed (-1: never stop for bad records)."
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", "-k", help="Classes per prediction (classification models).", show_default=False
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
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
) -> None:
    """Run a model over every record of INPUT; write one row per record (its id, the prediction, the model name
    and version) to part files in OUTPUT, and bad records (with the reason) to OUTPUT/_errors.jsonl.

    Memory stays bounded whatever the input's size. A job killed at any moment
    (even kill -9) finishes with --resume: every record ends up exactly once in
    the output or the errors file. Ids are file paths relative to INPUT, plus
    #rowN for a row of a table (#lineN for JSONL).

    Examples:

      forwardpass batch mobilenet_v2 photos/ scores/

      forwardpass batch breast_cancer data/breast_cancer/test.csv scores/ --format csv

      forwardpass batch breast_cancer big.parquet scores/ --resume

      forwardpass batch digits_cnn data/digits/test scores/ --ray --actors 2

      forwardpass batch mobilenet_v2 /shared/photos /shared/scores --ray-address auto --actors 8
    """
    for name, value in (("--part-size", part_size), ("--workers", workers), ("--actors", actors)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if (batch_size is not None and batch_size < 1) or (top_k is not None and top_k < 1):
        raise InputError("--batch-size and --top-k must be at least 1")
    options = BatchOptions(
        output_format=output_format.lower(),
        batch_size=batch_size,
        part_size=part_size,
        max_errors=None if max_errors < 0 else max_errors,
        top_k=top_k,
        workers=workers,
        resume=resume,
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("scoring", total=None, rate="")

        def progress(done: int, total: int) -> None:
            speed = bar.tasks[task].speed
            bar.update(task, completed=done, total=total, rate=f"{speed:,.0f} rec/s" if speed else "")

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
                progress=progress,
            )
        else:
            loaded = open_model(model, repository, version)
            try:
                summary = run_batch(loaded, input_path, output_dir, options, progress)
            finally:
                loaded.close()
    typer.echo(summary.describe())


def register(app: typer.Typer) -> None:
    app.command()(batch)
