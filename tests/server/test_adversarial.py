"""Each probe of an attacker against a real `forwardpass serve` process on 127.0.0.1, replayed with bounds: the status
it must get, how much the server's RSS may grow (over its steady state), and that /v2/health/live keeps answering
within 100 ms while the bad request is in progress. One request must never stall, bloat or blind the server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from onnx import TensorProto, helper
from PIL import Image
from websockets.sync.client import connect

from forwardpass.server.proto import grpc_service_pb2 as pb
from forwardpass.server.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.running_server import free_port

TOKEN = "adversarial-token"
HEADERS = {"authorization": f"bearer {TOKEN}"}  # a lowercase scheme is as good as "Bearer"
ADMIN_TOKEN = "adversarial-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SEQUENCES_PER_CLIENT = 2
# /v2/health/live answers within this while a bad request is in progress, stretched by the machine's load: on 2
# cores shared with other work a healthy loop answered in 165 ms, while a request decoded on the loop blocks it for
# seconds
LIVE_MS = 100


RSS_MB = 50  # growth over steady state one bad request may cause
MAX_REQUEST_BYTES = 16 * 2**20
MAX_CONNECTIONS = 200
MAX_CONNECTIONS_PER_CLIENT = 60


def ocr_graph() -> Any:
    """y [22, 1, 8] from x [1, 4], no batch dimension: an OCR-like model whose first axis is time steps."""
    return helper.make_graph(
        [
            helper.make_node("Tile", ["x", "reps"], ["tiled"]),  # [22, 8]
            helper.make_node("Unsqueeze", ["tiled", "axis"], ["y"]),  # [22, 1, 8]
        ],
        "ocr",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [22, 1, 8])],
        initializer=[
            helper.make_tensor("reps", TensorProto.INT64, [2], [22, 2]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ],
    )


class Server:
    """`forwardpass serve` in its own process, with tight limits so that each probe is quick."""

    def __init__(self, repository: Path, tmp: Path, *options: str) -> None:
        token_file = tmp / "token"
        token_file.write_text(TOKEN + "\n", encoding="utf-8")
        admin_file = tmp / "admin-token"
        admin_file.write_text(ADMIN_TOKEN + "\n", encoding="utf-8")
        self.grpc_port = free_port()
        env = {
            **os.environ,
            "FORWARDPASS_HEADER_TIMEOUT_S": "1",
            "FORWARDPASS_BODY_TIMEOUT_S": "1",
            "FORWARDPASS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "FORWARDPASS_MAX_CONNECTIONS_PER_CLIENT": str(MAX_CONNECTIONS_PER_CLIENT),
            "FORWARDPASS_MAX_CONCURRENT_REQUESTS": "16",
            "FORWARDPASS_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
            "FORWARDPASS_AUDIT_LOG": str(tmp / "audit.sqlite"),
        }
        command = [sys.executable, "-m", "forwardpass", "serve", "-r", str(repository), "--http-port", "0"]
        command += ["--grpc-port", str(self.grpc_port), "--auth-token-file", str(token_file)]
        command += ["--admin-token-file", str(admin_file), *options]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert self.process.stdout is not None
        lines = []
        for line in self.process.stdout:
            lines.append(line)
            if line.strip().startswith("ready:"):
                break
        found = re.search(r"HTTP\s+http://127\.0\.0\.1:(\d+)", "".join(lines))
        assert found, "".join(lines)
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keeps its pipe from filling

    def stop(self) -> None:
        """SIGTERM, the exit awaited, and its output pipe closed."""
        self.process.terminate()
        self.process.wait(timeout=60)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def peak_growth_mb(self, work: Callable[[], object]) -> float:
        """How far the server's peak RSS rises over its present RSS while `work` runs."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # resets VmHWM, the peak, to the present RSS
        before = self.rss_mb()
        work()
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        return peak / 1024 - before

    def post(self, path: str, body: bytes, **headers: str) -> httpx.Response:
        return httpx.post(self.url + path, content=body, headers={**HEADERS, **headers}, timeout=60)

    @contextmanager
    def watched(self, rss_mb: float = RSS_MB) -> Iterator[None]:
        """Asserts, over the block, that /v2/health/live answers within LIVE_MS (times the load per core, where that
        is over 1) and RSS grows under `rss_mb`."""
        before = self.rss_mb()
        worst = [0.0]
        done = threading.Event()

        def watch() -> None:
            with httpx.Client(base_url=self.url, timeout=10) as client:
                while not done.is_set():
                    started = time.perf_counter()
                    assert client.get("/v2/health/live").status_code == 200
                    worst[0] = max(worst[0], time.perf_counter() - started)
                    time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join(timeout=20)
        bound_ms = LIVE_MS * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        assert worst[0] * 1000 < bound_ms, f"/v2/health/live took {worst[0] * 1000:.0f} ms (bound {bound_ms:.0f} ms)"
        assert self.rss_mb() - before < rss_mb, f"RSS grew {self.rss_mb() - before:.0f} MB"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("adversarial")
    repository = root / "models"
    kit.save(kit.mlp_graph(), repository / "mlp" / "1", {"max_batch_size": 64})
    kit.save(kit.strings_graph(), repository / "strings" / "1", {"max_batch_size": 8})
    kit.save(ocr_graph(), repository / "ocr" / "1", {"max_batch_size": 0})
    kit.copy_bundled("minilm", repository)
    kit.copy_bundled("cancer_triage", repository)
    kit.copy_bundled("mobilenet_v2", repository)
    vad = kit.copy_bundled("silero_vad", repository)
    config = yaml.safe_load((vad / "config.yaml").read_text())
    config["sequence_batching"] |= {"max_sequences": 8, "max_sequences_per_client": SEQUENCES_PER_CLIENT}
    (vad / "config.yaml").write_text(yaml.safe_dump(config))
    running = Server(repository, root)
    for _ in range(3):  # steady state: every code path the probes take once, so growth is the probe's own
        running.post("/v2/models/minilm/predict", b"warm up " * 5000, **{"content-type": "text/plain"})
        running.post("/v2/models/mlp/infer", v2("x", [64, 64], [0.5] * 64 * 64))
    yield running
    running.stop()


