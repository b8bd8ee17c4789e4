"""Dynamic batching through the real HTTP server: concurrent requests share forward passes, a bad request inside a
batch fails alone, and a request that finds the engine idle runs at once (it never waits for company). What ran
together is read from the batcher's own observer and the server's queue-time histogram, not from wall-clock time."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory, kit) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("batching")
    kit.save(kit.gather_graph(slow=True), root / "gather" / "1", {"max_batch_size": 32})
    # requests queued behind a running batch wait (up to 2 s) until exactly 15 rows can go together
    burst = {"max_batch_size": 32, "dynamic_batching": {"max_queue_delay_us": 2_000_000, "preferred_batch_size": [15]}}
    kit.save(kit.gather_graph(slow=True), root / "gather_burst" / "1", burst)
    # a long queue delay: a request that finds the engine idle must still run at once
    delayed = {
        "max_batch_size": 64,
        "dynamic_batching": {"max_queue_delay_us": 1_000_000, "preferred_batch_size": [64]},
    }
    kit.save(kit.mlp_graph(), root / "mlp_batched" / "1", delayed)
    running = kit.serve(root)
    yield running
    running.stop()


def post(connection: http.client.HTTPConnection, path: str, document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    connection.request("POST", path, orjson.dumps(document), {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, orjson.loads(response.read())


def gather_request(index: int) -> dict[str, Any]:
    return {"inputs": [{"name": "index", "datatype": "INT64", "shape": [1, 1], "data": [index]}]}


def test_a_bad_request_inside_a_batch_fails_alone_while_its_neighbours_succeed(batching_server):
    indexes = [1, 2, 3, 4, 5, 99, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5]  # 99 is past the table: only ONNX Runtime notices
    sizes = batching_server.batch_sizes("gather_burst")
    results: dict[int, tuple[int, dict[str, Any]]] = {}
    sent = [threading.Event() for _ in indexes]

    def send(slot: int, connection: http.client.HTTPConnection) -> None:
        body = orjson.dumps(gather_request(indexes[slot]))
        connection.request("POST", "/v2/models/gather_burst/infer", body, {"Content-Type": "application/json"})
        sent[slot].set()
        response = connection.getresponse()
        results[slot] = response.status, orjson.loads(response.read())
        connection.close()

    connections = [http.client.HTTPConnection("127.0.0.1", batching_server.port, timeout=60) for _ in indexes]
    for connection in connections:  # connected and accepted before the loop is held
        connection.request("GET", "/v2/health/ready")
        connection.getresponse().read()
    # the server reads all sixteen at once: the first finds the engine idle and runs alone, the fifteen behind it
    # queue while it runs and wait (up to the 2 s queue delay) until the preferred 15 rows can go together
    resume = batching_server.hold_loop()
    threads = [threading.Thread(target=send, args=(slot, connections[slot])) for slot in range(len(indexes))]
    for thread in threads:
        thread.start()
    try:
        assert all(event.wait(timeout=30) for event in sent), "a request was not sent"
    finally:
        resume.set()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == len(indexes), "a request was not answered within 60 s"
    for slot, index in enumerate(indexes):
        status, body = results[slot]
        if index == 99:
            assert status == 400
            assert "refused the input" in body["error"] and "idx=99" in body["error"]
        else:
            assert status == 200, body
            assert body["outputs"][0]["data"] == [float(v) for v in range(index * 4, index * 4 + 4)]
    assert sorted(sizes) == [1, 15], sizes  # the fifteen queued requests, the bad one among them, ran as one batch


def test_concurrent_requests_are_coalesced_into_batches_larger_than_one(batching_server):
    before = _stats(batching_server, "gather")["execution_count"]
    done = []

    def client(worker: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", batching_server.port, timeout=60)
        for i in range(6):
            status, _ = post(connection, "/v2/models/gather/infer", gather_request((worker + i) % 10))
            done.append(status)
        connection.close()

    threads = [threading.Thread(target=client, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert done == [200] * 48
    stats = _stats(batching_server, "gather")
    assert stats["execution_count"] - before < 48  # fewer forward passes than requests
    text = _get(batching_server, "/metrics").decode()
    ones = _bucket(text, "gather", "1.0")
    total = _bucket(text, "gather", "+Inf")
    assert total > ones  # the batch-size histogram saw batches of more than one row


def test_an_idle_server_adds_no_latency_with_batching_on(batching_server):
    """Concurrency 1 against a model with a 1 s queue delay: every request finds the engine idle, so it runs at once,
    alone: its queue time (the batcher's own, from submission to dispatch) is far below the delay it could wait."""
    sizes = batching_server.batch_sizes("mlp_batched")
    connection = http.client.HTTPConnection("127.0.0.1", batching_server.port, timeout=60)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}]}
    for _ in range(50):
        status, answer = post(connection, "/v2/models/mlp_batched/infer", body)
        assert status == 200, answer
    connection.close()
    assert sizes == [1] * 50  # each ran alone: none waited for company
    text = _get(batching_server, "/metrics").decode()
    queued = _queue_bucket(text, "mlp_batched", "+Inf")
    assert queued == 50
    assert _queue_bucket(text, "mlp_batched", "0.1") == queued  # a request that waited would have waited 1 s


def _get(server, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()


def _stats(server, model: str) -> dict[str, Any]:
    return orjson.loads(_get(server, f"/v2/models/{model}/stats"))["model_stats"][0]


def _bucket(text: str, model: str, le: str) -> float:
    prefix = f'forwardpass_batch_size_bucket{{le="{le}",model="{model}",version="1"}} '
    return next(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def _queue_bucket(text: str, model: str, le: str) -> float:
    prefix = f'forwardpass_stage_duration_seconds_bucket{{le="{le}",model="{model}",stage="queue",version="1"}} '
    return next(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))
