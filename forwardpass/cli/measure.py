"""`forwardpass eval` and `forwardpass bench`: accuracy on labelled data, speed against raw ONNX Runtime."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from forwardpass.cli.common import REPOSITORY, VERSION, open_model
from forwardpass.errors import InputError
from forwardpass.measure import (
    EvalReport,
    RawSession,
    RoundDone,
    SpeedPoint,
    bench,
    evaluate,
    machine_info,
    open_dataset,
)
from forwardpass.measure.evaluate import MAX_REPORTED_ERRORS

__all__ = ["register"]

SHOWN_ERRORS = 5


def eval_command(
    model: str = typer.Argument(..., help="Model name in the repository, model folder, or model file."),
    data: Path = typer.Argument(
        ..., help="ImageFolder tree (DATA/<label>/<image>) or CSV / JSONL / JSON file with a label column."
    ),
    top_k: str = typer.Option("1", "--top-k", help="Comma-separated K values for top-K accuracy (classification)."),
    label_column: str | None = typer.Option(
        None, "--label-column", help="Column holding the label (default: 'label', else 'target').", show_default=False
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Items per forward pass (default and limit: the model's).", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
) -> None:
    """Score a model on labelled raw data, through its own preprocessing and postprocessing.

    Classification models get top-K accuracy; regression models get MAE, RMSE and R².

    Items that cannot be read or run are counted and listed; they do not stop the run.

    Examples:

      forwardpass eval digits_cnn data/digits/test --top-k 1,5

      forwardpass eval breast_cancer data/breast_cancer/test.csv

      forwardpass eval diabetes data/diabetes/test.csv --json

      forwardpass eval my_model records.jsonl --label-column species --batch-size 16
    """
    ks = _int_list(top_k, "--top-k")
    dataset = open_dataset(data, label_column)
    loaded = open_model(model, repository, version)
    with _progress(items=True) as progress:
        task = progress.add_task(f"eval {loaded.name}", total=len(dataset))
        report = evaluate(
            loaded, dataset, top_k=ks, batch_size=batch_size, on_progress=lambda n: progress.advance(task, n)
        )
    loaded.close()
    if as_json:
        _print_json(report.to_dict())
    else:
        _print_eval(report)


def bench_command(
    model: str = typer.Argument(..., help="Model name in the repository, model folder, or model file."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes to time."),
    threads: int | None = typer.Option(
        None, "--threads", help="ONNX Runtime intra-op threads (default: the model's config).", show_default=False
    ),
    duration: float = typer.Option(3.0, "--duration", help="Seconds of timed calls per batch size, per engine."),
    warmup: float = typer.Option(0.5, "--warmup", help="Seconds of untimed calls first, per batch size and engine."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
) -> None:
    """Time the forward pass (`Model.infer`) on random valid inputs, beside raw ONNX Runtime on the same file.

    Both use the same session options and run in alternating rounds, so they share the machine's noise.

    ours/raw is the median of round-by-round throughput ratios: 1.00 means no overhead.

    Examples:

      forwardpass bench mobilenet_v2 --batch-sizes 1,8 --duration 2

      forwardpass bench digits_cnn --threads 1 --json

      forwardpass bench models/diabetes/1/model.onnx --batch-sizes 1 --duration 0.5 --warmup 0
    """
    sizes = _int_list(batch_sizes, "--batch-sizes")
    if duration <= 0 or warmup < 0:
        raise InputError("--duration must be positive and --warmup not negative")
    overrides: dict[str, Any] = {} if threads is None else {"intra_op_threads": threads}
    loaded = open_model(model, repository, version, **overrides)
    raw = RawSession(loaded)
    machine = machine_info()
    console = Console()
    if not as_json:
        console.print(_machine_line(machine))
    points: list[SpeedPoint] = []
    with _progress() as progress:
        for size in sizes:
            task = progress.add_task(f"batch {size}", total=2 * (warmup + duration))

            def show(done: RoundDone, task: Any = task, size: int = size) -> None:
                step = "warm-up" if done.phase == "warmup" else f"round {done.index + 1}/{done.rounds}"
                rate = f"{done.items_per_second:,.0f} items/s"
                progress.update(task, advance=done.seconds, description=f"batch {size} {done.name} {step}: {rate}")

            points += bench(loaded, [size], seconds=duration, warmup_seconds=warmup, on_round=show, raw=raw)
    settings = {
        "batch_sizes": sizes,
        "intra_op_threads": loaded.engine.intra_op_threads,
        "inter_op_threads": loaded.engine.inter_op_threads,
        "graph_optimization": loaded.engine.graph_optimization,
        "providers": loaded.session.providers,
        "duration": duration,
        "warmup": warmup,
    }
    loaded.close()
    if as_json:
        _print_json(
            {
                "model": loaded.name,
                "version": loaded.version,
                "settings": settings,
                "machine": machine,
                "results": [p.to_dict() for p in points],
            }
        )
    else:
        console.print(_bench_table(loaded.name, points, loaded.engine.intra_op_threads))
        console.print("ours: Model.infer; raw ORT: InferenceSession.run; latencies in ms per call", style="dim")


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InputError(f"{option}: expected comma-separated positive integers such as 1,8; got '{text}'")
    return values


def _progress(*, items: bool = False) -> Progress:
    """On stderr, so that stdout holds only the result (a table or JSON); gone once done; off when not a terminal."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if items else TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def _print_eval(report: EvalReport) -> None:
    console = Console()
    console.print(f"[bold]{report.model}[/] on {report.data} ({report.task})", highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report.rows:
        table.add_row(name, f"{value:.4f}")
    table.add_row("items scored", str(report.n))
    table.add_row("bad items", str(report.bad))
    if report.seconds > 0:
        table.add_row("items/s", f"{(report.n + report.bad) / report.seconds:,.0f}")
    console.print(table)
    for error in report.errors[:SHOWN_ERRORS]:
        console.print(f"[yellow]bad item[/] {error.source}: {error.error}", markup=True, highlight=False)
    if report.bad > SHOWN_ERRORS:
        more = min(report.bad, MAX_REPORTED_ERRORS)
        console.print(f"... {report.bad - SHOWN_ERRORS} more ({more} listed with --json)")
    if report.unknown_labels:
        labels = ", ".join(report.unknown_labels[:10])
        console.print(f"[yellow]warning[/]: labels the model never predicts (check their spelling): {labels}")


def _machine_line(machine: dict[str, object]) -> str:
    isa = " ".join(map(str, machine["isa"])) if isinstance(machine["isa"], list) else ""
    providers = machine["providers"] if isinstance(machine["providers"], list) else []
    return (
        f"machine: {machine['cpu']}, {machine['usable_cores']} of {machine['logical_cores']} cores usable,"
        f" {isa or 'no AVX2'}\n"
        f"software: onnxruntime {machine['onnxruntime']}, numpy {machine['numpy']}, python {machine['python']};"
        f" providers {', '.join(str(p).removesuffix('ExecutionProvider') for p in providers)}"
    )


def _bench_table(name: str, points: list[SpeedPoint], threads: int) -> Table:
    table = Table(
        title=f"{name}, intra-op threads: {threads or 'ONNX Runtime default'}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("batch", "engine", "items/s", "p50", "p90", "p99", "max", "ours/raw"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for point in points:
        for engine, timing in (("ours", point.ours), ("raw ORT", point.raw)):
            latency = timing.latency
            table.add_row(
                str(point.batch_size) if timing is point.ours else "",
                engine,
                f"{timing.throughput:,.0f}" if timing.throughput >= 100 else f"{timing.throughput:.2f}",
                *map(_ms, (latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms)),
                f"{point.ratio:.3f}" if timing is point.ours else "",
                end_section=timing is point.raw,
            )
    return table


def _ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.2f}" if ms >= 1 else f"{ms:.4f}"


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("bench")(bench_command)
