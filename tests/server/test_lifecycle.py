"""`forwardpass serve` as a real process: start-up, SIGTERM under load (nothing lost, exit 0), overload (503 with
Retry-After, memory bounded), and one-line errors for bad settings."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson

SERVE = [sys.executable, "-m", "forwardpass", "serve", "--grpc-port", "0"]


class ServerProcess:
    """`forwardpass serve` in a process of its own; everything it prints is collected (so its pipe never fills)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*SERVE, "--http-port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._ready.wait(timeout=60)
        found = re.search(r"HTTP\s+http://127\.0\.0\.1:(\d+)", self.output)
        assert found, f"the server did not announce its port:\n{self.output}"
        self.port = int(found.group(1))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        return code

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if line.strip().startswith("ready:"):
                self._ready.set()
        self._ready.set()


@contextmanager
def serve_process(*args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(*args, env=env)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(timeout=30)
        server._reader.join(timeout=10)  # it has read the pipe to its end: the pipe can close
        if server.process.stdout is not None:
            server.process.stdout.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def slow_request(rows: int = 1) -> tuple[bytes, dict[str, str]]:
    array = np.ones((rows, 4), dtype=np.float32)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [rows, 4], "parameters": {"binary_data_size": array.nbytes}}
            ]
        }
    )
    return header + array.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_it_starts_quickly_with_an_image_and_a_tabular_model_and_says_what_is_ready(tmp_path: Path, kit):
    """Start-up speed as the CPU time the server spent until its first answer: what it costs, whatever else shares
    the machine (wall time is bench/server.py's cold-start figure, 0.50 s in bench/results/server.md)."""
    kit.save_digits_and_diabetes(tmp_path)
    with serve_process("--repository", str(tmp_path)) as server:
        record = {
            "age": 50,
            "sex": 1,
            "bmi": 30,
            "bp": 90,
            "s1": 180,
            "s2": 100,
            "s3": 50,
            "s4": 4,
            "s5": 4.5,
            "s6": 90,
        }
        answer = httpx.post(f"http://127.0.0.1:{server.port}/v2/models/diabetes/predict", json=record, timeout=30)
        spent = cpu_seconds(server.process.pid)
        assert answer.status_code == 200 and "value" in answer.json()
        ready_line = next(line for line in server.lines if line.strip().startswith("ready:"))
        assert "digits_cnn (v1)" in ready_line and "diabetes (v1)" in ready_line
        # about 1.3 s of CPU on a slow 2-core machine, most of it the interpreter importing numpy and ONNX Runtime
        assert spent < 2.0, f"the server used {spent:.2f} s of CPU before its first answer"
        assert server.stop() == 0


def test_sigterm_under_load_answers_every_request_sent_before_it_and_exits_0(tmp_path: Path, kit):
    kit.save(kit.slow_graph(), tmp_path / "slow" / "1", {"max_batch_size": 8})
    body, headers = slow_request()
    records: list[tuple[float, object]] = []
    stop = threading.Event()

    with serve_process("--repository", str(tmp_path)) as server:
        port = server.port

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    connection.request("POST", "/v2/models/slow/infer", body, headers)
                    response = connection.getresponse()
                    response.read()
                    records.append((sent, response.status))
                except (OSError, http.client.HTTPException) as exc:  # after the signal: refused, reset or closed
                    records.append((sent, type(exc).__name__))
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    time.sleep(0.01)

        threads = [threading.Thread(target=client) for _ in range(6)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 60
            while len(records) < 30:
                assert time.monotonic() < deadline, f"only {len(records)} requests answered in 60 s"
                time.sleep(0.01)
            signalled = time.monotonic()
            assert server.stop() == 0
        finally:  # the clients stop whatever happened, so that a failure ends the test instead of hanging it
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        output = server.output
    before = [outcome for sent, outcome in records if sent < signalled]
    assert len(before) >= 30
    assert all(outcome == 200 for outcome in before), [o for o in before if o != 200][:5]
    assert "stopping" in output and "Traceback" not in output


def test_overload_is_refused_with_503_and_retry_after_and_memory_stays_bounded(tmp_path: Path, kit):
    config = {"max_batch_size": 0, "dynamic_batching": {"max_queue_size": 2}}
    kit.save(kit.slow_graph(), tmp_path / "slow" / "1", config)
    big_body, headers = slow_request(rows=65_536)  # 1 MiB of tensor per request
    env = {"FORWARDPASS_MAX_CONCURRENT_REQUESTS": "16"}
    with serve_process("--repository", str(tmp_path), env=env) as server:
        url = f"http://127.0.0.1:{server.port}/v2/models/slow/infer"
        assert httpx.post(url, content=big_body, headers=headers).status_code == 200
        baseline = peak_rss_mb(server.process.pid)

        async def flood() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=96, max_keepalive_connections=96)
            async with httpx.AsyncClient(limits=limits, timeout=120) as client:
                return await asyncio.gather(*(client.post(url, content=big_body, headers=headers) for _ in range(160)))

        try:
            responses = asyncio.run(flood())
        except httpx.HTTPError:
            print(server.output)
            raise
        peak = peak_rss_mb(server.process.pid)
        statuses = [response.status_code for response in responses]
        assert set(statuses) == {200, 503}, sorted(set(statuses))
        refused = [response for response in responses if response.status_code == 503]
        assert all(response.headers["Retry-After"] == "1" for response in refused)
        assert all("retry later" in response.json()["error"] for response in refused)
        # 160 MiB were sent at once; what is held at a time is bounded by the limits, not by the flood
        assert peak - baseline < 120, f"peak RSS grew by {peak - baseline:.0f} MiB"
        assert httpx.post(url, content=big_body, headers=headers).status_code == 200  # and it still serves


def test_bad_settings_and_a_busy_port_end_with_one_line_errors(tmp_path: Path, kit):
    kit.save(kit.add_graph(1.0), tmp_path / "add" / "1")
    bad_env = subprocess.run(
        [*SERVE, "--repository", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "FORWARDPASS_HTTP_PORT": "eighty"},
        timeout=60,
    )
    assert bad_env.returncode == 2
    assert bad_env.stderr.strip().count("\n") == 0 and "FORWARDPASS_HTTP_PORT" in bad_env.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = subprocess.run(
            [*SERVE, "--repository", str(tmp_path), "--http-port", str(taken.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert busy.returncode == 2
    assert "cannot listen" in busy.stderr and "Traceback" not in busy.stderr
    missing = subprocess.run(
        [*SERVE, "--repository", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