def v2(name: str, shape: list[int], data: list[Any], datatype: str = "FP32") -> bytes:
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}).encode()


def error_of(response: httpx.Response) -> str:
    message = response.json()["error"]
    assert isinstance(message, str) and "\n" not in message and len(message) <= 1001
    return message


def test_megabytes_of_text_are_cut_before_tokenizing_off_the_event_loop(server: Server) -> None:
    text = b"hello world " * 800_000  # 9.6 MB: 7.5 s on the event loop before
    with server.watched():
        started = time.perf_counter()
        response = server.post("/v2/models/minilm/predict", text, **{"content-type": "text/plain"})
        assert response.status_code == 200, response.text
        assert time.perf_counter() - started < 3


def test_a_batch_over_max_batch_size_is_refused_before_decoding(server: Server) -> None:
    rows = 20_000  # 1.28 M floats for a model declaring 64 rows
    with server.watched():
        response = server.post("/v2/models/mlp/infer", v2("x", [rows, 64], [0.5] * rows * 64))
        assert response.status_code in (400, 413)  # the JSON body is larger than 64 rows can be: refused unread
        small = server.post("/v2/models/mlp/infer", v2("x", [65, 64], [0.5] * 65 * 64))
        assert small.status_code == 400 and "65" in error_of(small) and "64" in error_of(small)
        header = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 64], "parameters": {"binary_data_size": 0}}]}
        ).encode()
        binary = server.post("/v2/models/mlp/infer", header, **{"inference-header-content-length": str(len(header))})
        assert binary.status_code == 400 and f"{rows} rows" in error_of(binary)
    message = pb.ModelInferRequest(model_name="mlp")
    message.inputs.add(name="x", datatype="FP32", shape=[rows, 64])
    message.raw_input_contents.append(np.zeros((rows, 64), np.float32).tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel, pytest.raises(grpc.RpcError) as refused:
        GRPCInferenceServiceStub(channel).ModelInfer(message, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_batch_size of 64" in refused.value.details()


def test_a_datatype_other_than_the_models_is_refused_naming_both(server: Server) -> None:
    for datatype in ("INT8", "INT64", "FP64"):
        response = server.post("/v2/models/mlp/infer", v2("x", [1, 64], [1] * 64, datatype))
        assert response.status_code == 400
        assert f"datatype {datatype} does not match the model's FP32" in error_of(response)
    assert server.post("/v2/models/mlp/infer", v2("x", [1, 64], [1] * 64, "FP32")).status_code == 200  # JSON ints


def test_an_unknown_model_is_404_before_its_body_is_decoded(server: Server) -> None:
    count = 3_000_000  # empty BYTES elements: 12 MB
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "BYTES", "shape": [count], "parameters": {"binary_data_size": 4 * count}}
            ]
        }
    ).encode()
    body = header + b"\0" * (4 * count)
    with server.watched():
        started = time.perf_counter()
        missing = server.post("/v2/models/nope/infer", body, **{"inference-header-content-length": str(len(header))})
        assert missing.status_code == 404 and time.perf_counter() - started < 2
        # the model exists, the shape claims 8 x 2 elements: decoding stops at the 17th of 3 M
        header = header.replace(f"[{count}]".encode(), b"[8, 2]")
        body = header + b"\0" * (4 * count)
        wrong = server.post("/v2/models/strings/infer", body, **{"inference-header-content-length": str(len(header))})
        assert wrong.status_code == 400 and "holds more" in error_of(wrong)


