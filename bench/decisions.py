"""What a decision rule and its audit log cost per request, as ratios of the plain prediction path.

Usage: ``python bench/decisions.py [--model cancer_triage] [--rounds 5] [--seconds 1] [--out bench/results]``

The bundled tabular model with a decision rule (`cancer_triage`, `make models`) is copied four times into a
temporary repository: without its `decision:` section (plain), with the decision but `audit: false`, as built
(decision + audit log by the default journal: each request's rows appended to a memory-mapped journal file before
answering, moved into SQLite by a writer thread every `audit_group_ms`), and with `audit_group_ms: 0` (one SQLite
commit per call before answering). Each is timed through `Model.predict` on one record (batch 1) and on 64 records
(one call), interleaved round by round with raw ONNX Runtime on the already preprocessed array. Writes
<out>/decisions.json and <out>/decisions.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml

import forwardpass
from forwardpass.decisions import AuditLog
from forwardpass.measure import interleave, machine_info
from forwardpass.repository import default_repository

VARIANTS = ("plain", "decision", "decision+audit", "decision+commit")


def folder_name(variant: str) -> str:
    return variant.replace("+", "_")


def variants(source: Path, root: Path) -> None:
    config = yaml.safe_load((source / "config.yaml").read_text(encoding="utf-8"))
    for name in VARIANTS:
        folder = Path(shutil.copytree(source, root / folder_name(name)))
        changed = dict(config)
        if name == "plain":
            del changed["decision"]
        elif name == "decision":
            changed["decision"] = {**config["decision"], "audit": False}
        elif name == "decision+commit":
            changed["decision"] = {**config["decision"], "audit_group_ms": 0}
        (folder / "config.yaml").write_text(yaml.safe_dump(changed), encoding="utf-8")


def records(model: str, count: int) -> list[dict[str, Any]]:
    path = Path(__file__).resolve().parent.parent / "data" / model / "test.csv"
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [{k: float(v) for k, v in row.items() if k != "label"} for row in rows[:count]]


def measure(model: str, rounds: int, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        variants(default_repository() / model, root)
        os.environ["FORWARDPASS_AUDIT_LOG"] = str(root / "audit.sqlite")
        loaded = {name: forwardpass.load(folder_name(name), repository=root, intra_op_threads=1) for name in VARIANTS}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(root / "plain" / "1" / "model.onnx"), options)
        for batch in (1, 64):
            items = records(model, batch)
            arrays = np.stack([loaded["plain"].preprocess(r)["input"] for r in items])
            raw = items[0] if batch == 1 else items
            calls = {name: (lambda m=m, raw=raw: m.predict(raw)) for name, m in loaded.items()}
            calls["onnxruntime"] = lambda arrays=arrays: session.run(None, {"input": arrays})
            timings = interleave(calls, batch, rounds=rounds, round_seconds=seconds, warmup_seconds=0.5)
            plain, decision = timings["plain"], timings["decision"]
            results[f"batch_{batch}"] = {
                "timings": {name: timing.to_dict() for name, timing in timings.items()},
                # time per call relative to plain (throughput ratios inverted): > 1 is slower
                "time_vs_plain": {name: plain.ratio_to(timings[name]) for name in VARIANTS},
                "plain_time_vs_onnxruntime": timings["onnxruntime"].ratio_to(plain),
                # what the audit adds to the decision path without audit, and both to plain
                "audit_added": decision.ratio_to(timings["decision+audit"]) - 1.0,
                "commit_audit_added": decision.ratio_to(timings["decision+commit"]) - 1.0,
                "decision_and_audit_added": plain.ratio_to(timings["decision+audit"]) - 1.0,
            }
        for loaded_model in loaded.values():
            loaded_model.close()  # commits what a grouped log still holds
        log = AuditLog(root / "audit.sqlite")
        results["audit_rows_written"] = sum(1 for _ in log.query())
        log.close()
    return results


def report_md(report: dict[str, Any]) -> str:
    lines = [
        "# Decision + audit overhead",
        "",
        f"{report['date']}, model `{report['model']}`, {report['rounds']} rounds x {report['seconds']} s per "
        "contender, 1 ORT thread, `Model.predict` in-process. Ratios are medians of round-by-round ratios.",
        "",
        "| batch | plain p50 ms | decision p50 ms | + audit (journal, default) p50 ms | + audit (commit) p50 ms "
        "| raw ORT p50 ms | decision adds | audit adds (journal) | audit adds (commit) | decision + audit add |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in (1, 64):
        r = report["results"][f"batch_{batch}"]
        p50 = {name: timing["latency_ms"]["p50"] for name, timing in r["timings"].items()}
        lines.append(
            f"| {batch} | {p50['plain']:.3f} | {p50['decision']:.3f} | {p50['decision+audit']:.3f} | "
            f"{p50['decision+commit']:.3f} | {p50['onnxruntime']:.3f} | "
            f"{100 * (r['time_vs_plain']['decision'] - 1):+.1f} % | {100 * r['audit_added']:+.1f} % | "
            f"{100 * r['commit_audit_added']:+.1f} % | {100 * r['decision_and_audit_added']:+.1f} % |"
        )
    lines += [
        "",
        "Each ratio is of time per call against the variant before it: the decision against plain, the audit "
        "against the decision without audit; the last column is decision + audit against plain. plain already "
        "checks the input schema and feeds the drift window. Journal (the default, `audit_group_ms: 20`): each "
        "answer waits for its rows to be in the journal file (a copy into the page cache; survives kill -9), a "
        "mover process moves them into SQLite. Commit (`audit_group_ms: 0`): each answer waits for its SQLite "
        "commit.",
        "",
        "The same on p50 latency, the request path alone (throughput also pays for the journal writer thread's "
        "SQLite work, which competes for the cores when other processes keep them busy):",
        "",
    ]
    for batch in (1, 64):
        p50 = {
            name: timing["latency_ms"]["p50"] for name, timing in report["results"][f"batch_{batch}"]["timings"].items()
        }
        lines.append(
            f"- batch {batch}: audit adds {100 * (p50['decision+audit'] / p50['decision'] - 1):+.1f} % (journal), "
            f"{100 * (p50['decision+commit'] / p50['decision'] - 1):+.1f} % (commit); decision + journal audit add "
            f"{100 * (p50['decision+audit'] / p50['plain'] - 1):+.1f} % to plain"
        )
    lines += [
        "",
        f"Audit rows written: {report['results']['audit_rows_written']}.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in report["machine"].items()]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="cancer_triage")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--note", default="", help="a line for the report (e.g. the machine's load)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": args.model,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "machine": machine_info(),
        "note": args.note,
        "results": measure(args.model, args.rounds, args.seconds),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decisions.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "decisions.md").write_text(report_md(report))
    print(report_md(report))


if __name__ == "__main__":
    main()
