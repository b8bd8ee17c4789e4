"""Server benchmark: forwardpass against its Python peers and raw ONNX Runtime, same models, same client, same cores.

Usage: python bench/server.py [--rounds 3] [--seconds 5] [--warmup 1] [--servers forwardpass,thin,...]
                              [--models mlp,cnn] [--out bench/results]

- Models (built here with torch, ONNX opset 17, dynamic batch, random weights): a tiny MLP 64 -> 128 -> 10 and a
  ResNet-style CNN of ~1.6 GFLOPs at 3x224x224. Each server serves one model at a time.
- Servers (bench/peers/launch.py): forwardpass with dynamic batching and with batching off, a thin uvicorn + orjson
  server (the floor), MLServer 1.7.1 with and without adaptive batching, LitServe with and without batching, and
  NVIDIA Triton 2.51 (the server binary of nvidia-pytriton's wheel, its dynamic batcher, the model in its Python
  backend calling ONNX Runtime: Triton's C++ ONNX Runtime backend is not on PyPI). The peers
  run from their own virtualenvs under .build/peers/, created on first run. Every batching server gets the same window
  (32 requests, 2 ms).
- Pinning: each server's whole process tree on CPU 0 (`taskset`; ONNX Runtime with one intra-op thread), the load
  generator (wrk, bench/loadgen.py) and this script on CPU 1.
- Load: closed loop at concurrency 1 and 32, one sample per request, V2 JSON and (where the server supports it) the
  binary tensor data extension. Before the load, one answer per format is checked against ONNX Runtime in-process.
- Triton's own load generator, perf_analyzer (tritonclient 2.41's binary), against forwardpass and Triton with the
  MLP: HTTP binary, HTTP JSON and gRPC at concurrency 1, 8 and 32 (`--perf-analyzer`, on by default).
- Figures: req/s, p50/p90/p99 latency, the client's CPU share (a figure whose client used > 90% of its core is
  refused), the server tree's CPU per request; cold start (spawn -> first 200 OK) and idle memory (PSS of the tree)
  with the MLP; raw ONNX Runtime throughput at batch 1 on the server core, measured in every round.
- Rounds interleave everything (server order rotates) and the reported figure is the median over rounds; ratios are
  medians of round-by-round ratios.

Writes <out>/server.json and <out>/server.md (tables, targets, machine info, date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loadgen import Load, answers, ensure_wrk, post, run_load, v2_outputs, v2_request
from peers.launch import (
    PEER_PACKAGES,
    SERVERS,
    RunningServer,
    ServerSpec,
    command_for,
    ensure_virtualenv,
    free_port,
    peer_versions,
    perf_analyzer_libraries,
)

from forwardpass.measure import machine_info
from forwardpass.measure.stats import paired_ratio

HERE = Path(__file__).resolve().parent
SERVER_CPU, CLIENT_CPU = 0, 1
CONCURRENCIES = (1, 32)
PERF_ANALYZER = Path(sys.executable).with_name("perf_analyzer")  # tritonclient 2.41's binary, in the dev extra
PERF_ANALYZER_POINTS = (("http", "binary"), ("http", "json"), ("grpc", "binary"))
PERF_ANALYZER_CONCURRENCIES = (1, 8, 32)
SLOW_MODEL_STRETCH = 2  # the CNN's load points run this many times longer than the MLP's
TOLERANCE = 1e-3  # max abs difference between a server's answer and ONNX Runtime in-process


@dataclass(frozen=True, slots=True)
class BenchModel:
    name: str
    path: Path
    sample: np.ndarray  # one request's input: batch of 1
    expected: np.ndarray  # ONNX Runtime's answer to it
    gflops: float


def build_models(folder: Path, names: list[str]) -> dict[str, BenchModel]:
    import torch  # here, not at the top: the raw ONNX Runtime subprocesses run this file too and need no torch
    from engine import Block, export
    from torch import nn

    torch.manual_seed(0)
    architectures = {
        "mlp": (nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)), (1, 64)),
        "cnn": (
            nn.Sequential(
                nn.Conv2d(3, 32, 3, 2, 1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                Block(32, 64, 2),
                Block(64, 128, 2),
                Block(128, 256, 2),
                Block(256, 256, 1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(256, 1000),
            ),
            (1, 3, 224, 224),
        ),
    }
    models = {}
    for name in names:
        network, shape = architectures[name]
        path = folder / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            described = export(network, torch.randn(*shape), path)
        sample = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        expected = _session(path).run(None, {"input": sample})[0]
        models[name] = BenchModel(name, path, sample, expected, described["gflops_per_item"])
    return models


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def raw_ort(path: Path, shape: tuple[int, ...], seconds: float) -> dict[str, float]:
    """ONNX Runtime in a fresh process on the server core, batch 1, one thread: inferences per second and CPU
    microseconds per inference."""
    command = [sys.executable, str(Path(__file__)), "--raw-ort", str(path), "--shape", ",".join(map(str, shape))]
    command = ["taskset", "-c", str(SERVER_CPU), *command, "--seconds", str(seconds)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return {key: float(value) for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def _raw_ort_main(path: str, shape: str, seconds: float) -> None:
    session = _session(Path(path))
    feeds = {"input": np.random.default_rng(0).standard_normal([int(d) for d in shape.split(",")]).astype(np.float32)}
    for _ in range(3):
        session.run(None, feeds)
    calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        session.run(None, feeds)
        calls += 1
    cpu_us = (time.process_time() - cpu_started) / calls * 1e6
    print(json.dumps({"throughput": calls / (time.perf_counter() - started), "cpu_us": cpu_us}))


def measure_server(spec: ServerSpec, model: BenchModel, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start `spec` serving `model`, time its first answer, check its answers, run every load point, stop it."""

    port = free_port()
    path = f"/v2/models/{model.name}/infer"
    requests = {fmt: v2_request("input", model.sample, "output", fmt == "binary") for fmt in spec.formats}
    speaks_grpc = spec.kind in ("forwardpass", "triton") and args.perf_analyzer and model.name == "mlp"
    grpc_port = free_port() if speaks_grpc else 0
    command, environment = command_for(spec, model.name, model.path, port, workdir, grpc_port)
    record: dict[str, Any] = {"points": {}}
    with RunningServer(command, environment, workdir / "server.log", SERVER_CPU) as server:
        body, headers = requests["json"]
        record["cold_start_s"] = server.wait_first_answer(lambda: answers(port, path, body, headers))
        time.sleep(1.0)
        record["idle_memory"] = server.memory_mb()
        for fmt, (body, headers) in requests.items():
            status, answer, answer_headers = post(port, path, body, headers)
            if status != 200:
                raise RuntimeError(f"{spec.key} {fmt}: HTTP {status}: {answer[:300]!r}")
            output = v2_outputs(answer, answer_headers)["output"]
            record[f"max_abs_diff_{fmt}"] = difference = float(np.max(np.abs(output - model.expected)))
            if difference > TOLERANCE:
                raise RuntimeError(f"{spec.key} {fmt}: answer differs from ONNX Runtime by {difference:g}")
        url = f"http://127.0.0.1:{port}{path}"
        # The CNN's closed loop at c=32 turns over about once a second: give it longer so start and end matter less.
        stretch = 1 if model.name == "mlp" else SLOW_MODEL_STRETCH
        for concurrency in CONCURRENCIES:
            for fmt, (body, headers) in requests.items():
                server.wait_idle()
                run_load(Load(url, body, headers, concurrency, args.warmup * stretch), CLIENT_CPU)
                server.wait_idle()
                cpu_before = server.cpu_seconds()
                result = run_load(Load(url, body, headers, concurrency, args.seconds * stretch), CLIENT_CPU)
                server_cpu = server.cpu_seconds() - cpu_before
                point = result.to_dict() | {"server_cpu_us_per_request": server_cpu / max(result.requests, 1) * 1e6}
                record["points"][f"{fmt}/c{concurrency}"] = point
        if speaks_grpc:
            record["perf_analyzer"] = {}
            for protocol, fmt in PERF_ANALYZER_POINTS:
                for concurrency in PERF_ANALYZER_CONCURRENCIES:
                    server.wait_idle()
                    where = f"127.0.0.1:{grpc_port if protocol == 'grpc' else port}"
                    try:
                        point = perf_analyzer(model, where, protocol, fmt, concurrency, args.seconds, workdir)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # one point lost, not the server's round
                        print(f"{spec.key}: {str(exc)[-300:]}", flush=True)
                        continue
                    record["perf_analyzer"][f"{protocol}-{fmt}/c{concurrency}"] = point
    return record