def test_a_million_inputs_are_refused_at_once_and_not_echoed(server: Server) -> None:
    entries = [{"name": f"x{i}", "datatype": "FP32", "shape": [1], "data": [1]} for i in range(300_000)]
    with server.watched():
        started = time.perf_counter()
        response = server.post("/v2/models/mlp/infer", json.dumps({"inputs": entries}).encode())
        assert response.status_code in (400, 413) and time.perf_counter() - started < 3
        assert len(response.text) < 1100


def test_slow_bodies_hold_no_admission_slot_and_time_out(server: Server) -> None:
    """40 sockets that declare 1,000 bytes and send 5 (the server admits 16 requests at once)."""
    sockets = []
    for _ in range(40):
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
            + TOKEN.encode()
            + b"\r\ncontent-length: 1000\r\n\r\nhello"
        )
        sockets.append(slow)
    try:
        with server.watched():
            valid = server.post("/v2/models/mlp/infer", v2("x", [1, 64], [0.5] * 64))
            assert valid.status_code == 200, valid.text
        sockets[0].settimeout(5)
        answer = sockets[0].recv(200)
        assert answer.startswith(b"HTTP/1.1 408"), answer  # the body deadline (1 s here)
    finally:
        for slow in sockets:
            slow.close()


def test_slow_or_huge_headers_are_cut_off(server: Server) -> None:
    with server.watched():
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n")  # and never the end of the headers
        slow.settimeout(5)
        assert slow.recv(100).startswith(b"HTTP/1.1 408")  # the header deadline (1 s here)
        slow.close()
        huge = socket.create_connection(("127.0.0.1", server.port))
        huge.settimeout(5)
        with contextlib.suppress(OSError):  # the server may close while we still send
            huge.sendall(b"GET /v2/health/live HTTP/1.1\r\nx-big: " + b"a" * 4_000_000 + b"\r\n\r\n")
        assert huge.recv(100).startswith(b"HTTP/1.1 431")
        huge.close()
        many = socket.create_connection(("127.0.0.1", server.port))
        many.settimeout(5)
        many.sendall(b"GET /v2/health/live HTTP/1.1\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(200)) + b"\r\n")
        assert many.recv(100).startswith(b"HTTP/1.1 431")
        many.close()


@pytest.mark.parametrize("size", [40_000, 200_000])
def test_a_head_over_the_limit_that_arrives_in_one_read_is_refused_too(server: Server, size: int) -> None:
    """A head that the server reads whole at once (one send on loopback) was parsed before its size was looked at,
    and a 200 KB header was served: the limit is on what the head holds, however it arrives."""
    with server.watched(), socket.create_connection(("127.0.0.1", server.port)) as client:
        client.settimeout(5)
        client.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * size + b"\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize(
    "request_head",
    [b"GARBAGE\r\n\r\n", b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\ncontent-length: ten\r\n\r\n"],
)
def test_a_request_that_is_not_http_gets_the_json_error_shape(server: Server, request_head: bytes) -> None:
    """uvicorn answered 'Invalid HTTP request received.' in plain text, where every other refusal is JSON."""
    with server.watched(), socket.create_connection(("127.0.0.1", server.port)) as client:
        client.settimeout(5)
        client.sendall(request_head)
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"content-type: application/json" in head
    assert json.loads(body) == {"error": "the request is not valid HTTP/1.1: its request line or headers do not parse"}


def from_host(host: str, port: int) -> socket.socket:
    """A connection to the server from another loopback address: another client host, as the server sees it."""
    return socket.create_connection(("127.0.0.1", port), source_address=(host, 0))


def test_connections_past_the_cap_are_refused_and_idle_ones_closed(server: Server) -> None:
    hosts = [f"127.0.0.{2 + index % 4}" for index in range(MAX_CONNECTIONS + 20)]  # each under the per-client cap
    idle = [from_host(host, server.port) for host in hosts]
    try:
        idle[-1].settimeout(5)
        assert idle[-1].recv(200).startswith(b"HTTP/1.1 503")
        idle[0].settimeout(5)
        assert idle[0].recv(100).startswith(b"HTTP/1.1 408")  # each had 1 s to send its headers
    finally:
        for connection in idle:
            connection.close()
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_one_hosts_idle_websockets_cannot_hold_every_connection(server: Server) -> None:
    """A WebSocket has no deadline once open: one host's idle streams held every connection, and every client got
    503. One host holds at most MAX_CONNECTIONS_PER_CLIENT; another host is still served."""
    with contextlib.ExitStack() as streams:
        for _ in range(MAX_CONNECTIONS_PER_CLIENT):
            url = f"ws://127.0.0.1:{server.port}/v2/models/strings/stream"
            streams.enter_context(connect(url, additional_headers=HEADERS))
        with socket.create_connection(("127.0.0.1", server.port)) as refused:
            refused.settimeout(5)
            answer = refused.recv(300)
        assert answer.startswith(b"HTTP/1.1 503") and b"max_connections_per_client" in answer
        with from_host("127.0.0.2", server.port) as other:
            other.settimeout(5)
            other.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            assert other.recv(100).startswith(b"HTTP/1.1 200")
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_loading_an_unknown_name_leaves_readiness_and_state_alone(server: Server) -> None:
    for name in ("typo", "typo2", "../etc"):
        assert server.post(f"/v2/repository/models/{name}/load", b"", **ADMIN).status_code in (400, 404)
        assert server.post(f"/v2/repository/models/{name}/unload", b"", **ADMIN).status_code in (400, 404)
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200


def test_malformed_inputs_are_4xx_never_5xx(server: Server) -> None:
    huge_dims = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [0, 2**63], "data": []}]})
    assert server.post("/v2/models/strings/infer", huge_dims.encode()).status_code == 400
    deep = '{"instances": [' + "[" * 990 + '{"b64": "AA=="}' + "]" * 990 + "]}"
    assert server.post("/v1/models/strings:predict", deep.encode()).status_code == 400
    assert server.post("/v2/models/mlp/versions/" + "1" * 5000 + "/infer", b"{}").status_code == 404
    assert httpx.get(server.url + "/v2/models/mlp", headers={"authorization": "Bearer wrong"}).status_code == 401
    outputs = json.loads(v2("x", [1, 64], [0.5] * 64)) | {"outputs": [{"name": f"y{i}"} for i in range(10_000)]}
    many = server.post("/v2/models/mlp/infer", json.dumps(outputs).encode())
    assert many.status_code == 400 and "asks for 10000 outputs" in error_of(many)


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header says width x height: what an image costs is known before it is decoded."""
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="PNG")
    data = bytearray(image.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height, then its CRC
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_an_image_far_larger_than_the_model_takes_is_refused_from_its_header(server: Server) -> None:
    with server.watched():
        started = time.perf_counter()
        huge = server.post("/v2/models/mobilenet_v2/predict", png_claiming(7000, 7000), **{"content-type": "image/png"})
        assert huge.status_code == 400 and "7000x7000" in error_of(huge) and time.perf_counter() - started < 1
    photo = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 120, 200)).save(photo, format="JPEG")  # a 12 MP phone photo passes
    answer = server.post("/v2/models/mobilenet_v2/predict", photo.getvalue(), **{"content-type": "image/jpeg"})
    assert answer.status_code == 200, answer.text


def test_explanations_are_off_unless_the_server_allows_them(server: Server) -> None:
    response = server.post("/v2/models/minilm/predict?explain=true", b"hello", **{"content-type": "text/plain"})
    assert response.status_code == 403 and "--explain" in error_of(response)


def test_an_explanation_is_built_in_bounded_chunks_off_the_event_loop(
    tmp_path_factory: pytest.TempPathFactory, kit: Any
) -> None:
    """MobileNetV2's 225 occluded copies cost +830 MB at once in float64; in float32 chunks of 32, tens of MB."""
    root = tmp_path_factory.mktemp("explaining")
    kit.copy_bundled("mobilenet_v2", root / "models")
    explaining = Server(root / "models", root, "--explain")
    try:
        photo = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(photo, format="PNG")
        path, headers = "/v2/models/mobilenet_v2/predict?explain=true", {"content-type": "image/png"}
        warm = explaining.post(path, photo.getvalue(), **headers)  # ONNX Runtime's arena grows to 32 rows once
        assert warm.status_code == 200 and len(warm.json()["explanation"]["saliency"]) == 224
        answers: list[httpx.Response] = []
        with explaining.watched(rss_mb=100):
            growth = explaining.peak_growth_mb(
                lambda: answers.append(explaining.post(path, photo.getvalue(), **headers))
            )
        assert answers[0].status_code == 200 and answers[0].json() == warm.json()
        assert growth < 100, f"peak RSS rose {growth:.0f} MB during one explanation"
    finally:
        explaining.stop()


