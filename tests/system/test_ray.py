"""Ray for real: a local two-node cluster (a head and a worker node, 1 CPU each, on this machine) runs the batch
job on Ray Data and the V2 server on Ray Serve; both must answer exactly as the local job and `forwardpass serve`.
The cluster is started once for the module and shut down at its end."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

import forwardpass
from forwardpass.modes.batch import BatchOptions, run_batch
from forwardpass.modes.sinks import ERRORS_FILE
from forwardpass.server.settings import ServerSettings
from tests.modes.conftest import build_repository, write_table
from tests.modes.test_batch import read_rows
from tests.running_server import free_port

ray = pytest.importorskip("ray", reason="pip install forwardpass[ray]")
FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("ray-models"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    from ray.cluster_utils import Cluster

    # Ray's unix sockets need a short path, given as the variable: with Cluster, a temp-dir argument still writes the
    # cluster address file under the default temp dir, and the start fails.
    temp = tempfile.mkdtemp(prefix="fp-ray-", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        head.add_node(num_cpus=1)
        head.wait_for_nodes()
        ray.init(address=head.address, logging_level="error", log_to_driver=False)
        assert len([node for node in ray.nodes() if node["Alive"]]) == 2
        yield head
    finally:
        ray.shutdown()
        head.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp, ignore_errors=True)


def test_batch_on_ray_data_equals_the_local_job(cluster: object, repository: Path, tmp_path: Path):
    from forwardpass.modes.ray_data import run_batch_on_ray

    table = tmp_path / "records.csv"
    write_table(table, 1_500, seed=9, bad_every=89)
    options = BatchOptions(part_size=300, max_errors=None)
    local = run_batch(forwardpass.load("tab_cls", repository=repository), table, tmp_path / "local", options)
    on_ray = run_batch_on_ray(
        "tab_cls", table, tmp_path / "ray", options, repository=repository, actors=2, actor_cpus=0.5
    )
    assert (on_ray.records, on_ray.rows, on_ray.errors) == (local.records, local.rows, local.errors) == (1500, 1484, 16)
    assert read_rows(tmp_path / "ray") == read_rows(tmp_path / "local")
    assert (tmp_path / "ray" / ERRORS_FILE).read_bytes() == (tmp_path / "local" / ERRORS_FILE).read_bytes()
    # resuming a finished job computes nothing, on Ray too
    again = run_batch_on_ray("tab_cls", table, tmp_path / "ray", BatchOptions(part_size=300, resume=True),
                             repository=repository)  # fmt: skip
    assert again.computed == 0 and again.rows == 1484


def infer(port: int, batch: np.ndarray) -> tuple[np.ndarray, dict[str, object]]:
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_ready() and client.is_model_ready("tab_cls")
        tensor = triton.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer("tab_cls", [tensor], outputs=[triton.InferRequestedOutput("logits")])
        return result.as_numpy("logits"), client.get_model_metadata("tab_cls")
    finally:
        client.close()


def test_ray_serve_answers_a_tritonclient_request_like_forwardpass_serve(cluster: object, repository: Path):
    from ray import serve

    from forwardpass.modes.ray_serve import deploy

    batch = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    port = free_port()
    server = subprocess.Popen(
        [FORWARDPASS, "serve", "-r", str(repository), "--http-port", str(port), "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    try:
        for line in server.stdout:  # the server prints its ready models once it serves
            if line.strip().startswith("ready:"):
                break
        expected, expected_metadata = infer(port, batch)
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()

    ray_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": ray_port}, proxy_location="HeadOnly")
    try:
        settings = ServerSettings(repository=repository, http_port=ray_port, grpc_port=0)
        deploy(settings, replicas=2, replica_cpus=0.25)
        got, metadata = infer(ray_port, batch)
    finally:
        serve.shutdown()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert metadata == expected_metadata


def test_serve_ray_through_the_cli_answers_like_the_model_in_process_and_stops_on_sigterm(
    cluster: object, repository: Path
):
    """`forwardpass serve --ray` joins the cluster, serves V2, /predict, WebSocket, generation and OpenAI routes,
    and on SIGTERM takes its deployment down and exits 0, leaving no Serve actor and no listener behind."""
    from websockets.sync.client import connect

    port = free_port()
    command = [FORWARDPASS, "serve", "--ray", "--ray-address", cluster.address, "-r", str(repository)]  # type: ignore[attr-defined]
    server = subprocess.Popen(
        [*command, "--http-port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = server.stdout
    assert output is not None
    lines: queue.Queue[str] = queue.Queue()

    def read_output() -> None:
        for line in output:
            lines.put(line)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        printed = ""
        while "on Ray Serve" not in printed:  # printed once every replica is ready
            assert server.poll() is None, printed
            printed += lines.get(timeout=max(0.1, deadline - time.monotonic()))
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/v2/health/ready", timeout=30).status_code == 200

        model = forwardpass.load("tab_cls", repository=repository)
        batch = np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 3], "data": batch.ravel().tolist()}]}
        answer = httpx.post(url + "/v2/models/tab_cls/infer", json=body, timeout=30).json()
        expected = model.infer({"input": batch})["logits"]
        np.testing.assert_allclose(np.reshape(answer["outputs"][0]["data"], (4, 3)), expected, rtol=1e-6)
        record = {"a": 1.5, "b": -0.5, "c": 2.0}
        predicted = httpx.post(url + "/v2/models/tab_cls/predict", json=record, timeout=30).json()
        in_process = model.predict(record)
        assert predicted["label"] == in_process["label"]
        assert predicted["score"] == pytest.approx(in_process["score"], abs=1e-6)

        # the routes of `forwardpass serve` beside V2: WebSocket, generation (a classifier is no decoder), OpenAI
        with connect(f"ws://127.0.0.1:{port}/v2/models/tab_cls/stream", open_timeout=30) as socket_:
            socket_.send(json.dumps({"id": "1", **body}))
            streamed = json.loads(socket_.recv(timeout=30))
        assert streamed["id"] == "1" and streamed["outputs"][0]["data"] == answer["outputs"][0]["data"]
        generate = httpx.post(url + "/v2/models/tab_cls/generate", json={"text_input": "hi"}, timeout=30)
        assert generate.status_code == 400 and "no such endpoint" not in generate.text
        assert httpx.get(url + "/v1/models", timeout=30).status_code == 200
        serving = ray.util.list_named_actors(all_namespaces=True)
        assert [actor for actor in serving if "SERVE_REPLICA" in actor["name"]], serving  # what must be gone after
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        reader.join(timeout=30)  # it reads to the end of the pipe; closing it under a reader would raise there
        output.close()
    assert code == 0
    named = ray.util.list_named_actors(all_namespaces=True)  # Serve's controller, proxies and replicas are named
    assert not [actor for actor in named if "SERVE" in actor["name"]], named
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=5)