def perf_analyzer(
    model: BenchModel, where: str, protocol: str, fmt: str, concurrency: int, seconds: int, workdir: Path
) -> dict[str, float]:
    """One perf_analyzer point on the client core: req/s and p50/p99 latency (ms) of its last, stable window."""
    report = workdir / f"perf-{protocol}-{fmt}-{concurrency}.csv"
    command = [
        str(PERF_ANALYZER),
        *("-m", model.name, "-u", where, "-i", protocol, "--concurrency-range", str(concurrency)),
        *("--shape", f"input:{','.join(map(str, model.sample.shape[1:]))}", "--input-data", "random"),
        # a shared machine rarely gives perf_analyzer's stable windows: accept its third window whatever it shows
        *("--measurement-interval", str(seconds * 1000), "--max-trials", "3", "--stability-percentage", "1000"),
        *(("--input-tensor-format", fmt, "--output-tensor-format", fmt) if protocol == "http" else ()),
        *("-f", str(report)),
    ]
    libraries = {"LD_LIBRARY_PATH": str(perf_analyzer_libraries(workdir / "perf-analyzer-libs"))}
    done = subprocess.run(
        ["taskset", "-c", str(CLIENT_CPU), *command],
        env={**os.environ, **libraries},
        capture_output=True,
        text=True,
        timeout=seconds * 12 + 60,
    )
    if done.returncode != 0 or not report.is_file():
        raise RuntimeError(f"perf_analyzer {protocol} {fmt} c={concurrency}: {(done.stdout + done.stderr)[-600:]}")
    header, values = report.read_text().splitlines()[:2]
    row = dict(zip(header.split(","), values.split(","), strict=False))
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def run_rounds(args: argparse.Namespace, models: dict[str, BenchModel], specs: list[ServerSpec]) -> dict[str, Any]:
    """Every round: per model, raw ONNX Runtime then every server (order rotated per round)."""
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        current: dict[str, Any] = {"raw_ort": {}, "servers": {}}
        order = specs[index % len(specs) :] + specs[: index % len(specs)]
        for model in models.values():
            current["raw_ort"][model.name] = baseline = raw_ort(model.path, model.sample.shape, args.seconds)
            print(f"round {index + 1} {model.name}: raw ORT {baseline['throughput']:,.0f}/s", flush=True)
            for spec in order:
                with tempfile.TemporaryDirectory(prefix=f"bench-{spec.key}-") as workdir:
                    try:
                        record = measure_server(spec, model, args, Path(workdir))
                    except Exception as exc:
                        record = {"error": f"{type(exc).__name__}: {exc}"}
                current["servers"].setdefault(spec.key, {})[model.name] = record
                print(f"round {index + 1} {model.name} {spec.key}: {_one_line(record)}", flush=True)
        rounds.append(current)
    return {"per_round": rounds}