def test_decision_models_refuse_the_tensor_endpoints_naming_predict(server: Server) -> None:
    response = server.post("/v2/models/cancer_triage/infer", v2("x", [1, 4], [0.5] * 4))
    assert response.status_code == 403 and "/v2/models/cancer_triage/predict" in error_of(response)


def test_a_model_without_a_batch_dimension_answers_its_whole_output(server: Server) -> None:
    response = server.post("/v2/models/ocr/predict", json.dumps([1.0, 2.0, 3.0, 4.0]).encode())
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]["y"]
    assert np.asarray(outputs).shape == (22, 1, 8)  # all 22 steps, not the first alone
    assert server.post("/v2/models/ocr/infer", v2("x", [1, 4], [1.0] * 4)).json()["outputs"][0]["shape"] == [22, 1, 8]


def test_predict_takes_a_list_of_items_and_answers_a_list(server: Server) -> None:
    one = server.post("/v2/models/minilm/predict", json.dumps("a cat").encode()).json()
    both = server.post("/v2/models/minilm/predict", json.dumps(["a cat", "a dog"]).encode())
    assert both.status_code == 200, both.text
    answers = both.json()
    assert isinstance(answers, list) and len(answers) == 2
    np.testing.assert_allclose(answers[0]["embedding"], one["embedding"], atol=1e-5)
    too_many = server.post("/v2/models/minilm/predict", json.dumps(["x"] * 33).encode())
    assert too_many.status_code == 400 and "max_batch_size of 32" in error_of(too_many)


