"""`forwardpass eval`: accuracy on labelled raw data, per class and per group, with a report on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from forwardpass.cli.common import (
    REPOSITORY,
    TRUST_PICKLE,
    VERSION,
    at_least_one,
    batch_size_option,
    make_output_folder,
    model_argument,
    open_model,
    output_option,
    top_k_option,
)
from forwardpass.cli.reporting import print_json, progress
from forwardpass.measure import EvalReport, evaluate, open_dataset
from forwardpass.measure.detection import evaluate_detection, is_coco
from forwardpass.measure.evaluate import MAX_REPORTED_ERRORS
from forwardpass.measure.report import save_eval

__all__ = ["eval_command", "register"]

SHOWN_ERRORS = 5
SHOWN_CLASSES = 20


def eval_command(
    model: str = model_argument(),
    data: Path = typer.Argument(
        ...,
        metavar="DATA",
        help="ImageFolder tree (DATA/<label>/<image>, or <label>/<sound file> for audio models), CSV / Parquet /"
        " JSONL / JSON table with a label column,"
        " .npz of input arrays and a label array, or a COCO annotation file (detectors; images beside it).",
    ),
    top_k: int | None = top_k_option("Report top-1 and top-K accuracy (recall@1 and recall@K for embeddings)."),
    group_by: str | None = typer.Option(
        None,
        "--group-by",
        help="Column splitting the items into groups: metrics per group, largest gap.",
        show_default=False,
    ),
    positive_label: str | None = typer.Option(
        None,
        "--positive-label",
        help="Class whose predicted rate is compared between groups (default: the second label of a two-class model).",
        show_default=False,
    ),
    label_column: str | None = typer.Option(
        None, "--label-column", help="Column holding the label (default: 'label', else 'target').", show_default=False
    ),
    batch_size: int | None = batch_size_option("Items per forward pass (default and limit: the model's)."),
    out: Path | None = output_option("Folder for report.json, report.md and PNG plots."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
    trust_pickle: bool = TRUST_PICKLE,
) -> None:
    """Score a model on labelled raw data, through its own preprocessing and postprocessing.

    Classification: top-K accuracy, per-class precision / recall / F1, confusion matrix, calibration (ECE).
    Regression: MAE, RMSE, R². Embeddings: recall@K (items sharing a label are each other's matches).

    Items that cannot be read or run are counted and listed; they do not stop the run. Labels the model does not
    know stop it before it starts.

    Examples:

      forwardpass eval digits_cnn data/digits/test --top-k 5 -o reports/digits

      forwardpass eval breast_cancer data/breast_cancer/test.csv

      forwardpass eval diabetes data/diabetes/test.csv --group-by sex --json

      forwardpass eval my_model records.parquet --label-column species --group-by site

      forwardpass eval my_detector coco/annotations.json -o reports/detector
    """
    at_least_one(top_k=top_k, batch_size=batch_size)
    if out is not None:
        make_output_folder(out)
    if is_coco(data):  # detection: pycocotools' mAP
        loaded = open_model(model, repository, version, trust_pickle=trust_pickle)
        with progress(items="images") as bar:
            task = bar.add_task(f"eval {loaded.name}", total=None)
            scored = evaluate_detection(loaded, data, batch_size, on_progress=lambda n: bar.advance(task, n))
        loaded.close()
        _report_detection(scored, out, as_json)
        return
    ks = sorted({1, top_k or 1})
    dataset = open_dataset(data, label_column, group_by)
    loaded = open_model(model, repository, version, trust_pickle=trust_pickle)
    with progress(items="items") as bar:
        task = bar.add_task(f"eval {loaded.name}", total=len(dataset))
        try:
            report = evaluate(
                loaded,
                dataset,
                top_k=ks,
                batch_size=batch_size,
                on_progress=lambda n: bar.advance(task, n),
                positive_label=positive_label,
            )
        except KeyboardInterrupt:  # metrics of a part would read as the whole: say so, write nothing
            done = int(bar.tasks[task].completed)
            bar.stop()
            typer.echo(f"interrupted after {done} of {len(dataset)} items: no report written; run it again", err=True)
            raise typer.Exit(130) from None
        finally:
            loaded.close()
    written = save_eval(report.to_dict(), out) if out is not None else []
    if as_json:
        print_json(report.to_dict())
    else:
        _print_eval(report)
        if written:
            Console().print(f"report: {', '.join(str(path) for path in written)}", highlight=False)


def _report_detection(report: dict[str, Any], out: Path | None, as_json: bool) -> None:
    if out is not None:
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if as_json:
        print_json(report)
        return
    console = Console()
    console.print(f"[bold]{report['model']}[/] on {report['data']} (detection, {report['images']} images)")
    console.print(f"mAP@0.5 {report['map_50']:.4f}   mAP@0.5:0.95 {report['map_50_95']:.4f}", highlight=False)
    table = Table("class", "mAP@0.5", "mAP@0.5:0.95", "instances")
    for name, scores in report["per_class"].items():
        table.add_row(name, f"{scores['map_50']:.4f}", f"{scores['map_50_95']:.4f}", str(scores.get("instances", 0)))
    console.print(table)
    for name, why in list(report["failures"].items())[:SHOWN_ERRORS]:
        console.print(f"[red]failed[/] {name}: {why}", highlight=False)
    if report["labels_not_in_categories"]:
        console.print(f"labels not among the categories (not scored): {report['labels_not_in_categories']}")
    if out is not None:
        console.print(f"report: {out / 'report.json'}", highlight=False)


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
    per_class = report.metrics.get("per_class") or {}
    if 1 < len(per_class) <= SHOWN_CLASSES:
        classes = Table(title="per class")
        for column in ("class", "precision", "recall", "F1", "support"):
            classes.add_column(column, justify="left" if column == "class" else "right")
        for label, values in per_class.items():
            classes.add_row(label, *(f"{values[k]:.3f}" for k in ("precision", "recall", "f1")), str(values["support"]))
        console.print(classes)
    groups = report.metrics.get("groups")
    if groups:
        _print_groups(console, report.group_by or "group", groups)
    for error in report.errors[:SHOWN_ERRORS]:
        console.print(f"[yellow]bad item[/] {error.source}: {error.error}", markup=True, highlight=False)
    if report.bad > SHOWN_ERRORS:
        more = min(report.bad, MAX_REPORTED_ERRORS)
        console.print(f"... {report.bad - SHOWN_ERRORS} more ({more} listed with --json)")


def _print_groups(console: Console, name: str, groups: dict[str, dict[str, dict[str, object]]]) -> None:
    by_group = groups["by_group"]
    columns = sorted({key for values in by_group.values() for key in values} - {"n"})
    table = Table(title=f"per {name}")
    for column in (name, "n", *columns):
        table.add_column(column, justify="left" if column == name else "right")
    for group, values in by_group.items():
        cells = [values.get(column) for column in columns]
        table.add_row(group, str(values["n"]), *("-" if c is None else f"{c:.4f}" for c in cells))
    console.print(table)
    for metric, gap in groups["gaps"].items():
        console.print(
            f"largest gap in {metric}: {gap['difference']:.4f} ({gap['lowest']} lowest, {gap['highest']} highest)",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
