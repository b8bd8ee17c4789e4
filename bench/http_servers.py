"""HTTP server ceiling: the thin floor's tiny-MLP V2 infer route (bench/peers/thin.py: Starlette + orjson, ONNX Runtime
inline) served by uvicorn, as forwardpass and the floor are today, against the same work served by granian (a Rust HTTP
server) through its ASGI interface and its own RSGI interface, and Triton 2.51 as the reference: what no handler of
ours can beat is the server under it. A bare ASGI app (no framework) on both servers tells the server's cost from
Starlette's.

Usage: python bench/http_servers.py [--rounds 3] [--seconds 3] [--servers uvicorn-starlette,granian-rsgi,...]
                                    [--base DIR] [--out DIR]

- Servers (bench/peers/thin_servers.py): `uvicorn-starlette` (thin.py exactly as bench/server.py runs it: uvloop,
  httptools), `uvicorn-asgi` (a bare ASGI app), `granian-starlette`, `granian-asgi` and `granian-rsgi` (granian's own
  process model: a supervisor and one worker process; RSGI with a bare app), `granian-embed-starlette` and
  `granian-embed-rsgi` (granian's embedded server, in the process that owns the event loop, as forwardpass would
  have to run it beside its gRPC server and batcher), `triton` (bench/server.py's Triton). All Python servers run from
  one virtualenv (.build/peers/granian/) with the project's versions of uvicorn, Starlette, orjson, numpy and ONNX
  Runtime; granian with one worker, one Rust runtime thread, one Python thread. `forwardpass` is `forwardpass serve`
  as bench/server.py runs it (dynamic batching, no gRPC); `forwardpass-base` the same from another source tree
  (`--base DIR`, e.g. `git archive <commit> | tar -x -C DIR`), to compare a change with the commit before it.
- Pinning: each server's whole process tree on CPU 0 (`taskset`, ONNX Runtime on one thread); the clients and this
  script on CPU 1.
- Load, tiny MLP (64 -> 128 -> 10), concurrency 32, one sample per request, V2 JSON and the binary tensor extension:
  wrk (bench/loadgen.py, closed loop) and Triton's perf_analyzer (bench/server.py's flags). Answers are checked
  against ONNX Runtime in-process before the load.
- Rounds: every server in turn (A, B, C, ... then again); figures are medians over rounds, ratios medians of
  round-by-round ratios, so a slow drift of the shared machine cancels.
- Server CPU per request: the tree's user + system time over a run divided by the infer requests the server itself
  counted in that run (`GET /answered`; Triton: its statistics extension), for both clients. On a shared machine it
  is the figure least disturbed by other work on the server's core; req/s is not.

Writes <out>/http_servers.json and <out>/http_servers.md.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import http.client
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from loadgen import Load, answers, ensure_wrk, post, run_load, v2_outputs, v2_request
from peers.launch import (
    PEERS,
    SERVERS,
    RunningServer,
    ensure_virtualenv,
    free_port,
    peer_versions,
    triton_command,
)
from peers.launch import command_for as serve_command  # the name command_for is this script's own
from server import CLIENT_CPU, SERVER_CPU, TOLERANCE, BenchModel, build_models, perf_analyzer

from forwardpass.measure import machine_info
from forwardpass.measure.stats import paired_ratio

HERE = Path(__file__).resolve().parent
CONCURRENCY = 32
FORMATS = ("json", "binary")
CLIENTS = ("wrk", "perf_analyzer")
LABELS = {
    "uvicorn-starlette": "uvicorn + Starlette (thin floor, as today)",
    "uvicorn-asgi": "uvicorn, bare ASGI app",
    "granian-starlette": "granian ASGI + Starlette (worker process)",
    "granian-asgi": "granian ASGI, bare app (worker process)",
    "granian-rsgi": "granian RSGI, bare app (worker process)",
    "granian-embed-starlette": "granian ASGI + Starlette, embedded",
    "granian-embed-rsgi": "granian RSGI, bare app, embedded",
    "triton": "Triton 2.51 (Python backend + ORT)",
    "forwardpass": "forwardpass serve (this tree)",
    "forwardpass-base": "forwardpass serve (--base tree)",
}
# Ratios to these, where they ran: the server as today, the same server without a framework, the reference, and
# forwardpass before a change
REFERENCES = ("uvicorn-starlette", "uvicorn-asgi", "triton", "forwardpass-base")
COUNTS_IN_STATISTICS = ("triton", "forwardpass", "forwardpass-base")  # the V2 statistics extension counts answers


def command_for(
    key: str, model: BenchModel, port: int, workdir: Path, base: Path | None
) -> tuple[list[str], dict[str, str]]:
    if key == "triton":
        return triton_command(SERVERS["triton"], model.name, model.path, port, workdir)
    if key.startswith("forwardpass"):
        command, environment = serve_command(SERVERS["forwardpass"], model.name, model.path, port, workdir)
        if key == "forwardpass":
            return command, environment
        if base is None:
            raise ValueError("forwardpass-base serves the source tree given by --base")
        compileall.compile_dir(base / "forwardpass", quiet=1)  # as launch.command_for does for this tree
        return command, environment | {"PYTHONPATH": str(base)}  # found before the editable install's finder
    python = str(ensure_virtualenv("granian") / "bin" / "python")
    served = [str(model.path), "--name", model.name, "--port", str(port)]
    if key == "uvicorn-starlette":  # the floor exactly as bench/server.py runs it
        return [python, str(PEERS / "thin.py"), *served], {"OMP_NUM_THREADS": "1"}
    server, _, app = key.rpartition("-")
    return [python, str(PEERS / "thin_servers.py"), *served, "--server", server, "--app", app], {"OMP_NUM_THREADS": "1"}


def answered(key: str, port: int, model: BenchModel) -> int:
    """Infer requests the server has answered so far (Triton: its statistics extension's success count)."""
    where = f"/v2/models/{model.name}/stats" if key in COUNTS_IN_STATISTICS else "/answered"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", where)
        document = connection.getresponse().read()
    finally:
        connection.close()
    if key in COUNTS_IN_STATISTICS:
        return int(json.loads(document)["model_stats"][0]["inference_stats"]["success"]["count"])
    return int(document)


def measure(key: str, model: BenchModel, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start `key` serving the MLP, check its answers, run every load point, stop it."""
    port = free_port()
    path = f"/v2/models/{model.name}/infer"
    requests = {fmt: v2_request("input", model.sample, "output", fmt == "binary") for fmt in FORMATS}
    command, environment = command_for(key, model, port, workdir, args.base)
    record: dict[str, Any] = {"points": {}}
    with RunningServer(command, environment, workdir / "server.log", SERVER_CPU) as server:
        body, headers = requests["json"]
        record["cold_start_s"] = server.wait_first_answer(lambda: answers(port, path, body, headers))
        record["processes"] = {str(pid): _threads(pid) for pid in server.pids()}
        for fmt, (body, headers) in requests.items():
            status, answer, answer_headers = post(port, path, body, headers)
            difference = float(np.max(np.abs(v2_outputs(answer, answer_headers)["output"] - model.expected)))
            if status != 200 or difference > TOLERANCE:
                raise RuntimeError(f"{key} {fmt}: HTTP {status}, answer differs from ONNX Runtime by {difference:g}")
        url = f"http://127.0.0.1:{port}{path}"
        for fmt, (body, headers) in requests.items():
            server.wait_idle()
            run_load(Load(url, body, headers, CONCURRENCY, args.warmup), CLIENT_CPU)
            server.wait_idle()
            before = server.cpu_seconds(), answered(key, port, model)
            result = run_load(Load(url, body, headers, CONCURRENCY, args.seconds), CLIENT_CPU)
            point = result.to_dict() | {
                "server_cpu_us_per_request": _cpu_us_per_request(server, key, port, model, before)
            }
            record["points"][f"wrk/{fmt}"] = point
        for fmt in FORMATS:
            server.wait_idle()
            before = server.cpu_seconds(), answered(key, port, model)
            client_before, started = _children_cpu_seconds(), time.perf_counter()
            try:
                point = perf_analyzer(model, f"127.0.0.1:{port}", "http", fmt, CONCURRENCY, args.seconds, workdir)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:  # one point lost, not the server's round
                record.setdefault("failed_points", {})[f"perf_analyzer/{fmt}"] = str(exc)[-400:]
                continue
            point["server_cpu_us_per_request"] = _cpu_us_per_request(server, key, port, model, before)
            point["client_cpu"] = (_children_cpu_seconds() - client_before) / (time.perf_counter() - started)
            record["points"][f"perf_analyzer/{fmt}"] = point
    return record


def _cpu_us_per_request(
    server: RunningServer, key: str, port: int, model: BenchModel, before: tuple[float, int]
) -> float:
    """The tree's CPU time since `before` (CPU seconds, requests answered) per request answered since."""
    cpu_seconds, requests = server.cpu_seconds() - before[0], answered(key, port, model) - before[1]
    return cpu_seconds / max(requests, 1) * 1e6


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_rounds(args: argparse.Namespace, model: BenchModel, keys: list[str]) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        current: dict[str, Any] = {}
        for key in keys:
            with tempfile.TemporaryDirectory(prefix=f"bench-http-{key}-") as workdir:
                try:
                    current[key] = record = measure(key, model, args, Path(workdir))
                except Exception as exc:  # one server's failure is reported, the other servers still run
                    current[key] = record = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"round {index + 1} {key}: {_one_line(record)}", flush=True)
        rounds.append(current)
    return rounds


def _one_line(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"FAILED {record['error'][:400]}"
    return " | ".join(
        f"{point_key} {point['throughput']:,.0f}/s {point['server_cpu_us_per_request']:.0f}us p99 {point['p99_ms']:.1f}"
        for point_key, point in record["points"].items()
    )


def summarize(rounds: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Per (server, client, format): medians over rounds; ratios to each of REFERENCES as medians of per-round ratios
    (requests per CPU second: the inverse ratio of CPU per request)."""
    rows = []
    for key in keys:
        for client in CLIENTS:
            for fmt in FORMATS:
                point_key = f"{client}/{fmt}"
                points = [r[key]["points"][point_key] for r in rounds if point_key in r[key].get("points", {})]
                if not points:
                    continue
                row: dict[str, Any] = {"server": key, "client": client, "format": fmt, "rounds": len(points)}
                for name in ("throughput", "server_cpu_us_per_request", "p50_ms", "p99_ms", "client_cpu"):
                    row[name] = statistics.median(p[name] for p in points)
                row["p99_over_p50"] = statistics.median(p["p99_ms"] / p["p50_ms"] for p in points)
                for reference in REFERENCES:
                    pairs = [
                        (r[key]["points"][point_key], r[reference]["points"][point_key])
                        for r in rounds
                        if point_key in r[key].get("points", {}) and point_key in r.get(reference, {}).get("points", {})
                    ]
                    if pairs:
                        row[f"throughput_vs_{reference}"] = paired_ratio(
                            [p["throughput"] for p, _ in pairs], [q["throughput"] for _, q in pairs]
                        )
                        row[f"requests_per_cpu_s_vs_{reference}"] = paired_ratio(
                            [q["server_cpu_us_per_request"] for _, q in pairs],
                            [p["server_cpu_us_per_request"] for p, _ in pairs],
                        )
                rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines = [
        "# HTTP server ceiling: the thin floor's V2 infer route under uvicorn, granian (ASGI, RSGI) and Triton",
        "",
        f"Date: {result['date']}. Command: `{result['command']}`. {result['rounds']} interleaved rounds "
        f"(servers in turn each round), {result['seconds']} s per point after {result['warmup']} s of warm-up (wrk) "
        "or perf_analyzer's three windows of that length; medians. Tiny MLP (64 -> 128 -> 10), concurrency "
        f"{CONCURRENCY}, one sample per request. Server tree pinned to CPU {SERVER_CPU} (ONNX Runtime 1 thread, "
        f"granian 1 worker / 1 runtime thread / 1 Python thread), clients on CPU {CLIENT_CPU}.",
        "",
        "Ratios are medians of round-by-round ratios. Requests per CPU second (req/CPU s) = the inverse of the server "
        "tree's CPU per request, counted by the server; the figure least disturbed by other work on a shared machine. "
        "Columns: `/ X req/s` and `/ X req/CPU s` compare with server X in the same round.",
        "",
        "| server | client | format | req/s | server CPU µs/req | p50 ms | p99 ms | p99/p50 | client CPU | "
        + " | ".join(f"/ {reference} req/s | / {reference} req/CPU s" for reference in REFERENCES)
        + " |",
        "|---|---|---|---|---|---|---|---|---|" + "---|---|" * len(REFERENCES),
    ]
    for row in result["summary"]:
        lines.append(
            f"| {LABELS[row['server']]} | {row['client']} | {row['format']} | {row['throughput']:,.0f} "
            f"| {row['server_cpu_us_per_request']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {row['p99_over_p50']:.1f} | {row['client_cpu']:.0%} "
            + "".join(
                f"| {ratio(row.get(f'throughput_vs_{r}'))} | {ratio(row.get(f'requests_per_cpu_s_vs_{r}'))} "
                for r in REFERENCES
            )
            + "|"
        )
    errors = [
        f"- round {index + 1} {key}: {failure}"
        for index, round_records in enumerate(result["per_round"])
        for key, record in round_records.items()
        for failure in ([record["error"]] if "error" in record else []) + list(record.get("failed_points", {}).values())
    ]
    if errors:
        lines += ["", "Failures:", *errors]
    processes = {
        key: record["processes"]
        for round_records in result["per_round"]
        for key, record in round_records.items()
        if "processes" in record
    }
    lines += ["", "## Process trees (threads per process, round as last measured)", ""]
    lines += [f"- {LABELS[key]}: {len(p)} process(es), threads {list(p.values())}" for key, p in processes.items()]
    lines += ["", "## Machine", ""]
    lines += [f"- {name}: {value}" for name, value in result["machine"].items()]
    lines += ["", f"Versions (.build/peers/granian/): {result['peer_versions']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3, help="seconds per wrk point and per perf_analyzer window")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds of wrk load before each point")
    parser.add_argument("--servers", default=",".join(LABELS), help=f"comma-separated, of: {', '.join(LABELS)}")
    parser.add_argument("--base", type=Path, help="source tree (holding forwardpass/) that forwardpass-base serves")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    keys = args.servers.split(",")
    unknown = sorted(set(keys) - set(LABELS))
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(LABELS)}")
    if "forwardpass-base" in keys and (args.base is None or not (args.base / "forwardpass").is_dir()):
        parser.error("forwardpass-base needs --base DIR, a source tree with forwardpass/ in it")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the server being measured is stopped
    machine = machine_info() | {"server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU}
    os.sched_setaffinity(0, {CLIENT_CPU})
    ensure_wrk()
    for kind in ("granian", "triton"):  # triton: perf_analyzer's libraries come from its wheel
        ensure_virtualenv(kind)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-http-models-") as folder:
        model = build_models(Path(folder), ["mlp"])["mlp"]
        rounds = run_rounds(args, model, keys)
    machine["load_average_1_5_15_min_before_after"] = [load_before, os.getloadavg()]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/http_servers.py " + " ".join(sys.argv[1:]),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "machine": machine,
        "peer_versions": peer_versions("granian"),
        "per_round": rounds,
        "summary": summarize(rounds, keys),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http_servers.json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown(result)
    (args.out / "http_servers.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
