"""Hot reload under load: a new version appears (explicit load, or the repository poll) while clients keep sending;
no request fails and the answers move to the new version. Unloading lets requests already inside finish."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

X = [[1.0, 2.0, 3.0, 4.0]]
REQUEST = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]})


class Traffic:
    """Client threads sending `add` requests in a loop; every answer is recorded as (sent at, status, version, y)."""

    def __init__(self, port: int, model: str = "add", clients: int = 4) -> None:
        self.port = port
        self.path = f"/v2/models/{model}/infer"
        self.answers: list[tuple[float, int, str, list[float]]] = []
        self.timeline: list[tuple[float, float, int]] = []  # (sent at, answered at, status) per request
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _loop(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                connection.request("POST", self.path, REQUEST, {"Content-Type": "application/json"})
                response = connection.getresponse()
                body = orjson.loads(response.read())
                self.timeline.append((sent, time.monotonic(), response.status))
                if response.status == 200:
                    self.answers.append((sent, 200, body["model_version"], body["outputs"][0]["data"]))
                else:
                    self.answers.append((sent, response.status, "", [body.get("error", "")]))
        finally:
            connection.close()

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)


def add_version(kit, model_dir: Path, version: int, constant: float) -> None:
    """Written beside the repository and moved in with one rename, as a deployment would."""
    staging = model_dir.parent / f".staging-{version}"
    kit.save(kit.add_graph(constant), staging)
    staging.rename(model_dir / str(version))


@pytest.fixture
def add_repository(tmp_path: Path, kit) -> Path:
    kit.save(kit.add_graph(1.0), tmp_path / "add" / "1", {"max_batch_size": 8})
    return tmp_path


def test_explicit_load_of_a_new_version_under_load_fails_nothing(add_repository: Path, kit):
    server = kit.serve(add_repository)
    try:
        with Traffic(server.port) as traffic:
            traffic.wait_for(lambda: len(traffic.answers) > 50)
            add_version(kit, add_repository / "add", 2, 2.0)
            control = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            control.request("POST", "/v2/repository/models/add/load", b"")
            assert control.getresponse().status == 200
            control.close()
            loaded_at = time.monotonic()
            count = len(traffic.answers)
            traffic.wait_for(lambda: len(traffic.answers) > count + 100)
        assert all(status == 200 for _, status, _, _ in traffic.answers), [a for a in traffic.answers if a[1] != 200][
            :3
        ]
        versions = {version for _, _, version, _ in traffic.answers}
        assert versions == {"1", "2"}
        later = [(version, y) for sent, _, version, y in traffic.answers if sent > loaded_at]
        assert later and all(version == "2" for version, _ in later)
        np.testing.assert_array_equal(later[-1][1], np.add(X, 2.0).ravel())
    finally:
        server.stop()


def test_the_repository_poll_picks_up_a_new_version_under_load(add_repository: Path, kit):
    server = kit.serve(add_repository, poll_interval_s=0.1)
    try:
        with Traffic(server.port) as traffic:
            traffic.wait_for(lambda: len(traffic.answers) > 50)
            add_version(kit, add_repository / "add", 2, 2.0)
            traffic.wait_for(lambda: traffic.answers[-1][2] == "2")
            count = len(traffic.answers)
            traffic.wait_for(lambda: len(traffic.answers) > count + 50)
            shutil.rmtree(add_repository / "add" / "1")  # and the old version goes, also under load
            traffic.wait_for(lambda: not server.server.dataplane.model_ready("add", "1"))
            count = len(traffic.answers)
            traffic.wait_for(lambda: len(traffic.answers) > count + 50)
        assert all(status == 200 for _, status, _, _ in traffic.answers), [a for a in traffic.answers if a[1] != 200][
            :3
        ]
        assert traffic.answers[-1][2:] == ("2", [3.0, 4.0, 5.0, 6.0])
    finally:
        server.stop()


def test_unload_lets_the_requests_inside_finish(tmp_path: Path, kit):
    kit.save(kit.slow_graph(), tmp_path / "slow" / "1", {"max_batch_size": 0})
    server = kit.serve(tmp_path)
    clients = 3

    async def unload_with_every_client_inside() -> float:
        """On the server's loop, so no request enters or leaves between the count and the unload's start."""
        served = server.server.registry.get("slow")
        while served.active < clients:
            await asyncio.sleep(0.001)
        started = time.monotonic()
        await server.server.dataplane.unload_model("slow")
        return started

    try:
        with Traffic(server.port, model="slow", clients=clients) as traffic:
            traffic.wait_for(lambda: len(traffic.answers) > clients)
            started = server.call(unload_with_every_client_inside)
            unloaded_at = time.monotonic()
            traffic.wait_for(lambda: sum(sent > unloaded_at for sent, *_ in traffic.answers) >= clients)
        inside = [status for sent, answered, status in traffic.timeline if sent < started < answered]
        after = [status for sent, _, status in traffic.timeline if sent > unloaded_at]
        assert inside == [200] * clients
        assert after and all(status == 404 for status in after)
    finally:
        server.stop()
