"""What a decision rule and its audit log cost per request, as ratios of the plain prediction path.

Usage: ``python bench/decisions.py [--model cancer_triage] [--rounds 5] [--seconds 1] [--server-seconds 3]
[--out bench/results]``

The bundled tabular model with a decision rule (`cancer_triage`, `make models`) is copied four times into a
temporary repository: without its `decision:` section (plain), with the decision but `audit: false`, as built
(decision + audit log by the default journal: each request's rows appended to a memory-mapped journal file before
answering, moved into SQLite by the audit mover process every `audit_group_ms`), and with `audit_group_ms: 0` (one
SQLite commit per call before answering). Each is timed two ways:

- in-process, through `Model.predict` on one record (batch 1) and on 64 records (one call), interleaved round by
  round with raw ONNX Runtime on the already preprocessed array;
- per request, through `forwardpass serve` (all four in one server, its process tree, audit mover included, pinned
  to CPU 0) with wrk on CPU 1 posting one record to `/v2/models/<variant>/predict`, closed loop at 1 and 8
  connections, the variants' order rotating round by round; the server's CPU time per request is read from the
  kernel for the whole tree, and the audit rows are counted against the answered requests.

Writes <out>/decisions.json and <out>/decisions.md.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import yaml
from loadgen import Load, answers, post, run_load
from peers.launch import RunningServer, free_port

import forwardpass
from forwardpass.decisions import AuditLog
from forwardpass.measure import interleave, machine_info
from forwardpass.measure.stats import paired_ratio
from forwardpass.repository import default_repository

VARIANTS = ("plain", "decision", "decision+audit", "decision+commit")
SERVER_CPU, CLIENT_CPU = 0, 1
CONNECTIONS = (1, 8)


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


def measure(model: str, rounds: int, seconds: float, server_seconds: int) -> dict[str, Any]:
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
            loaded_model.close()  # moves what the journal still holds
        log = AuditLog(root / "audit.sqlite")
        results["audit_rows_written"] = sum(1 for _ in log.query())
        log.close()
        results["server"] = measure_server(root, records(model, 1)[0], rounds, server_seconds)
    return results


def measure_server(root: Path, record: dict[str, Any], rounds: int, seconds: int) -> dict[str, Any]:
    """The four variants behind one `forwardpass serve`, per request over HTTP, interleaved round by round."""
    port, audit_log = free_port(), root / "server-audit.sqlite"
    command = [
        str(Path(sys.executable).with_name("forwardpass")),
        *("serve", "--repository", str(root), "--http-port", str(port), "--grpc-port", "0"),
    ]
    body, headers = orjson.dumps(record), {"Content-Type": "application/json"}
    answered = dict.fromkeys(VARIANTS, 0)
    points: dict[str, dict[str, list[dict[str, float]]]] = {}
    environment = {"FORWARDPASS_AUDIT_LOG": str(audit_log)}
    with RunningServer(command, environment, root / "server.log", SERVER_CPU) as server:
        path = f"/v2/models/{folder_name(VARIANTS[0])}/predict"
        server.wait_first_answer(lambda: answers(port, path, body, headers))
        for name in VARIANTS:  # the first answer of each model also opens its audit journal (and mover)
            status, answer, _ = post(port, f"/v2/models/{folder_name(name)}/predict", body, headers)
            if status != 200:
                raise RuntimeError(f"{name}: HTTP {status}: {answer[:300]!r}")
            answered[name] += 1
        for connections in CONNECTIONS:
            point = points[f"c{connections}"] = {name: [] for name in VARIANTS}
            for round_index in range(rounds):
                shift = round_index % len(VARIANTS)
                for name in VARIANTS[shift:] + VARIANTS[:shift]:
                    url = f"http://127.0.0.1:{port}/v2/models/{folder_name(name)}/predict"
                    server.wait_idle()
                    cpu_before = server.cpu_seconds()
                    result = run_load(Load(url, body, headers, connections, seconds), CLIENT_CPU)
                    server.wait_idle()  # the mover's moves of this load's rows are this load's cost
                    server_cpu = server.cpu_seconds() - cpu_before
                    answered[name] += result.requests - result.errors
                    point[name].append(
                        {
                            "throughput": result.throughput,
                            "p50_ms": result.p50_ms,
                            "p99_ms": result.p99_ms,
                            "errors": result.errors,
                            "client_cpu": result.client_cpu,
                            "server_cpu_us_per_request": server_cpu / max(result.requests, 1) * 1e6,
                        }
                    )
        served = _served_requests(port)
    rows = _rows_per_model(audit_log)
    return {
        "seconds": seconds,
        "points": points,
        "summary": {key: _server_summary(point) for key, point in points.items()},
        "answered_wrk": answered,
        "answered_server": {name: served.get(folder_name(name), 0) for name in VARIANTS},
        "audit_rows": {name: rows.get(folder_name(name), 0) for name in VARIANTS},
    }


def _served_requests(port: int) -> dict[str, int]:
    """forwardpass_requests_total per model, from the server's /metrics (wrk leaves up to one request per
    connection unread when it stops: the server answered it, wrk does not count it)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    counts: dict[str, int] = {}
    for model, value in re.findall(r'^forwardpass_requests_total\{model="([^"]+)",[^}]*\} (\S+)$', text, re.M):
        counts[model] = counts.get(model, 0) + int(float(value))
    return counts


def _rows_per_model(audit_log: Path) -> dict[str, int]:
    log = AuditLog(audit_log)
    counts: dict[str, int] = {}
    for row in log.query():
        counts[row.model] = counts.get(row.model, 0) + 1
    log.close()
    return counts


