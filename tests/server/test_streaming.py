"""Streaming transports and stateful sequences end to end: the real server, the stock tritonclient (gRPC
`ModelStreamInfer` with sequence ids and start/end flags), a WebSocket client, and the bundled Silero VAD.

Interleaved and concurrent sequences must give the silero-vad package's own chunk-by-chunk probabilities for each
sequence alone; idle sequences are freed; an unknown correlation id without the start flag is INVALID_ARGUMENT / 400.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton
import yaml
from tritonclient.utils import InferenceServerException
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from forwardpass.server.guard import OFFLOAD_BYTES
from tests.running_server import free_port
from tests.vad_audio import CHUNK, package_probabilities, voice

TOKEN = "s3cret"
IDLE_S = 0.3


@pytest.fixture(scope="module")
def stream_repository(tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Path:
    """silero_vad as bundled; vad_short_idle, the same model freeing sequences after 0.3 s; add, a stateless model."""
    root = tmp_path_factory.mktemp("stream-repository")
    short = kit.copy_bundled("silero_vad", root).rename(root / "vad_short_idle")
    kit.copy_bundled("silero_vad", root)
    config = yaml.safe_load((short / "config.yaml").read_text())
    config["sequence_batching"] = {**config["sequence_batching"], "idle_timeout_s": IDLE_S, "max_sequences": 2}
    config["sequence_batching"]["max_sequences_per_client"] = 2  # one client (this test) may fill both slots
    (short / "config.yaml").write_text(yaml.safe_dump(config))
    kit.save(kit.add_graph(1.0), root / "add" / "1", {"max_batch_size": 16})
    return root


@pytest.fixture(scope="module")
def server(stream_repository: Path, kit: Any) -> Iterator[Any]:
    running = kit.serve(stream_repository, grpc_port=free_port(), shutdown_grace_s=1.0)
    yield running
    running.stop()


@pytest.fixture
def client(server: Any) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.grpc_address) as connected:
        yield connected


def audio_input(chunk: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("audio", [1, CHUNK], "FP32")
    tensor.set_data_from_numpy(chunk.reshape(1, CHUNK))
    return tensor


def stream_sequences(
    client: triton.InferenceServerClient, audios: dict[int, np.ndarray], model: str = "silero_vad"
) -> list[tuple[str, float]]:
    """Every sequence's chunks interleaved round robin on one gRPC stream → (request id, probability) in the order
    the answers came."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = 0
    try:
        longest = max(len(audio) // CHUNK for audio in audios.values())
        for index in range(longest):
            for sequence_id, audio in audios.items():
                chunks = audio.reshape(-1, CHUNK)
                if index >= len(chunks):
                    continue
                client.async_stream_infer(
                    model,
                    [audio_input(chunks[index])],
                    request_id=f"{sequence_id}/{index}",
                    sequence_id=sequence_id,
                    sequence_start=index == 0,
                    sequence_end=index == len(chunks) - 1,
                )
                sent += 1
        received = [answers.get(timeout=60) for _ in range(sent)]
    finally:
        client.stop_stream()
    assert [error for _, error in received if error is not None] == []
    return [(result.get_response().id, float(result.as_numpy("output")[0, 0])) for result, _ in received]


def by_sequence(answers: list[tuple[str, float]]) -> dict[int, list[float]]:
    grouped: dict[int, list[float]] = {}
    for request_id, probability in answers:
        grouped.setdefault(int(request_id.split("/")[0]), []).append(probability)
    return grouped


def test_interleaved_sequences_on_one_grpc_stream_match_the_package_alone(
    client: triton.InferenceServerClient,
) -> None:
    audios = {11: voice(2.0, 0), 22: voice(1.5, 1), 33: voice(2.5, 2)}
    answers = stream_sequences(client, audios)
    sent_order = []
    for index in range(max(len(a) // CHUNK for a in audios.values())):
        sent_order += [f"{s}/{index}" for s, a in audios.items() if index < len(a) // CHUNK]
    assert [request_id for request_id, _ in answers] == sent_order  # answers in request order, with their ids
    served = by_sequence(answers)
    everything: list[float] = []
    for sequence_id, audio in audios.items():
        expected = package_probabilities(audio)
        np.testing.assert_allclose(served[sequence_id], expected, atol=1e-5)
        everything.extend(expected)
    assert min(everything) < 0.05 and max(everything) > 0.95
    statistics = client.get_inference_statistics("silero_vad", as_json=True)["model_stats"][0]
    rows = sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in statistics.get("batch_stats", []))
    assert rows >= len(answers)  # every step ran in some forward pass the server counted
    assert max(int(b["batch_size"]) for b in statistics["batch_stats"]) > 1  # sequences shared forward passes


def test_grpc_stream_steps_reach_the_model_in_the_order_sent_whatever_their_size(
    client: triton.InferenceServerClient,
) -> None:
    """As over WebSocket: each start step is padded past guard.OFFLOAD_BYTES (its request id), so it is decoded in a
    worker thread; the small steps sent after it overtook it and were refused ("sequence ... is not active")."""
    audio = voice(0.25, 4)
    chunks = audio.reshape(-1, CHUNK)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for sequence_id in range(1, 6):
            for index, chunk in enumerate(chunks):
                padding = " " * (OFFLOAD_BYTES + 1024) if index == 0 else ""
                client.async_stream_infer(
                    "silero_vad",
                    [audio_input(chunk)],
                    request_id=f"{sequence_id}/{index}{padding}",
                    sequence_id=sequence_id,
                    sequence_start=index == 0,
                    sequence_end=index == len(chunks) - 1,
                )
        received = [answers.get(timeout=60) for _ in range(5 * len(chunks))]
    finally:
        client.stop_stream()
    assert [str(error) for _, error in received if error is not None] == []
    served = by_sequence(
        [(result.get_response().id.strip(), float(result.as_numpy("output")[0, 0])) for result, _ in received]
    )
    for sequence_id in range(1, 6):
        np.testing.assert_allclose(served[sequence_id], package_probabilities(audio), atol=1e-5)


def test_concurrent_clients_each_get_their_own_sequence(server: Any) -> None:
    audios = {101 + i: voice(1.0 + 0.25 * i, i) for i in range(3)}
    results: dict[int, list[float]] = {}
    failures: list[BaseException] = []

    def one(sequence_id: int) -> None:
        try:
            with triton.InferenceServerClient(server.grpc_address) as own:
                results[sequence_id] = by_sequence(stream_sequences(own, {sequence_id: audios[sequence_id]}))[
                    sequence_id
                ]
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(sequence_id,)) for sequence_id in audios]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    for sequence_id, audio in audios.items():
        np.testing.assert_allclose(results[sequence_id], package_probabilities(audio), atol=1e-5)


def test_unknown_correlation_id_without_start_is_invalid_argument(
    client: triton.InferenceServerClient, server: Any
) -> None:
    chunk = np.zeros(CHUNK, np.float32)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("silero_vad", [audio_input(chunk)], sequence_id=424242)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "sequence 424242 is not active" in refused.value.message()
    with pytest.raises(InferenceServerException) as missing:
        client.infer("silero_vad", [audio_input(chunk)])
    assert missing.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "sequence_id" in missing.value.message()
    body = {
        "inputs": [{"name": "audio", "datatype": "FP32", "shape": [1, CHUNK], "data": chunk.tolist()}],
        "parameters": {"sequence_id": "never-started"},
    }
    response = httpx.post(f"{server.url}/v2/models/silero_vad/infer", json=body)
    assert response.status_code == 400
    assert "sequence 'never-started' is not active" in response.json()["error"]
    started = httpx.post(
        f"{server.url}/v2/models/silero_vad/infer",
        json={**body, "parameters": {"sequence_id": "http-seq", "sequence_start": True, "sequence_end": True}},
    )
    assert started.status_code == 200, started.text
    assert [output["name"] for output in started.json()["outputs"]] == ["output"]


def test_an_unknown_sequence_fails_alone_inside_a_stream(client: triton.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    chunks = voice(0.2, 1).reshape(-1, CHUNK)
    try:
        client.async_stream_infer(
            "silero_vad", [audio_input(chunks[0])], request_id="a", sequence_id=7, sequence_start=True
        )
        client.async_stream_infer("silero_vad", [audio_input(chunks[1])], request_id="b", sequence_id=8)
        client.async_stream_infer(
            "silero_vad", [audio_input(chunks[1])], request_id="c", sequence_id=7, sequence_end=True
        )
        received = [answers.get(timeout=60) for _ in range(3)]
    finally:
        client.stop_stream()
    assert received[0][1] is None and received[2][1] is None
    assert "sequence 8 is not active" in str(received[1][1])
    expected = package_probabilities(chunks[:2].ravel())
    np.testing.assert_allclose(
        [float(r.as_numpy("output")[0, 0]) for r in (received[0][0], received[2][0])], expected, atol=1e-5
    )


def test_an_idle_sequence_is_freed_and_then_refused(client: triton.InferenceServerClient, server: Any) -> None:
    sequencer = server.server.registry.get("vad_short_idle").sequencer
    chunk = np.zeros(CHUNK, np.float32)
    started = time.monotonic()
    client.infer("vad_short_idle", [audio_input(chunk)], sequence_id=5, sequence_start=True)
    client.infer("vad_short_idle", [audio_input(chunk)], sequence_id=5)  # soon after: still active
    assert sequencer.active == 1
    while sequencer.active and time.monotonic() - started < 30:  # waits for the idle timeout itself
        time.sleep(0.02)
    assert sequencer.active == 0 and time.monotonic() - started >= IDLE_S
    with pytest.raises(InferenceServerException) as refused:
        client.infer("vad_short_idle", [audio_input(chunk)], sequence_id=5)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "idle for over 0.3 s and freed" in refused.value.message()
    for sequence_id in (1, 2):  # its two slots (max_sequences: 2) are free again
        client.infer("vad_short_idle", [audio_input(chunk)], sequence_id=sequence_id, sequence_start=True)
    with pytest.raises(InferenceServerException) as full:
        client.infer("vad_short_idle", [audio_input(chunk)], sequence_id=3, sequence_start=True)
    assert full.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    for sequence_id in (1, 2):
        client.infer("vad_short_idle", [audio_input(chunk)], sequence_id=sequence_id, sequence_end=True)
    assert sequencer.active == 0


def test_metadata_shows_what_clients_send_and_config_declares_the_state(
    client: triton.InferenceServerClient, server: Any
) -> None:
    metadata = httpx.get(f"{server.url}/v2/models/silero_vad").json()
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["audio"]
    assert [tensor["name"] for tensor in metadata["outputs"]] == ["output"]
    config = client.get_model_config("silero_vad").config
    assert config.sequence_batching.max_sequence_idle_microseconds == 60_000_000
    assert [(s.input_name, s.output_name) for s in config.sequence_batching.state] == [
        ("state", "stateN"),
        ("context", "contextN"),
    ]


def ws_request(request_id: str, chunk: np.ndarray, **parameters: Any) -> str:
    inputs = [{"name": "audio", "datatype": "FP32", "shape": [1, CHUNK], "data": chunk.tolist()}]
    return orjson.dumps({"id": request_id, "inputs": inputs, "parameters": parameters}).decode()


def test_websocket_streams_sequences_in_order_and_bad_messages_fail_alone(server: Any) -> None:
    audios = {1: voice(1.0, 0), 2: voice(0.75, 1)}
    messages: list[str] = []
    expected_ids: list[str | None] = []
    for index in range(max(len(a) // CHUNK for a in audios.values())):
        for sequence_id, audio in audios.items():
            chunks = audio.reshape(-1, CHUNK)
            if index < len(chunks):
                flags = {"sequence_start": index == 0, "sequence_end": index == len(chunks) - 1}
                messages.append(ws_request(f"{sequence_id}/{index}", chunks[index], sequence_id=sequence_id, **flags))
                expected_ids.append(f"{sequence_id}/{index}")
        if index == 3:
            messages += ["not json at all", ws_request("lost", audios[1][:CHUNK], sequence_id=999)]
            expected_ids += [None, "lost"]
    with connect(f"ws://127.0.0.1:{server.port}/v2/models/silero_vad/stream") as websocket:
        for message in messages:  # all sent before any answer is read: requests are in flight together
            websocket.send(message)
        answers = [orjson.loads(websocket.recv(timeout=60)) for _ in messages]
    assert [answer.get("id") for answer in answers] == expected_ids
    assert "not valid JSON" in answers[expected_ids.index(None)]["error"]
    assert "sequence 999 is not active" in answers[expected_ids.index("lost")]["error"]
    served: dict[int, list[float]] = {}
    for answer in answers:
        if "outputs" in answer:
            served.setdefault(int(answer["id"].split("/")[0]), []).append(answer["outputs"][0]["data"][0])
    for sequence_id, audio in audios.items():
        np.testing.assert_allclose(served[sequence_id], package_probabilities(audio), atol=1e-5)


def test_websocket_steps_reach_the_model_in_the_order_sent_whatever_their_size(server: Any) -> None:
    """A large message is decoded in a worker thread: a small one sent after it must still reach the model after it.
    Each start step here is padded past guard.OFFLOAD_BYTES (JSON whitespace): the small steps behind it overtook
    it and were refused ("sequence ... is not active"), or ran on another step's state."""
    audio = voice(0.25, 4)
    chunks = audio.reshape(-1, CHUNK)
    messages = []
    for sequence_id in range(1, 6):
        for index, chunk in enumerate(chunks):
            flags = {"sequence_start": index == 0, "sequence_end": index == len(chunks) - 1}
            message = ws_request(f"{sequence_id}/{index}", chunk, sequence_id=sequence_id, **flags)
            messages.append(message[:-1] + " " * (OFFLOAD_BYTES + 1024) + "}" if index == 0 else message)
    with connect(f"ws://127.0.0.1:{server.port}/v2/models/silero_vad/stream") as websocket:
        for message in messages:
            websocket.send(message)
        answers = [orjson.loads(websocket.recv(timeout=60)) for _ in messages]
    assert [answer.get("error") for answer in answers] == [None] * len(messages)
    expected = package_probabilities(audio)
    for sequence_id in range(1, 6):
        served = [answer["outputs"][0]["data"][0] for answer in answers if answer["id"].startswith(f"{sequence_id}/")]
        np.testing.assert_allclose(served, expected, atol=1e-5)


def test_websocket_serves_stateless_models_too(server: Any) -> None:
    with connect(f"ws://127.0.0.1:{server.port}/v2/models/add/versions/1/stream") as websocket:
        for index in range(5):
            body = {
                "id": str(index),
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [index] * 4}],
            }
            websocket.send(orjson.dumps(body).decode())
        answers = [orjson.loads(websocket.recv(timeout=60)) for _ in range(5)]
    assert [answer["id"] for answer in answers] == ["0", "1", "2", "3", "4"]
    assert [answer["outputs"][0]["data"] for answer in answers] == [[index + 1.0] * 4 for index in range(5)]


def test_a_websocket_message_over_the_models_body_limit_is_refused_unread(server: Any) -> None:
    """HTTP refuses (413) a body larger than the model's inputs can fill before reading it; a stream message is
    refused the same way, before its JSON is parsed (so its answer, in its place, has no id), and the stream goes on."""
    oversized = {"id": "big", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 100_000}]}
    small = {"id": "small", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4}]}
    with connect(f"ws://127.0.0.1:{server.port}/v2/models/add/stream") as websocket:
        websocket.send(orjson.dumps(oversized).decode())
        websocket.send(orjson.dumps(small).decode())
        refused, answered = (orjson.loads(websocket.recv(timeout=60)) for _ in range(2))
    assert list(refused) == ["error"] and "over model 'add''s limit" in refused["error"], refused
    assert answered["outputs"][0]["data"] == [2.0] * 4