def test_grpc_has_the_health_service_and_reflection(server: Server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {service.name for answer in answers for service in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services


def sequence_step(sequence_id: int, *, start: bool = False, end: bool = False) -> bytes:
    step = json.loads(v2("audio", [1, 512], [0.0] * 512))
    step["parameters"] = {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end}
    return json.dumps(step).encode()


def test_one_client_cannot_hold_every_sequence_on_any_transport(server: Server) -> None:
    for sequence_id in range(1, SEQUENCES_PER_CLIENT + 1):
        opened = server.post("/v2/models/silero_vad/infer", sequence_step(sequence_id, start=True))
        assert opened.status_code == 200, opened.text
    refused = server.post("/v2/models/silero_vad/infer", sequence_step(99, start=True))
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert f"max_sequences_per_client {SEQUENCES_PER_CLIENT}" in error_of(refused)
    message = pb.ModelInferRequest(model_name="silero_vad")  # the same host over gRPC: the same share
    message.inputs.add(name="audio", datatype="FP32", shape=[1, 512])
    message.raw_input_contents.append(np.zeros((1, 512), np.float32).tobytes())
    message.parameters["sequence_id"].int64_param = 99
    message.parameters["sequence_start"].bool_param = True
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel, pytest.raises(grpc.RpcError) as full:
        GRPCInferenceServiceStub(channel).ModelInfer(message, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"max_sequences_per_client {SEQUENCES_PER_CLIENT}" in full.value.details()
    websocket_url = f"ws://127.0.0.1:{server.port}/v2/models/silero_vad/stream"
    with connect(websocket_url, additional_headers=HEADERS, open_timeout=10) as stream:  # and over a WebSocket
        stream.send(sequence_step(99, start=True).decode())
        refused_on_stream = json.loads(stream.recv(timeout=10))
    assert f"max_sequences_per_client {SEQUENCES_PER_CLIENT}" in refused_on_stream["error"]
    another_host = httpx.HTTPTransport(local_address="127.0.0.2")  # the whole of 127/8 is this machine
    with httpx.Client(base_url=server.url, headers=HEADERS, transport=another_host, timeout=60) as other:
        assert other.post("/v2/models/silero_vad/infer", content=sequence_step(99, start=True)).status_code == 200
        assert other.post("/v2/models/silero_vad/infer", content=sequence_step(99, end=True)).status_code == 200
    assert server.post("/v2/models/silero_vad/infer", sequence_step(1, end=True)).status_code == 200  # frees a slot
    assert server.post("/v2/models/silero_vad/infer", sequence_step(99, start=True, end=True)).status_code == 200
    assert server.post("/v2/models/silero_vad/infer", sequence_step(2, end=True)).status_code == 200


def test_an_openai_client_with_a_wrong_key_is_told_why(server: Server) -> None:
    """OpenAI's routes refuse in OpenAI's error shape, whose message the SDK shows ({"error": "..."} left it with
    'Error code: 401' alone); the other routes keep theirs (tritonclient reads a string)."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="wrong bearer token"):
        client.models.list()
    with pytest.raises(openai.AuthenticationError, match="wrong bearer token"):
        client.embeddings.create(model="minilm", input="Hi")
    v2 = server.post("/v2/models/add/infer", b"{}", authorization="Bearer wrong")
    assert v2.status_code == 401 and isinstance(v2.json()["error"], str)


def test_the_repository_api_takes_the_admin_token_only(server: Server) -> None:
    index = "/v2/repository/index"
    assert server.post(index, b"{}", authorization="").status_code == 401
    with_auth_token = server.post(index, b"{}")
    assert with_auth_token.status_code == 403 and "admin token" in error_of(with_auth_token)
    assert server.post("/v2/repository/models/mlp/unload", b"{}").status_code == 403
    assert server.post(index, b"{}", **ADMIN).status_code == 200
    # the admin token passes on the data plane too
    assert server.post("/v2/models/mlp/infer", v2("x", [1, 64], [0.5] * 64), **ADMIN).status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=[("authorization", f"Bearer {TOKEN}")])
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as unloading:
            unload = pb.RepositoryModelUnloadRequest(model_name="mlp")
            stub.RepositoryModelUnload(unload, metadata=[("authorization", f"Bearer {TOKEN}")])
        assert unloading.value.code() == grpc.StatusCode.PERMISSION_DENIED
        rows = stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")])
        assert "mlp" in {row.name for row in rows.models}
    assert httpx.get(server.url + "/v2/models/mlp/ready", headers=HEADERS).json()["ready"] is True


def test_the_repository_api_is_off_on_a_non_loopback_address_without_an_admin_token(tmp_path: Path, kit: Any) -> None:
    kit.save(kit.add_graph(1.0), tmp_path / "add" / "1", {"max_batch_size": 4})
    metadata = [("authorization", f"Bearer {TOKEN}")]
    for allow, status, code in ((False, 403, grpc.StatusCode.PERMISSION_DENIED), (True, 200, None)):
        running = kit.serve(
            tmp_path, host="0.0.0.0", auth_token=TOKEN, allow_unauthenticated=allow, grpc_port=free_port()
        )
        try:
            answer = httpx.post(running.url + "/v2/repository/index", content=b"{}", headers=HEADERS)
            assert answer.status_code == status
            if not allow:
                assert "FORWARDPASS_ADMIN_TOKEN" in error_of(answer) and "--allow-unauthenticated" in error_of(answer)
            inferred = httpx.post(
                running.url + "/v2/models/add/infer", content=v2("x", [1, 4], [1] * 4), headers=HEADERS
            )
            assert inferred.status_code == 200
            with grpc.insecure_channel(running.grpc_address) as channel:
                stub = GRPCInferenceServiceStub(channel)
                if code is None:
                    assert stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=metadata).models
                else:
                    with pytest.raises(grpc.RpcError) as refused:
                        stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=metadata)
                    assert refused.value.code() == code
                    assert "FORWARDPASS_ADMIN_TOKEN" in (refused.value.details() or "")
        finally:
            running.stop()


def test_a_sequence_id_over_128_bytes_is_refused() -> None:
    from forwardpass.errors import InputError
    from forwardpass.scheduler.sequence import sequence_flags

    with pytest.raises(InputError, match="over 128 bytes"):
        sequence_flags({"sequence_id": "x" * 129, "sequence_start": True}, "vad")
    with pytest.raises(InputError, match="2\\*\\*64"):
        sequence_flags({"sequence_id": 2**70}, "vad")
    assert sequence_flags({"sequence_id": "x" * 128}, "vad")[0] == "x" * 128


def test_a_non_loopback_address_needs_a_token(tmp_path: Path) -> None:
    from forwardpass.errors import ConfigError
    from forwardpass.server.settings import ServerSettings

    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without an auth token"):
        ServerSettings(repository=tmp_path, host="0.0.0.0").checked()
    assert ServerSettings(repository=tmp_path, host="0.0.0.0", allow_unauthenticated=True).checked()
    token = tmp_path / "token"
    token.write_text("s3cret\n", encoding="utf-8")
    assert ServerSettings(repository=tmp_path, host="0.0.0.0", auth_token_file=token).checked().auth_token == "s3cret"
    with pytest.raises(ConfigError, match="admin token must differ"):
        ServerSettings(repository=tmp_path, auth_token_file=token, admin_token="s3cret").checked()


@pytest.mark.asyncio
async def test_a_decision_model_whose_audit_log_cannot_be_written_fails_its_load(
    tmp_path: Path, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forwardpass.registry import ModelRegistry
    from forwardpass.repository import Repository

    kit.copy_bundled("cancer_triage", tmp_path / "models")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")  # no folder can be made under it, not even by root
    monkeypatch.setenv("FORWARDPASS_AUDIT_LOG", str(blocker / "audit.sqlite"))
    registry = ModelRegistry(Repository(tmp_path / "models"))
    await registry.load_all()
    (row,) = registry.index()
    assert row["state"] == "UNAVAILABLE" and "FORWARDPASS_AUDIT_LOG" in row["reason"]
    assert not registry.ready()
    await registry.close()
