"""A real server for the client tests: the server tests' builders (tests/server/conftest.py, loaded by path, since
under --import-mode=importlib one conftest cannot import another) with HTTP and gRPC both listening on 127.0.0.1."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import forwardpass
from forwardpass.client import AsyncGrpcInferenceClient, AsyncInferenceClient, GrpcInferenceClient, InferenceClient
from forwardpass.server.settings import ServerSettings
from tests.running_server import loaded_once

_spec = importlib.util.spec_from_file_location(
    "forwardpass_tests_server_conftest", Path(__file__).parents[1] / "server" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
server_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(server_conftest)

CLIENTS = ["http", "http-async", "grpc", "grpc-async"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(repository: Path, http_port: int = 0, **overrides: Any) -> Any:
    """A RunningServer with gRPC on too; `.url` is its HTTP address, `.grpc_url` its gRPC one."""
    grpc_port = _free_port()
    settings = ServerSettings(repository=repository, http_port=http_port, grpc_port=grpc_port, **overrides)
    running = server_conftest.RunningServer(settings).start()
    running.grpc_url = f"127.0.0.1:{grpc_port}"
    return running


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server tests' models (mlp, strings, digits_cnn, diabetes, ...) and `slow` (~30 ms a forward pass)."""
    root = server_conftest.build_repository(tmp_path_factory.mktemp("client-repository"))
    server_conftest.save(server_conftest.slow_graph(), root / "slow" / "1", {"max_batch_size": 4})
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Any]:
    running = _serve(repository)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def model(repository: Path) -> Iterator[Callable[[str], forwardpass.Model]]:
    """The in-process Model of a served model, loaded once per module: the reference every answer must equal."""
    yield from loaded_once(repository)


class Synced:
    """An async client driven from a test: each coroutine method runs to completion on a loop of its own. The client
    is made outside any loop, as a user may; it opens its connections on first use, in the loop."""

    def __init__(self, client: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        return lambda *args, **kwargs: self._loop.run_until_complete(method(*args, **kwargs))

    def close(self) -> None:
        self._loop.run_until_complete(self.client.close())
        self._loop.close()


def connect(kind: str, running: Any, **options: Any) -> Any:
    """A client of `kind` (one of CLIENTS) to `running`; async ones wrapped in Synced. The caller closes it."""
    if kind == "http":
        return InferenceClient(running.url, **options)
    if kind == "grpc":
        return GrpcInferenceClient(running.grpc_url, **options)
    if kind == "http-async":
        return Synced(AsyncInferenceClient(running.url, **options))
    return Synced(AsyncGrpcInferenceClient(running.grpc_url, **options))


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest, server: Any) -> Iterator[Any]:
    connected = connect(request.param, server)
    yield connected
    connected.close()


@pytest.fixture(scope="session")
def connector() -> Callable[..., Any]:
    """`connector(kind, running_server, **options)`: a client of that kind; the caller closes it."""
    return connect


@pytest.fixture(scope="session")
def serve() -> Callable[..., Any]:
    """`serve(repository, http_port=0, **settings)`: another running server (HTTP and gRPC); the caller stops it."""
    return _serve


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    return _free_port