def test_a_text_frame_that_is_not_utf8_closes_the_stream_with_one_log_line(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's fault is one line in the server's log, not uvicorn's traceback (one per such frame)."""
    with caplog.at_level(logging.ERROR), connect(f"ws://127.0.0.1:{server.port}/v2/models/add/stream") as websocket:
        websocket.send(b"\xff\xfe{}", text=True)
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007  # invalid frame payload data
    records = [record for record in caplog.records if "UTF-8" in record.getMessage()]
    assert records and all(record.exc_info is None and record.exc_text is None for record in records)


def test_websocket_needs_the_token_when_the_server_has_one(stream_repository: Path, kit: Any) -> None:
    guarded = kit.serve(stream_repository, auth_token=TOKEN)
    try:
        url = f"ws://127.0.0.1:{guarded.port}/v2/models/add/stream"
        with pytest.raises(InvalidStatus) as refused:
            connect(url)
        assert refused.value.response.status_code == 403
        with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as websocket:
            websocket.send(
                orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}).decode()
            )
            assert orjson.loads(websocket.recv(timeout=60))["outputs"][0]["data"] == [1.0] * 4
    finally:
        guarded.stop()


def test_two_rows_in_one_sequence_step_are_refused_saying_a_step_is_one_row(
    client: triton.InferenceServerClient,
) -> None:
    """The refusal named a 'max_batch_size of 1' that the model's config (16) and its Triton config (0) both
    contradict: the bound is the sequence's, one row per step."""
    tensor = triton.InferInput("audio", [2, CHUNK], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, CHUNK), np.float32))
    with pytest.raises(InferenceServerException) as refused:
        client.infer("silero_vad", [tensor], sequence_id=77, sequence_start=True)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'audio': a sequence step carries one row, this one 2; send them as steps" in refused.value.message()