def _one_line(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"FAILED {record['error'][:400]}"
    parts = [f"start {record['cold_start_s']:.2f}s", f"PSS {record['idle_memory']['pss_mb']:.0f}MB"]
    for key, point in record["points"].items():
        parts.append(f"{key} {point['throughput']:,.0f}/s p50 {point['p50_ms']:.2f}ms cli {point['client_cpu']:.0%}")
    return " | ".join(parts)


# ---------------------------------------------------------------- summary


def summarize(rounds: list[dict[str, Any]], models: list[str], servers: list[str]) -> dict[str, Any]:
    """Medians over rounds per (server, model, format, concurrency), ratios as medians of per-round ratios."""
    raw_ort = {
        name: {key: statistics.median(r["raw_ort"][name][key] for r in rounds) for key in ("throughput", "cpu_us")}
        for name in models
    }
    rows: list[dict[str, Any]] = []
    startup: list[dict[str, Any]] = []
    for server in servers:
        for name in models:
            records = [r["servers"][server][name] for r in rounds]
            good = [record for record in records if "error" not in record]
            if not good:
                rows.append({"server": server, "model": name, "error": records[0]["error"]})
                continue
            if name == "mlp" or len(models) == 1:
                startup.append(
                    {
                        "server": server,
                        "model": name,
                        "cold_start_s": statistics.median(r["cold_start_s"] for r in good),
                        "idle_pss_mb": statistics.median(r["idle_memory"]["pss_mb"] for r in good),
                        "idle_rss_mb": statistics.median(r["idle_memory"]["rss_mb"] for r in good),
                    }
                )
            for key in good[0]["points"]:
                fmt, concurrency = key.split("/c")
                points = [record["points"][key] for record in good]
                saturated = any(p["client_saturated"] for p in points)
                throughputs = [p["throughput"] for p in points]
                answered = [p for p in points if p["requests"]]  # wrk reports latency 0 when nothing came back
                row = {
                    "server": server,
                    "model": name,
                    "format": fmt,
                    "concurrency": int(concurrency),
                    "rounds": len(points),
                    "throughput": None if saturated else statistics.median(throughputs),
                    **{
                        f"{q}_ms": statistics.median(p[f"{q}_ms"] for p in answered) if answered else None
                        for q in ("p50", "p90", "p99")
                    },
                    "errors": sum(p["errors"] for p in points),
                    "client_cpu": max(p["client_cpu"] for p in points),
                    "client_saturated": saturated,
                    "server_cpu_us_per_request": statistics.median(p["server_cpu_us_per_request"] for p in points),
                    "max_abs_diff": max(record[f"max_abs_diff_{fmt}"] for record in good),
                }
                paired = _paired(rounds, server, name, key)
                throughputs_vs_raw = [(p["throughput"], r["raw_ort"][name]["throughput"]) for p, r in paired]
                row["vs_raw_ort"] = None if saturated else paired_ratio(*zip(*throughputs_vs_raw, strict=True))
                # Throughput ratios suffer when other work shares the server core; CPU per request much less so.
                cpu_vs_raw = [(r["raw_ort"][name]["cpu_us"], p["server_cpu_us_per_request"]) for p, r in paired]
                row["cpu_efficiency_vs_raw_ort"] = paired_ratio(*zip(*cpu_vs_raw, strict=True))
                rows.append(row)
    return {
        "raw_ort_batch1": raw_ort,
        "rows": rows,
        "startup": startup,
        "ratios": _ratios(rounds, rows),
        "perf_analyzer": _perf_analyzer_rows(rounds),
    }


def _perf_analyzer_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """perf_analyzer's points per (server, protocol/format, concurrency): medians over rounds, and forwardpass /
    Triton as the median of per-round ratios."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for current in rounds:
        for server, records in current["servers"].items():
            for point_key, point in records.get("mlp", {}).get("perf_analyzer", {}).items():
                found.setdefault((server, point_key), []).append(point)
    rows = []

    def order(item: tuple[tuple[str, str], list[dict[str, Any]]]) -> tuple[str, str, int]:
        (server, point_key), _ = item
        point, concurrency = point_key.split("/c")
        return server, point, int(concurrency)

    for (server, point_key), points in sorted(found.items(), key=order):
        row: dict[str, Any] = {"server": server, "point": point_key, "rounds": len(points)}
        for figure in ("throughput", "p50_ms", "p99_ms"):
            row[figure] = statistics.median(p[figure] for p in points)
        row["p99_over_p50"] = row["p99_ms"] / row["p50_ms"] if row["p50_ms"] else None
        if server != "triton":

            def point(current: dict[str, Any], name: str, key: str = point_key) -> dict[str, Any] | None:
                return current["servers"].get(name, {}).get("mlp", {}).get("perf_analyzer", {}).get(key)

            pairs = [
                (mine["throughput"], theirs["throughput"])
                for current in rounds
                if (mine := point(current, server)) and (theirs := point(current, "triton"))
            ]
            row["vs_triton"] = paired_ratio(*zip(*pairs, strict=True)) if pairs else None
        rows.append(row)
    return rows


def _paired(rounds: list[dict[str, Any]], server: str, model: str, key: str) -> list[tuple[dict[str, Any], Any]]:
    """(point, round) for every round where the server ran that point."""
    found = []
    for current in rounds:
        record = current["servers"].get(server, {}).get(model, {})
        if key in record.get("points", {}):
            found.append((record["points"][key], current))
    return found


def _ratios(rounds: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """forwardpass (dynamic batching, each format) / every other server's JSON figure, paired by round."""

    ratios = []
    ours = [row for row in rows if row["server"] == "forwardpass" and "error" not in row and row["throughput"]]
    for row in ours:
        key = f"{row['format']}/c{row['concurrency']}"
        for peer in sorted({r["server"] for r in rows if r["server"] != "forwardpass"}):
            peer_key = f"json/c{row['concurrency']}"
            pairs = []
            for current in rounds:
                mine = current["servers"].get("forwardpass", {}).get(row["model"], {}).get("points", {}).get(key)
                theirs = current["servers"].get(peer, {}).get(row["model"], {}).get("points", {}).get(peer_key)
                measured = mine and theirs and not (mine["client_saturated"] or theirs["client_saturated"])
                if measured and theirs["throughput"] > 0:  # a peer that answered nothing in a round has no ratio
                    pairs.append((mine["throughput"], theirs["throughput"]))
            if pairs:
                ratio = paired_ratio(*zip(*pairs, strict=True))
                ratios.append({**{k: row[k] for k in ("model", "format", "concurrency")}, "peer": peer, "ratio": ratio})
    return ratios


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's acceptance figures, checked against forwardpass with dynamic batching."""

    def row(model: str, fmt: str, concurrency: int, server: str = "forwardpass") -> dict[str, Any] | None:
        for candidate in summary["rows"]:
            wanted = (server, model, fmt, concurrency)
            if (
                "error" not in candidate
                and tuple(candidate[k] for k in ("server", "model", "format", "concurrency")) == wanted
            ):
                return candidate
        return None

    checks: list[dict[str, Any]] = []

    def check(what: str, value: float | None, target: float, at_least: bool) -> None:
        passed = None if value is None else (value >= target if at_least else value <= target)
        goal = f"{'>=' if at_least else '<='} {target:g}"
        checks.append({"target": what, "value": value, "goal": goal, "met": passed})

    for fmt in ("json", "binary"):
        mlp32, mlp1, cnn32 = row("mlp", fmt, 32), row("mlp", fmt, 1), row("cnn", fmt, 32)
        if mlp32:
            check(f"tiny MLP req/s, c=32, {fmt}", mlp32["throughput"], 5000, True)
        if mlp1 and mlp1["p50_ms"] is not None:
            check(f"tiny MLP p50 ms, c=1, {fmt}", mlp1["p50_ms"], 0.5, False)
        if cnn32:
            goal = 0.90 if fmt == "binary" else 0.42
            check(f"CNN throughput / raw ORT, c=32, {fmt}", cnn32["vs_raw_ort"], goal, True)
        off = row("mlp", fmt, 1, "forwardpass-nobatch")
        if mlp1 and off and mlp1["p50_ms"] and off["p50_ms"]:
            check(f"tiny MLP p50 c=1 batching on / off, {fmt}", mlp1["p50_ms"] / off["p50_ms"], 1.10, False)
    for start in summary["startup"]:
        if start["server"] == "forwardpass":
            check("cold start to first answer, s", start["cold_start_s"], 1.0, False)
            check("idle memory (PSS of the process tree), MB", start["idle_pss_mb"], 150, False)
    return checks


# ---------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "client-bound" if value is None else f"{value:,.{digits}f}{suffix}"


def _ms(value: float | None) -> str:
    return "none answered" if value is None else f"{value:.2f}"


def markdown(result: dict[str, Any], labels: dict[str, str]) -> str:
    summary = result["summary"]
    lines = [
        "# Server benchmark: forwardpass vs Triton and Python peers",
        "",
        f"Date: {result['date']}. Command: `{result['command']}`. {result['rounds']} interleaved rounds of "
        f"{result['seconds']:g} s per point (after {result['warmup']:g} s warm-up); medians. Server tree pinned to "
        f"CPU {SERVER_CPU}, ONNX Runtime 1 intra-op thread; load generator (wrk, closed loop, one sample per request) "
        f"pinned to CPU {CLIENT_CPU}. A figure whose client used > 90% of its core is refused ('client-bound').",
        "",
        "Models: " + "; ".join(f"{m['name']} ({m['gflops']:.3g} GFLOPs/sample)" for m in result["models"]) + ". "
        "Raw ONNX Runtime, batch 1, same core: "
        + ", ".join(
            f"{name} {value['throughput']:,.0f}/s ({value['cpu_us']:,.0f} µs CPU each)"
            for name, value in summary["raw_ort_batch1"].items()
        )
        + ". CPU efficiency = raw ORT CPU per inference / server tree CPU per request (robust to other work on the "
        "core, unlike throughput).",
        "",
        "## Targets (forwardpass with dynamic batching)",
        "",
        "| target | value | goal | met |",
        "|---|---|---|---|",
    ]
    for check in result["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[check["met"]]
        lines.append(f"| {check['target']} | {_fmt(check['value'], 2)} | {check['goal']} | {met} |")
    lines += ["", "## Ratios: forwardpass (dynamic batching) / peer (peer's V2 JSON figure)", ""]
    peers = sorted({r["peer"] for r in summary["ratios"]})
    if peers:
        lines += [
            "| model | forwardpass format | c | " + " | ".join(labels[p] for p in peers) + " |",
            "|---|---|---|" + "---|" * len(peers),
        ]
        keys = sorted({(r["model"], r["format"], r["concurrency"]) for r in summary["ratios"]})
        for model, fmt, concurrency in keys:
            cells = []
            for peer in peers:
                found = [
                    r["ratio"]
                    for r in summary["ratios"]
                    if (r["model"], r["format"], r["concurrency"], r["peer"]) == (model, fmt, concurrency, peer)
                ]
                cells.append(f"{found[0]:.2f}x" if found else "-")
            lines.append(f"| {model} | {fmt} | {concurrency} | " + " | ".join(cells) + " |")
    if summary.get("perf_analyzer"):
        lines += [
            "",
            "## perf_analyzer (Triton's load generator) against forwardpass and Triton, tiny MLP",
            "",
            "Client: perf_analyzer from tritonclient 2.41 on the client core, random inputs, one sample per request, "
            "closed loop; the figure of its last window (a shared machine rarely gives it stable windows).",
            "",
            "| server | protocol / format | c | req/s | / Triton | p50 ms | p99 ms | p99 / p50 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in summary["perf_analyzer"]:
            point, concurrency = row["point"].split("/c")
            ratio = row.get("vs_triton")
            lines.append(
                f"| {labels[row['server']]} | {point} | {concurrency} | {row['throughput']:,.0f} "
                f"| {'-' if ratio is None else f'{ratio:.2f}x'} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                f"| {row['p99_over_p50']:.1f} |"
            )
    lines += [
        "",
        "## Throughput and latency",
        "",
        "| server | model | format | c | req/s | / raw ORT | p50 ms | p90 ms | p99 ms | errors | client CPU "
        "| server CPU µs/req | CPU efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        if "error" in row:
            lines.append(f"| {labels[row['server']]} | {row['model']} | failed: {row['error'][:200]} |")
            continue
        ratio = "-" if row["vs_raw_ort"] is None else f"{row['vs_raw_ort']:.2f}"
        lines.append(
            f"| {labels[row['server']]} | {row['model']} | {row['format']} | {row['concurrency']} "
            f"| {_fmt(row['throughput'])} | {ratio} "
            f"| {_ms(row['p50_ms'])} | {_ms(row['p90_ms'])} | {_ms(row['p99_ms'])} "
            f"| {row['errors']} | {row['client_cpu']:.0%} | {row['server_cpu_us_per_request']:,.0f} "
            f"| {row['cpu_efficiency_vs_raw_ort']:.2f} |"
        )
    lines += [
        "",
        "## Cold start (spawn → first 200 OK) and idle memory, one small model",
        "",
        "| server | model | cold start s | idle PSS MB | idle RSS MB |",
        "|---|---|---|---|---|",
    ]
    for start in summary["startup"]:
        lines.append(
            f"| {labels[start['server']]} | {start['model']} | {start['cold_start_s']:.2f} "
            f"| {start['idle_pss_mb']:.0f} | {start['idle_rss_mb']:.0f} |"
        )
    machine = result["machine"]
    lines += ["", "## Machine", "", *(f"- {key}: {value}" for key, value in machine.items())]
    lines += ["", "Peers: " + "; ".join(f"{kind} {versions}" for kind, versions in result["peer_versions"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per load point (wrk counts whole s)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds of load before each point")
    parser.add_argument("--servers", default=None, help="comma-separated keys of bench/peers/launch.py's SERVERS")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument(
        "--perf-analyzer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also load forwardpass and Triton with Triton's perf_analyzer (MLP: HTTP binary/JSON, gRPC)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--report", type=Path, help="only re-write the report from this server.json's measurements")
    parser.add_argument("--raw-ort", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_ort:
        _raw_ort_main(args.raw_ort, args.shape, args.seconds)
        return
    if args.report:
        write_report(json.loads(args.report.read_text()), args.out)
        return

    # SIGTERM as an exception, so that the server being measured is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    machine = machine_info() | {"server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU}
    os.sched_setaffinity(0, {CLIENT_CPU})
    specs = [SERVERS[key] for key in args.servers.split(",")] if args.servers else list(SERVERS.values())
    ensure_wrk()
    peers = sorted({spec.kind for spec in specs} & set(PEER_PACKAGES))
    for kind in peers:
        ensure_virtualenv(kind)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-server-models-") as folder:
        models = build_models(Path(folder), args.models.split(","))
        raw = run_rounds(args, models, specs)
    # The benchmark alone keeps about 2 runnable; more means other work shared the cores.
    machine["load_average_1_5_15_min_before_after"] = [load_before, os.getloadavg()]
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/server.py " + " ".join(sys.argv[1:]),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "servers": {spec.key: spec.label for spec in specs},
        "models": [{"name": m.name, "gflops": m.gflops, "input_shape": list(m.sample.shape)} for m in models.values()],
        "machine": machine,
        "peer_versions": {kind: peer_versions(kind) for kind in peers},
        **raw,
    }
    write_report(result, args.out)


def write_report(result: dict[str, Any], out: Path) -> None:
    """Summary, targets, <out>/server.json and <out>/server.md from the measurements of every round."""
    models = [model["name"] for model in result["models"]]
    result["summary"] = summary = summarize(result["per_round"], models, list(result["servers"]))
    result["targets"] = targets(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown(result, result["servers"])
    (out / "server.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
