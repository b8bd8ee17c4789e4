"""`forwardpass audit`: query the decision audit log, as a table or as CSV."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TextIO

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from forwardpass.decisions import AUDIT_LOG_ENV, AuditRecord, default_audit_path
from forwardpass.decisions.audit import COLUMNS, open_existing, owned_by, utc_prefix
from forwardpass.errors import InputError

__all__ = ["register"]


def audit(
    log: Path | None = typer.Option(
        None,
        "--log",
        "-l",
        help=f"The audit log (default: ${AUDIT_LOG_ENV}, else .forwardpass/audit.sqlite).",
        show_default=False,
    ),
    model: str | None = typer.Option(None, "--model", "-m", help="Only this model's decisions.", show_default=False),
    action: str | None = typer.Option(
        None, "--action", "-a", help="Only decisions with this action.", show_default=False
    ),
    since: str | None = typer.Option(
        None,
        "--since",
        help="From this UTC time on (ISO 8601, any prefix: 2026-11-26, 2026-11-26T01:30).",
        show_default=False,
    ),
    until: str | None = typer.Option(
        None, "--until", help="Before this UTC time (ISO 8601 prefix).", show_default=False
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many rows.", show_default=False),
    csv_file: str | None = typer.Option(
        None, "--csv", help="Write CSV to this file ('-': standard output) instead of a table.", show_default=False
    ),
) -> None:
    """List the decisions that models with a `decision:` rule made, oldest first.

    Every prediction of such a model (CLI, Python API, server, batch) writes one
    row: time (UTC), model, version, input hash (BLAKE2s-256 of the
    preprocessed input), scores, action and the rule that fired.

    Examples:

      forwardpass audit

      forwardpass audit --model cancer_triage --action refer --since 2026-11-26

      forwardpass audit --csv decisions.csv

      forwardpass audit --log /var/lib/forwardpass/audit.sqlite --csv - | head
    """
    since = utc_prefix("--since", since) if since is not None else None  # refused before the log is opened
    until = utc_prefix("--until", until) if until is not None else None
    path = log or default_audit_path()
    if csv_file not in (None, "-"):
        _refuse_overwriting(Path(csv_file), path)
    store = open_existing(path)
    try:
        records = list(store.query(model=model, action=action, since=since, until=until, limit=limit))
    finally:
        store.close()
    if csv_file == "-":
        _write_csv(records, sys.stdout)
    elif csv_file is not None:
        with open(csv_file, "w", newline="", encoding="utf-8") as file:
            _write_csv(records, file)
        typer.echo(f"wrote {len(records)} decisions from {path} to {csv_file}")
    else:
        _print_table(records, path)


def _refuse_overwriting(target: Path, log: Path) -> None:
    """--csv must not name the log itself, SQLite's files beside it or its journals: writing there destroys the
    decisions being exported."""
    resolved = target.resolve()
    for owned in owned_by(log.resolve()):
        if resolved == owned or resolved.is_relative_to(owned):
            raise InputError(f"--csv {target} would overwrite the audit log's own {owned}; write the CSV elsewhere")


def _write_csv(records: list[AuditRecord], out: TextIO) -> None:
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for record in records:
        scores = orjson.dumps(record.scores).decode()
        writer.writerow(
            [
                record.id,
                record.time,
                record.model,
                record.version,
                record.input_hash,
                scores,
                record.action,
                record.rule,
            ]
        )


def _print_table(records: list[AuditRecord], path: Path) -> None:
    title = f"{len(records)} decisions in {path}"
    table = Table("id", "time (UTC)", "model", "version", "input", "action", "rule", title=title)
    for record in records:
        cells = [str(record.id), record.time, record.model, record.version, record.input_hash[:12]]
        table.add_row(*(Text(cell) for cell in (*cells, record.action, record.rule)))  # '[UNK]' is no markup
    Console(soft_wrap=True, highlight=False).print(table)


def register(app: typer.Typer) -> None:
    app.command()(audit)
