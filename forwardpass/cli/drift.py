"""`forwardpass drift MODEL DATA`: how far a table of recent inputs has drifted from the model's training profile."""

from __future__ import annotations

import codecs
import csv
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import typer
from rich.console import Console
from rich.table import Table

from forwardpass.cli.common import REPOSITORY, VERSION
from forwardpass.config import ModelConfig
from forwardpass.errors import ConfigError, DecodeError, InputError, NotFoundError
from forwardpass.model import file_in_model_folder, locate
from forwardpass.modes.sources import jsonl_items
from forwardpass.quality import Profile, drift_report
from forwardpass.quality.drift import KS_ALPHA, PSI_LIMIT

__all__ = ["register"]


def drift(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="A model folder or a name in the repository.", show_default=False
    ),
    data: Path = typer.Argument(
        ...,
        metavar="DATA",
        help="Recent inputs: a .csv file with a header, or a .json / .jsonl file of records.",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per feature per line, for scripts."),
    psi_limit: float = typer.Option(PSI_LIMIT, "--psi-limit", help="A feature drifts at PSI >= this."),
    ks_alpha: float = typer.Option(KS_ALPHA, "--ks-alpha", help="... or when the KS test's p-value is below this."),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
) -> None:
    """Compare recent inputs with the training data's reference profile, per feature.

    PSI (population stability index) over the profile's bins, and the
    two-sample Kolmogorov-Smirnov test against the profile's sample of
    training rows. The model's config names its profile (`profile:
    profile.json`, written when the model was built). Exit code 1 when any
    feature drifted, 0 when none did.

    Examples:

      forwardpass drift cancer_triage data/cancer_triage/test.csv

      forwardpass drift cancer_triage recent.jsonl --json

      forwardpass drift my_model recent.csv -r /srv/models --psi-limit 0.1
    """
    entry = locate(model, repository, version)
    config = ModelConfig.of(entry.config_path)
    if config.profile is None:
        raise ConfigError(f"model '{entry.name}' has no reference profile; add `profile:` to its config")
    profile = Profile.load(file_in_model_folder(entry.directory, config.profile, "profile"))
    columns = _read_columns(data, profile.names)
    report = drift_report(profile, columns, psi_limit=psi_limit, ks_alpha=ks_alpha)
    if as_json:
        for entry_drift in report:
            sys.stdout.buffer.write(orjson.dumps(asdict(entry_drift)) + b"\n")
    else:
        table = Table("feature", "values", "PSI", "KS", "KS p-value", "drift", title=f"{entry.name}: {data}")
        for row in report:
            flag = "[bold red]DRIFT[/]" if row.drifted else "ok"
            table.add_row(
                row.feature, str(row.count), f"{row.psi:.4f}", f"{row.ks_statistic:.4f}", f"{row.ks_pvalue:.2e}", flag
            )
        Console(soft_wrap=True, highlight=False).print(table)
    drifted = [row.feature for row in report if row.drifted]
    if not as_json:  # the verdict in one line, for a person and for a log
        rule = f"PSI >= {psi_limit:g} or KS p-value < {ks_alpha:g}"
        listed = f": {', '.join(drifted)}" if drifted else ""
        typer.echo(f"{len(drifted)} of {len(report)} features drifted ({rule}){listed}")
    if drifted:
        raise typer.Exit(1)


def _read_columns(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise NotFoundError(f"no data file at {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as file:
                records: list[Any] = list(csv.DictReader(file))
        elif suffix == ".json":
            loaded = orjson.loads(path.read_bytes().removeprefix(codecs.BOM_UTF8))
            records = loaded if isinstance(loaded, list) else [loaded]
        elif suffix in (".jsonl", ".ndjson"):
            records = []
            for item in jsonl_items(path, str(path)):
                if item.error is not None:
                    raise DecodeError(f"{item.name}: {item.error}")
                if not isinstance(item.raw, dict):
                    raise DecodeError(f"{item.name}: expected a record (an object with named fields)")
                records.append(item.raw)
        else:
            raise DecodeError(f"{path}: expected a .csv, .json or .jsonl file of records, got '{suffix}'")
    except (OSError, UnicodeDecodeError, orjson.JSONDecodeError, csv.Error) as exc:
        raise DecodeError(f"{path}: cannot read records ({exc})".splitlines()[0]) from None
    if not records or not all(isinstance(record, dict) for record in records):
        raise DecodeError(f"{path}: expected records (objects with named fields), found none")
    present = [name for name in names if any(name in record for record in records)]
    if not present:
        raise InputError(f"{path}: no record has a profiled feature; expected some of {names}")
    return {name: np.array([_number(record.get(name)) for record in records]) for name in present}


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def register(app: typer.Typer) -> None:
    app.command()(drift)