def _server_summary(point: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians per variant, and paired ratios against the variant before (time per request: > 1 is slower)."""

    def series(name: str, key: str) -> list[float]:
        return [measured[key] for measured in point[name]]

    medians = {
        name: {key: float(np.median(series(name, key))) for key in point[name][0] if key != "errors"}
        | {"errors": int(sum(series(name, "errors")))}
        for name in VARIANTS
    }

    def slower(numerator: str, denominator: str) -> float:  # time per request of numerator over denominator
        return paired_ratio(series(denominator, "throughput"), series(numerator, "throughput"))

    def cpu(numerator: str, denominator: str) -> float:
        key = "server_cpu_us_per_request"
        return paired_ratio(series(numerator, key), series(denominator, key))

    return {
        "medians": medians,
        "decision_added": slower("decision", "plain") - 1.0,
        "audit_added": slower("decision+audit", "decision") - 1.0,
        "commit_audit_added": slower("decision+commit", "decision") - 1.0,
        "decision_and_audit_added": slower("decision+audit", "plain") - 1.0,
        "audit_cpu_added": cpu("decision+audit", "decision") - 1.0,
        "commit_audit_cpu_added": cpu("decision+commit", "decision") - 1.0,
    }


def report_md(report: dict[str, Any]) -> str:
    server = report["results"]["server"]
    lines = [
        "# Decision + audit overhead",
        "",
        f"{report['date']}, model `{report['model']}`, {report['rounds']} rounds. Ratios are medians of "
        "round-by-round ratios of time per request (throughput inverted) against the variant before: the decision "
        "against plain, the audit against the decision without audit; the last ratio column is decision + audit "
        "against plain. plain already checks the input schema and feeds the drift window. Journal (the default, "
        "`audit_group_ms: 100`): each answer waits for its rows to be in the journal file (a copy into the page "
        "cache; survives kill -9), the audit mover process moves them into SQLite. Commit (`audit_group_ms: 0`): "
        "each answer waits for its SQLite commit.",
        "",
        f"## Per request: `forwardpass serve`, HTTP, {server['seconds']} s per variant per round",
        "",
        "Server tree (audit mover included) pinned to CPU 0, wrk to CPU 1, one record per POST to "
        "`/v2/models/<variant>/predict`. CPU µs/req: the server tree's CPU time per answered request.",
        "",
        "| connections | plain req/s | decision req/s | + audit (journal) req/s | + audit (commit) req/s "
        "| plain p50 ms | + audit (journal) p50 ms | decision adds | audit adds (journal) | audit adds (commit) "
        "| decision + audit add | audit CPU µs/req added (journal) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, summary in server["summary"].items():
        medians = summary["medians"]
        cpu = {name: medians[name]["server_cpu_us_per_request"] for name in VARIANTS}
        lines.append(
            f"| {key[1:]} | {medians['plain']['throughput']:.0f} | {medians['decision']['throughput']:.0f} | "
            f"{medians['decision+audit']['throughput']:.0f} | {medians['decision+commit']['throughput']:.0f} | "
            f"{medians['plain']['p50_ms']:.3f} | {medians['decision+audit']['p50_ms']:.3f} | "
            f"{_percent(summary['decision_added'])} | {_percent(summary['audit_added'])} | "
            f"{_percent(summary['commit_audit_added'])} | {_percent(summary['decision_and_audit_added'])} | "
            f"{cpu['decision+audit'] - cpu['decision']:+.1f} ({_percent(summary['audit_cpu_added'])}) |"
        )
    answered, rows = server["answered_server"], server["audit_rows"]
    lines += [
        "",
        "Audit rows against the requests the server answered (its `forwardpass_requests_total`, warm-up included): "
        + ", ".join(f"{name} {rows[name]} / {answered[name]}" for name in VARIANTS)
        + " (plain and decision write none).",
        "",
        f"## In-process: `Model.predict`, {report['seconds']} s per contender per round, 1 ORT thread",
        "",
        "| batch | plain p50 ms | decision p50 ms | + audit (journal) p50 ms | + audit (commit) p50 ms "
        "| raw ORT p50 ms | decision adds | audit adds (journal) | audit adds (commit) | decision + audit add |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in (1, 64):
        r = report["results"][f"batch_{batch}"]
        p50 = {name: timing["latency_ms"]["p50"] for name, timing in r["timings"].items()}
        lines.append(
            f"| {batch} | {p50['plain']:.3f} | {p50['decision']:.3f} | {p50['decision+audit']:.3f} | "
            f"{p50['decision+commit']:.3f} | {p50['onnxruntime']:.3f} | "
            f"{_percent(r['time_vs_plain']['decision'] - 1)} | {_percent(r['audit_added'])} | "
            f"{_percent(r['commit_audit_added'])} | {_percent(r['decision_and_audit_added'])} |"
        )
    lines += [
        "",
        f"Audit rows written in-process: {report['results']['audit_rows_written']}.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in report["machine"].items()]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def _percent(ratio: float) -> str:
    return f"{100 * ratio:+.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="cancer_triage")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per contender per round, in-process")
    parser.add_argument("--server-seconds", type=int, default=3, help="per variant per round, over HTTP (whole s)")
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
        "results": measure(args.model, args.rounds, args.seconds, args.server_seconds),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decisions.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "decisions.md").write_text(report_md(report))
    print(report_md(report))


if __name__ == "__main__":
    main()
