"""Calls that never send their request cannot lock the gRPC port: the real server on 127.0.0.1, limits scaled down.

An idle call is a unary method called as a stream whose requests never come (headers, no message — what a client
that stops after its headers looks like to the server) or a ModelStreamInfer stream that never sends. Before the gate,
such calls held grpcio's slots until their clients went away, and every other call, health checks included, was
refused RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.running_server import free_port

SERVER_LIVE = "/inference.GRPCInferenceService/ServerLive"
IDLE_METHODS = [SERVER_LIVE, "/inference.GRPCInferenceService/ModelStreamInfer", "/grpc.health.v1.Health/Check"]
WAIT_S = 30  # the deadline of every wait for the server (a loaded CI machine is slow, never this slow)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Path:
    root = tmp_path_factory.mktemp("gate-repository")
    kit.save(kit.add_graph(1.0), root / "add" / "1", {"max_batch_size": 8})
    return root


class IdleCalls:
    """Calls on one connection that send their headers and never a message, until `close`."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._release = threading.Event()
        self._calls: list[grpc.Future] = []
        self.ended: queue.Queue[grpc.Future] = queue.Queue()

    def open(self, count: int) -> None:
        for index in range(count):
            call = self._channel.stream_stream(IDLE_METHODS[index % len(IDLE_METHODS)])(self._nothing())
            call.add_done_callback(self.ended.put)
            self._calls.append(call)

    def wait_ended(self, count: int) -> list[grpc.Future]:
        return [self.ended.get(timeout=WAIT_S) for _ in range(count)]

    def close(self) -> None:
        self._release.set()
        for call in self._calls:
            call.cancel()
        self._channel.close()

    def _nothing(self) -> Iterator[bytes]:
        self._release.wait()
        yield from ()


@contextlib.contextmanager
def idle_calls(address: str) -> Iterator[IdleCalls]:
    calls = IdleCalls(address)
    try:
        yield calls
    finally:
        calls.close()


@contextlib.contextmanager
def from_another_host(address: str) -> Iterator[str]:
    """An address whose connections reach `address` from 127.0.0.2 (the whole of 127/8 is this machine): to the
    server, another client host."""
    host, port = address.rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    sockets = [listener]

    def pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection((host, int(port)), source_address=("127.0.0.2", 0))
                sockets.extend((client, upstream))
                for source, target in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pump, args=(source, target), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        for each in sockets:
            each.close()


def answers_everything(address: str) -> None:
    """A well-behaved client at `address` gets its answers: liveness, health, an inference, a stream."""
    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    with triton.InferenceServerClient(address) as client:
        assert client.is_server_live(client_timeout=WAIT_S)
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        answer = client.infer("add", [x], client_timeout=WAIT_S)
        np.testing.assert_array_equal(answer.as_numpy("y"), [[2.0, 2.0, 2.0, 2.0]])
        answers: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        client.async_stream_infer("add", [x])
        streamed = answers.get(timeout=WAIT_S)
        client.stop_stream()
        np.testing.assert_array_equal(streamed.as_numpy("y"), [[2.0, 2.0, 2.0, 2.0]])


def server_live(address: str) -> str:
    """'live', or the refusal's status and message."""
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(SERVER_LIVE)(b"", timeout=WAIT_S)
            return "live"
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            return str(error.details())


def test_one_client_holding_idle_calls_locks_no_other_client_out(repository: Path, kit: Any) -> None:
    running = kit.serve(repository, grpc_port=free_port(), max_concurrent_requests=8, max_grpc_calls_per_client=3)
    try:
        with idle_calls(running.grpc_address) as attack:
            attack.open(8)  # every slot of the server, all from 127.0.0.1
            refused = attack.wait_ended(5)  # the 3 others are held: the refusals came because they are
            assert [(call.code(), "max_grpc_calls_per_client" in call.details()) for call in refused] == [
                (grpc.StatusCode.RESOURCE_EXHAUSTED, True)
            ] * 5
            # The attacking host gets no more. Its refusal names the cap, not the server's limit, once grpc has let go
            # of the calls just refused (it counts a call until its thread is done): then the server has room.
            deadline = time.monotonic() + WAIT_S
            while "max_grpc_calls_per_client" not in (refusal := server_live(running.grpc_address)):
                assert "Concurrent RPC limit exceeded" in refusal and time.monotonic() < deadline, refusal
            with from_another_host(running.grpc_address) as other:
                answers_everything(other)
        deadline = time.monotonic() + WAIT_S  # its calls gone, that host is served again
        while (refusal := server_live(running.grpc_address)) != "live":
            assert "max_grpc_calls_per_client" in refusal and time.monotonic() < deadline, refusal
    finally:
        running.stop()


def test_calls_that_send_nothing_are_ended_after_the_body_timeout(repository: Path, kit: Any) -> None:
    """With every slot held by one host's idle calls, the server frees them itself: `body_timeout_s` after they
    were accepted, calls whose first message has not come are cancelled."""
    running = kit.serve(
        repository, grpc_port=free_port(), max_concurrent_requests=4, max_grpc_calls_per_client=4, body_timeout_s=0.5
    )
    try:
        with idle_calls(running.grpc_address) as attack:
            attack.open(4)
            ended = attack.wait_ended(4)
            assert {call.code() for call in ended} == {grpc.StatusCode.CANCELLED}
            answers_everything(running.grpc_address)
    finally:
        running.stop()


def test_a_stream_that_sends_lives_past_the_body_timeout(repository: Path, kit: Any) -> None:
    """Only the first message has a deadline: a stream pausing for twice `body_timeout_s` between requests is
    answered after each pause."""
    running = kit.serve(repository, grpc_port=free_port(), body_timeout_s=0.5)
    try:
        with triton.InferenceServerClient(running.grpc_address) as client:
            answers: queue.Queue[Any] = queue.Queue()
            client.start_stream(callback=lambda result, error: answers.put(error or result))
            x = triton.InferInput("x", [1, 4], "FP32")
            for step in range(3):
                x.set_data_from_numpy(np.full((1, 4), step, np.float32))
                client.async_stream_infer("add", [x])
                answer = answers.get(timeout=WAIT_S)
                np.testing.assert_array_equal(answer.as_numpy("y"), np.full((1, 4), step + 1, np.float32))
                time.sleep(1.0)
            client.stop_stream()
    finally:
        running.stop()


def test_a_unary_call_without_its_message_is_an_invalid_argument(repository: Path, kit: Any) -> None:
    running = kit.serve(repository, grpc_port=free_port())
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            ended = channel.stream_stream(SERVER_LIVE)(iter(()))  # headers, then the end of the client's side
            assert ended.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "without its request message" in ended.details()
    finally:
        running.stop()
