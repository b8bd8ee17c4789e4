"""What the load generator sends and how: KServe V2 infer requests (JSON tensors or the binary tensor data extension),
sent closed-loop by `wrk` (compiled, one thread, keep-alive): N connections, each sending the same POST body again as
soon as its answer arrives. A Python asyncio client tops out near 6k requests/s on one core, below what the servers
under test reach; wrk sends ~10x that on the same core, so the client is not the bottleneck.

The client's own CPU use (user + system time over wall time, from the kernel's accounting of the wrk process) is
reported with every figure, so that a saturated client (> 90% of its core) can be refused instead of reported.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

__all__ = [
    "CLIENT_SATURATED",
    "Load",
    "LoadResult",
    "answers",
    "ensure_wrk",
    "post",
    "run_load",
    "v2_outputs",
    "v2_request",
]

CLIENT_SATURATED = 0.90
NUMPY_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
V2_DATATYPES = {np.dtype(dtype): name for name, dtype in NUMPY_DTYPES.items()}

# wrk calls done() once at the end: print what it measured as one JSON line (latencies in microseconds).
_SCRIPT = """
wrk.method = "POST"
local file = io.open(os.getenv("LOADGEN_BODY"), "rb")
wrk.body = file:read("*a")
file:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


@dataclass(frozen=True, slots=True)
class Load:
    url: str
    body: bytes
    headers: dict[str, str]
    connections: int
    seconds: int  # wrk counts whole seconds


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    errors: int  # non-2xx answers, socket errors and timeouts
    seconds: float
    throughput: float  # successful requests per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu: float  # share of one core the load generator used

    @property
    def client_saturated(self) -> bool:
        return self.client_cpu > CLIENT_SATURATED

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "client_saturated": self.client_saturated}


def ensure_wrk() -> str:
    """The wrk binary; installs Debian's package when it is missing (the benchmark machine runs as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get install -y wrk) ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and apt-get could not install it: install wrk and run again")
    return found


def run_load(load: Load, cpu: int | None = None) -> LoadResult:
    """Run one closed-loop load; `cpu` pins the client to that core."""
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="loadgen-") as folder:
        script, body = Path(folder, "post.lua"), Path(folder, "body")
        script.write_text(_SCRIPT, encoding="utf-8")
        body.write_bytes(load.body)
        command = [wrk, "-t1", f"-c{load.connections}", f"-d{load.seconds}s", "--timeout", "60s", "-s", str(script)]
        for name, value in load.headers.items():
            command += ["-H", f"{name}: {value}"]
        command.append(load.url)
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        environment = {**os.environ, "LOADGEN_BODY": str(body)}
        output, errors = Path(folder, "stdout"), Path(folder, "stderr")
        with output.open("wb") as stdout, errors.open("wb") as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=environment)
            # wait4 gives the CPU time of exactly this child (taskset execs wrk in the same process).
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"wrk failed ({process.returncode}): {errors.read_text(errors='replace').strip()}")
        summary = json.loads(output.read_text().strip().splitlines()[-1])
    return _result(summary, usage.ru_utime + usage.ru_stime)


def _result(summary: dict[str, float], client_cpu_seconds: float) -> LoadResult:
    seconds = summary["duration_us"] / 1e6
    errors = int(sum(summary[kind] for kind in ("connect", "read", "write", "status", "timeout")))
    requests = int(summary["requests"])
    return LoadResult(
        requests=requests,
        errors=errors,
        seconds=seconds,
        throughput=max(requests - int(summary["status"]), 0) / seconds,
        p50_ms=summary["p50_us"] / 1e3,
        p90_ms=summary["p90_us"] / 1e3,
        p99_ms=summary["p99_us"] / 1e3,
        client_cpu=client_cpu_seconds / seconds,
    )


def v2_request(tensor_name: str, array: np.ndarray, output_name: str, binary: bool) -> tuple[bytes, dict[str, str]]:
    """A KServe V2 infer request body and its headers: JSON tensors, or the binary tensor data extension (JSON header,
    then the raw bytes; the output asked for as binary too)."""
    tensor = {"name": tensor_name, "shape": list(array.shape), "datatype": V2_DATATYPES[array.dtype]}
    if not binary:
        body = orjson.dumps({"inputs": [tensor | {"data": array.ravel().tolist()}]})
        return body, {"Content-Type": "application/json"}
    header = orjson.dumps(
        {
            "inputs": [tensor | {"parameters": {"binary_data_size": array.nbytes}}],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        }
    )
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + array.tobytes(), headers


def v2_outputs(body: bytes, headers: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The output tensors of a V2 infer answer, JSON or binary."""
    lowered = {name.lower(): value for name, value in headers.items()}
    header_length = int(lowered.get("inference-header-content-length", len(body)))
    answer = orjson.loads(body[:header_length])
    outputs, offset = {}, header_length
    for tensor in answer["outputs"]:
        dtype = np.dtype(NUMPY_DTYPES[tensor["datatype"]])
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.asarray(tensor["data"], dtype=dtype)
        else:
            array = np.frombuffer(body, dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        outputs[tensor["name"]] = array.reshape(tensor["shape"])
    return outputs


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def answers(port: int, path: str, body: bytes, headers: dict[str, str]) -> bool:
    """Whether a server answers this POST with 200 yet (a start-up probe)."""
    try:
        return post(port, path, body, headers)[0] == 200
    except OSError:  # not listening yet
        return False
