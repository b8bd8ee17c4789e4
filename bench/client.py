"""Client benchmark: forwardpass.client against the stock tritonclient, same server, same models, same cores.

Usage: python bench/client.py [--rounds 3] [--seconds 3] [--out bench/results]

- Server: `forwardpass serve` pinned to CPU 0 (`taskset`), batching off, serving two models written here with
  onnx.helper: `mlp` (FP32 64 -> 128 -> 10, where the per-request overhead is all there is) and `pool` (FP32
  [1, 3, 224, 224] -> global average [1, 3]: a 602 KB request, where encoding the tensor is the cost).
- Clients in this process, pinned to CPU 1, closed loop at concurrency 1 (one request after another): ours over HTTP
  (binary and V2 JSON) and gRPC, tritonclient the same ways. Every client's answer is first checked against ONNX
  Runtime in process (exactly equal).
- Figures: req/s and p50 per model, client and format; rounds interleave the clients, figures are medians over
  rounds; the ratio is tritonclient's p50 / ours, round by round (> 1: ours is faster).
- The asyncio clients (ours on aiohttp and grpc.aio, tritonclient.http.aio and tritonclient.grpc.aio) on `mlp` at
  concurrency 16, one event loop: req/s, and ours / tritonclient's (> 1: ours is faster).

Writes <out>/client.json and <out>/client.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from onnx import TensorProto, helper, numpy_helper

from forwardpass.client import AsyncGrpcInferenceClient, AsyncInferenceClient, GrpcInferenceClient, InferenceClient
from forwardpass.measure import machine_info
from forwardpass.measure.stats import paired_ratio

HERE = Path(__file__).resolve().parent
SERVER_CPU, CLIENT_CPU = 0, 1
CONCURRENCY = 16
ASYNC_CLIENTS = ["forwardpass http async", "tritonclient http aio", "forwardpass grpc async", "tritonclient grpc aio"]
Send = Callable[[np.ndarray], np.ndarray]


def write_models(root: Path) -> dict[str, np.ndarray]:
    """The two models, each <root>/<name>/1/model.onnx with batching off; returns one request's input per model."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((64, 128)).astype(np.float32) * 0.1, np.zeros(128, np.float32)
    w2, b2 = rng.standard_normal((128, 10)).astype(np.float32) * 0.1, np.zeros(10, np.float32)
    mlp = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w2"], ["o"]),
            helper.make_node("Add", ["o", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(v, n) for n, v in {"w1": w1, "b1": b1, "w2": w2, "b2": b2}.items()],
    )
    pool = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["y"])],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    for name, graph in {"mlp": mlp, "pool": pool}.items():
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, root / name / "1" / "model.onnx")
        (root / name / "config.yaml").write_text("max_batch_size: 0\nengine: {intra_op_threads: 1}\n")
    return {
        "mlp": rng.standard_normal((1, 64)).astype(np.float32),
        "pool": rng.standard_normal((1, 3, 224, 224)).astype(np.float32),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(repository: Path, http_port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    command = ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "forwardpass", "serve"]
    command += ["--repository", str(repository), "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1):
                return server
        except OSError:
            if server.poll() is not None:
                problem = server.stderr.read().decode() if server.stderr else ""
                raise SystemExit(f"forwardpass serve exited: {problem}") from None
            time.sleep(0.1)
    server.kill()
    raise SystemExit("forwardpass serve did not become ready within 60 s")


def senders(http_url: str, grpc_url: str, model: str) -> dict[str, tuple[Send, Callable[[], None]]]:
    """Each client and format: a function sending one request (its input) and returning the output, and a closer."""
    ours_http = InferenceClient(http_url)
    ours_grpc = GrpcInferenceClient(grpc_url)
    their_http = triton_http.InferenceServerClient(http_url.removeprefix("http://"))
    their_grpc = triton_grpc.InferenceServerClient(grpc_url)

    def triton_over_http(binary: bool) -> Send:
        def send(x: np.ndarray) -> np.ndarray:
            given = triton_http.InferInput("x", list(x.shape), "FP32")
            given.set_data_from_numpy(x, binary_data=binary)
            wanted = triton_http.InferRequestedOutput("y", binary_data=binary)
            return their_http.infer(model, [given], outputs=[wanted]).as_numpy("y")

        return send

    def triton_over_grpc(x: np.ndarray) -> np.ndarray:
        given = triton_grpc.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x)
        return their_grpc.infer(model, [given]).as_numpy("y")

    return {
        "forwardpass http binary": (lambda x: ours_http.infer(model, {"x": x})["y"], ours_http.close),
        "tritonclient http binary": (triton_over_http(True), their_http.close),
        "forwardpass http json": (lambda x: ours_http.infer(model, {"x": x}, binary=False)["y"], lambda: None),
        "tritonclient http json": (triton_over_http(False), lambda: None),
        "forwardpass grpc": (lambda x: ours_grpc.infer(model, {"x": x})["y"], ours_grpc.close),
        "tritonclient grpc": (triton_over_grpc, their_grpc.close),
    }


def measure(send: Send, x: np.ndarray, seconds: float) -> dict[str, float]:
    latencies = []
    end = time.perf_counter() + seconds
    while (started := time.perf_counter()) < end:
        send(x)
        latencies.append(time.perf_counter() - started)
    return {"req_s": len(latencies) / sum(latencies), "p50_ms": statistics.median(latencies) * 1000}


async def async_throughput(name: str, http_url: str, grpc_url: str, x: np.ndarray, seconds: float) -> float:
    """Requests per second of `name` (one of ASYNC_CLIENTS) on `mlp` with CONCURRENCY requests in flight."""
    ours_http = AsyncInferenceClient(http_url)
    ours_grpc = AsyncGrpcInferenceClient(grpc_url)
    their_http = triton_http_aio.InferenceServerClient(http_url.removeprefix("http://"))
    their_grpc = triton_grpc_aio.InferenceServerClient(grpc_url)

    async def triton_over_http() -> np.ndarray:
        given = triton_http_aio.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=True)
        wanted = triton_http_aio.InferRequestedOutput("y", binary_data=True)
        return (await their_http.infer("mlp", [given], outputs=[wanted])).as_numpy("y")

    async def triton_over_grpc() -> np.ndarray:
        given = triton_grpc_aio.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x)
        return (await their_grpc.infer("mlp", [given])).as_numpy("y")

    async def ours_over_http() -> np.ndarray:
        return (await ours_http.infer("mlp", {"x": x}))["y"]

    async def ours_over_grpc() -> np.ndarray:
        return (await ours_grpc.infer("mlp", {"x": x}))["y"]

    send = dict(zip(ASYNC_CLIENTS, [ours_over_http, triton_over_http, ours_over_grpc, triton_over_grpc], strict=True))
    await send[name]()
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await send[name]()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    await ours_http.close()
    await ours_grpc.close()
    await their_http.close()
    await their_grpc.close()
    return done / elapsed


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    inputs = write_models(workdir)
    http_port, grpc_port = free_port(), free_port()
    server = start_server(workdir, http_port, grpc_port)
    rounds: list[dict[str, dict[str, dict[str, float]]]] = []
    try:
        for model, x in inputs.items():
            session = ort.InferenceSession(
                str(workdir / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
            )
            expected = session.run(None, {"x": x})[0]
            clients = senders(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", model)
            for name, (send, _) in clients.items():
                np.testing.assert_array_equal(send(x), expected, err_msg=f"{name} on {model}")
                measure(send, x, args.warmup)
            for index in range(args.rounds):
                if len(rounds) <= index:
                    rounds.append({})
                order = list(clients)[index % len(clients) :] + list(clients)[: index % len(clients)]
                rounds[index][model] = {name: measure(clients[name][0], x, args.seconds) for name in order}
                print(
                    f"round {index + 1} {model}: "
                    + ", ".join(f"{name} {figures['p50_ms']:.3f} ms" for name, figures in rounds[index][model].items()),
                    flush=True,
                )
            for _, close in clients.values():
                close()
        for index in range(args.rounds):
            order = ASYNC_CLIENTS[index % 4 :] + ASYNC_CLIENTS[: index % 4]
            urls = (f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
            rounds[index]["async"] = {
                name: asyncio.run(async_throughput(name, *urls, inputs["mlp"], args.seconds)) for name in order
            }
            print(f"round {index + 1} async: {rounds[index]['async']}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return summarize(rounds, list(inputs))


def summarize(rounds: list[dict[str, dict[str, dict[str, float]]]], models: list[str]) -> dict[str, Any]:
    rows = []
    for model in models:
        for name in rounds[0][model]:
            figures = [r[model][name] for r in rounds]
            row: dict[str, Any] = {"model": model, "client": name}
            row |= {key: statistics.median(f[key] for f in figures) for key in ("req_s", "p50_ms")}
            if name.startswith("forwardpass"):
                peer = name.replace("forwardpass", "tritonclient")
                row["tritonclient_p50_over_ours"] = paired_ratio(
                    [r[model][peer]["p50_ms"] for r in rounds], [f["p50_ms"] for f in figures]
                )
            rows.append(row)
    async_rows = []
    for name in ASYNC_CLIENTS:
        row = {"client": name, "req_s": statistics.median(r["async"][name] for r in rounds)}
        if name.startswith("forwardpass"):
            peer = name.replace("forwardpass", "tritonclient").replace("async", "aio")
            row["ours_over_tritonclient_req_s"] = paired_ratio(
                [r["async"][name] for r in rounds], [r["async"][peer] for r in rounds]
            )
        async_rows.append(row)
    return {"rows": rows, "async_rows": async_rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Client benchmark: forwardpass.client vs tritonclient",
        "",
        f"{result['date']}; {result['rounds']} rounds of {result['seconds']} s per client; concurrency 1; server on "
        f"CPU {SERVER_CPU} (batching off), client on CPU {CLIENT_CPU}. Ratio: tritonclient p50 / ours (> 1: ours "
        "faster), median of round-by-round ratios.",
        "",
        "| model | client | req/s | p50 ms | tritonclient p50 / ours |",
        "|---|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        ratio = row.get("tritonclient_p50_over_ours")
        ratio_text = f"{ratio:.2f}" if ratio is not None else ""
        lines.append(f"| {row['model']} | {row['client']} | {row['req_s']:.0f} | {row['p50_ms']:.3f} | {ratio_text} |")
    lines += [
        "",
        f"## asyncio clients, mlp, concurrency {CONCURRENCY}",
        "",
        "| client | req/s | ours / tritonclient req/s |",
        "|---|---:|---:|",
    ]
    for row in result["async_rows"]:
        ratio = row.get("ours_over_tritonclient_req_s")
        lines.append(f"| {row['client']} | {row['req_s']:.0f} | {f'{ratio:.2f}' if ratio is not None else ''} |")
    lines += ["", "## Machine", "", *(f"- {key}: {value}" for key, value in result["machine"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="forwardpass-client-bench-") as workdir:
        summary = run(args, Path(workdir))
    machine = machine_info() | {"load_average_1_5_15_min_before_after": [load_before, os.getloadavg()]}
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "seconds": args.seconds,
        **summary,
        "machine": machine,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "client.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "client.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
