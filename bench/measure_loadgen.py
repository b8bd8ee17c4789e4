"""Is `forwardpass bench --url` measuring the server or itself? Our Python load generator against wrk (compiled,
bench/loadgen.py) on the same server, same model, same request body, same concurrency, in alternating rounds.

Usage: python bench/measure_loadgen.py [--rounds 3] [--seconds 3] [--concurrency 8] [--out bench/results]

- Server: `forwardpass serve` on the bundled digits_cnn (a tiny CNN: per-request overhead dominates, so the client's
  speed matters most), HTTP, binary tensor encoding (the cheaper body for both clients).
- Clients: forwardpass.measure.loadgen closed loop with 2 processes, and wrk with one thread; both keep `concurrency`
  keep-alive connections busy. Each reports its own CPU use (share of one core, summed over processes).
- Figures: req/s and p50/p99 per client, median over rounds; the ratio ours/wrk is the median of round-by-round
  ratios. Near 1.00: the server, not our client, sets the figure. Client CPU per request tells how much headroom
  each client has.

Writes <out>/measure_loadgen.json and <out>/measure_loadgen.md (with machine info and the load at the time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import Load, run_load  # bench/loadgen.py: the wrk runner

from forwardpass.measure import machine_info
from forwardpass.measure.loadgen import run_closed_loop
from forwardpass.measure.payload import Target, build_payload, model_inputs

ROOT = Path(__file__).resolve().parent.parent
MODEL = "digits_cnn"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start_server(port: int) -> subprocess.Popen[bytes]:
    command = [
        str(Path(sys.executable).parent / "forwardpass"),
        "serve",
        "--repository",
        str(ROOT / "models"),
        "--http-port",
        str(port),
        "--grpc-port",
        str(_free_port()),
        "--host",
        "127.0.0.1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("forwardpass serve did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    port = _free_port()
    server = _start_server(port)
    try:
        target = Target(f"http://127.0.0.1:{port}", MODEL)
        payload = build_payload(target, model_inputs(target), "binary")
        head, _, body = payload.data.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1)
            for line in head.decode().split("\r\n")[1:]
            if not line.startswith(("Content-Length", "Host"))
        )
        load = Load(f"{target.url}{target.path}/infer", body, headers, args.concurrency, args.seconds)
        ours, wrk, ratios = [], [], []
        for index in range(args.rounds):
            order = ("ours", "wrk") if index % 2 == 0 else ("wrk", "ours")
            figures = {}
            for client in order:
                if client == "ours":
                    result = run_closed_loop(target, payload, args.concurrency, args.seconds, processes=2)
                    assert result.latency is not None and result.errors == 0, result.error_samples
                    figures[client] = {
                        "throughput": result.measured_throughput,
                        "p50_ms": result.latency.p50_ms,
                        "p99_ms": result.latency.p99_ms,
                        "client_cpu": sum(result.client_cpu),
                        "refused": result.refused,
                    }
                else:
                    measured = run_load(load)
                    assert measured.errors == 0
                    figures[client] = {
                        "throughput": measured.throughput,
                        "p50_ms": measured.p50_ms,
                        "p99_ms": measured.p99_ms,
                        "client_cpu": measured.client_cpu,
                    }
                print(f"round {index + 1} {client}: {figures[client]}", flush=True)
            ours.append(figures["ours"])
            wrk.append(figures["wrk"])
            ratios.append(figures["ours"]["throughput"] / figures["wrk"]["throughput"])
    finally:
        server.terminate()
        server.wait(timeout=30)

    def median(rows: list[dict[str, object]], key: str) -> float:
        return statistics.median(float(row[key]) for row in rows)  # type: ignore[arg-type]

    summary = {
        client: {key: median(rows, key) for key in ("throughput", "p50_ms", "p99_ms", "client_cpu")}
        for client, rows in (("forwardpass loadgen", ours), ("wrk", wrk))
    }
    for figures in summary.values():
        figures["client_cpu_us_per_request"] = figures["client_cpu"] / figures["throughput"] * 1e6
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": MODEL,
        "settings": vars(args) | {"out": str(args.out), "encoding": "binary", "processes": 2},
        "machine": machine_info() | {"load_average": os.getloadavg()},
        "ratio_ours_to_wrk": statistics.median(ratios),
        "ratios": ratios,
        "summary": summary,
        "rounds": {"ours": ours, "wrk": wrk},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measure_loadgen.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Load generator: forwardpass.measure.loadgen vs wrk, same server",
        "",
        f"{result['date']}; `forwardpass serve` {MODEL}, HTTP binary tensors, closed loop at concurrency"
        f" {args.concurrency}, {args.rounds} rounds of {args.seconds} s; load average {os.getloadavg()[0]:.1f}"
        f" on {result['machine']['usable_cores']} cores (a shared machine: ratios, not absolute figures).",
        "",
        "| client | req/s | p50 ms | p99 ms | client CPU (cores) | client CPU µs/request |",
        "|---|---|---|---|---|---|",
    ]
    for client, figures in summary.items():
        lines.append(
            f"| {client} | {figures['throughput']:,.0f} | {figures['p50_ms']:.2f} | {figures['p99_ms']:.2f} |"
            f" {figures['client_cpu']:.2f} | {figures['client_cpu_us_per_request']:.0f} |"
        )
    lines += ["", f"Throughput ratio ours/wrk (median of rounds): **{result['ratio_ours_to_wrk']:.3f}**", ""]
    (args.out / "measure_loadgen.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
