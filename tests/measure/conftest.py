"""A real `forwardpass serve` process for the tests that load a server (load generator, MLPerf over HTTP), and the
minimal stand-in server that counts what it serves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.measure.standin import StandIn, free_port, standin_server

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")


def _mlp(path: Path) -> None:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    path.write_bytes(model.SerializeToString())


@dataclass(frozen=True)
class Served:
    http: str  # http://127.0.0.1:PORT
    grpc: str  # grpc://127.0.0.1:PORT
    model_file: Path  # what the server serves as model "mlp"


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real `forwardpass serve` process on free ports, serving one small MLP named "mlp"."""
    repository = tmp_path_factory.mktemp("served")
    model_file = repository / "mlp" / "1" / "model.onnx"
    _mlp(model_file)
    http_port, grpc_port = free_port(), free_port()
    command = [
        FORWARDPASS,
        "serve",
        "--repository",
        str(repository),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--host",
        "127.0.0.1",
    ]
    log = repository / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=os.environ.copy())
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while True:  # readiness is a state to poll: the server says when it is ready
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"forwardpass serve did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    yield Served(url, f"grpc://127.0.0.1:{grpc_port}", model_file)
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    with standin_server() as server:
        yield server
