"""`forwardpass init`: the config forwardpass infers for a model, written out with why, for the user to review."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import typer
import yaml

from forwardpass.cli.common import REPOSITORY, TRUST_PICKLE, VERSION, open_model, output_option
from forwardpass.config import ModelConfig, TabularColumn, TabularConfig
from forwardpass.errors import InputError
from forwardpass.measure.datasets import open_dataset
from forwardpass.measure.evaluate import with_task_from_labels
from forwardpass.model import Model
from forwardpass.repository import CONFIG_FILE

__all__ = ["config_yaml", "register"]

_KEY = re.compile(r"^(\s*)(?:- )?([A-Za-z_][A-Za-z0-9_]*):")


def init(
    model: str = typer.Argument(..., metavar="MODEL", help="A model file, a model folder, or a repository name."),
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        metavar="FILE",
        help="Labelled data (a table with a label column, an ImageFolder tree, a .npz): settles the task, and a "
        "table's header names the columns of a model that records none.",
        show_default=False,
    ),
    label_column: str | None = typer.Option(
        None,
        "--label-column",
        metavar="COLUMN",
        help="The label column of --data (default: label, else target).",
        show_default=False,
    ),
    output: Path | None = output_option("Folder to write config.yaml into (default: print it)."),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
    trust_pickle: bool = TRUST_PICKLE,
) -> None:
    """Write the config forwardpass infers for MODEL: each inferred field carries a comment saying why.

    What the model records fills it: a framework's classes and feature names, a converter's probability output,
    a final Softmax, a dynamic batch dimension. With --data, the labels settle a task the model does not record
    (class indices against a score output, numbers against one value) and a table's header names the columns.
    Review it, then keep it beside the model: a folder with config.yaml and the model file (or 1/<file>).

    Examples:

      forwardpass init forest.joblib --trust-pickle

      forwardpass init model.pt --data train.csv --label-column species -o models/species

      forwardpass init mobilenet_v2
    """
    loaded = open_model(model, repository, version, trust_pickle=trust_pickle)
    try:
        if data is not None:
            loaded = _settled_by(loaded, data, label_column)
        text = config_yaml(loaded.config, loaded.inferred)
    finally:
        loaded.close()
    if output is None:
        sys.stdout.write(text)
        return
    output.mkdir(parents=True, exist_ok=True)
    target = output / CONFIG_FILE
    target.write_text(text, encoding="utf-8")
    beside = output / loaded.entry.artefact.name
    hint = "" if loaded.entry.artefact.parent.resolve() == output.resolve() else f"; put the model at {beside}"
    typer.echo(f"wrote {target} ({len(loaded.inferred)} inferred fields, each with why){hint}", err=True)


def _settled_by(model: Model, data: Path, label_column: str | None) -> Model:
    """The model with what the data settles: its columns from a table's header, its task from the labels."""
    dataset = open_dataset(data, label_column)
    examples = dataset.examples
    first = examples[0].raw if examples else None
    if model.config.preprocess is None and isinstance(first, dict):
        model = _named_by_header(model, [str(name) for name in first])
    if model.config.postprocess is None:
        model = with_task_from_labels(model, dataset)
    return model


def _named_by_header(model: Model, columns: list[str]) -> Model:
    """Columns from the data's header, in file order, where they are as many as the model's one input takes."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 2 or model.inputs[0].shape[1] != len(columns):
        width = model.inputs[0].shape[-1] if len(model.inputs) == 1 and model.inputs[0].shape else "?"
        raise InputError(
            f"the data has {len(columns)} columns besides the label, the model's input takes {width} features; "
            "give data with exactly the model's features (and the label)"
        )
    preprocess = TabularConfig(
        kind="tabular", input=model.inputs[0].name, columns=[TabularColumn(name=name) for name in columns]
    )
    why = "the data's columns in file order (the model records no names: check they are its input order)"
    return model.reconfigured("preprocess", preprocess, why)


def config_yaml(config: ModelConfig, inferred: dict[str, str]) -> str:
    """The config as YAML, only what differs from the defaults, each inferred field followed by `# inferred: why`."""
    data: dict[str, Any] = config.model_dump(mode="json", exclude_defaults=True)
    for section in ("preprocess", "postprocess"):
        value = getattr(config, section)
        if value is not None:
            data[section] = {"kind": value.kind, **value.model_dump(mode="json", exclude_defaults=True)}
    lines = ["# forwardpass model config: declared fields as they were, inferred ones with why. Review, then keep."]
    path: list[tuple[int, str]] = []
    for line in yaml.safe_dump(data, sort_keys=False, width=120).splitlines():
        match = _KEY.match(line)
        if match is None:
            lines.append(line)
            continue
        indent = len(match.group(1))
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, match.group(2)))
        key = ".".join(name for _, name in path)
        why = inferred.get(key)
        lines.append(f"{line}  # inferred: {why}" if why else line)
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    app.command()(init)
