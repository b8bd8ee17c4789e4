"""`serve --ray`'s replica serves what `forwardpass serve` serves: the same app (V2, generation, OpenAI and WebSocket
routes behind one guard), the same trust setting. Built without Ray: the replica class is plain Python."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from forwardpass.modes.ray_serve import V2Replica
from forwardpass.server.settings import ServerSettings


def add_one(folder: Path) -> None:
    """y = x + 1 on FP32 [batch, 4], max_batch_size 4."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.ones(4, np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.yaml").write_text(yaml.safe_dump({"max_batch_size": 4}), encoding="utf-8")


@pytest.mark.asyncio
async def test_a_replica_keeps_trust_and_serves_every_route_of_serve(tmp_path: Path) -> None:
    add_one(tmp_path / "add")
    replica = V2Replica(ServerSettings(repository=tmp_path, trust_pickle=True), cores=1)
    assert replica.registry.trust_pickle
    app = await replica.__serve_build_asgi_app__()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}]}
        answer = await client.post("/v2/models/add/infer", json=body)
        assert answer.json()["outputs"][0]["data"] == [1, 2, 3, 4]
        # generation and OpenAI routes exist (a model that is no decoder is refused by them, not by the router)
        generate = await client.post("/v2/models/add/generate", json={"text_input": "hi"})
        assert generate.status_code == 400 and "no such endpoint" not in generate.text
        chat = await client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
        assert chat.status_code in (400, 404) and "no such endpoint" not in chat.text
        five_rows = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [5, 4], "data": [0] * 20}]}
        over = await client.post("/v2/models/add/infer", json=five_rows)
        assert over.status_code == 400 and "max_batch_size of 4" in over.json()["error"]
    await replica.registry.close()


@pytest.mark.asyncio
async def test_replicas_follow_the_repository_alone(tmp_path: Path) -> None:
    """A load or unload request reaches one replica of many (and none started later): refused, while polling, which
    every replica does for itself, picks up a new version. Ray Serve replicas ignored --poll-interval."""
    add_one(tmp_path / "add")
    replica = V2Replica(ServerSettings(repository=tmp_path, poll_interval_s=0.05), cores=1)
    app = await replica.__serve_build_asgi_app__()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
        for action in ("load", "unload"):
            refused = await client.post(f"/v2/repository/models/add/{action}")
            assert refused.status_code == 403 and "off on Ray Serve" in refused.json()["error"]
        assert (await client.get("/v2/models/add/ready")).status_code == 200  # the unload changed nothing
        shutil.copytree(tmp_path / "add" / "1", tmp_path / "add" / "2")
        async with asyncio.timeout(30):
            while (await client.get("/v2/models/add")).json()["versions"] != ["1", "2"]:
                await asyncio.sleep(0.05)
    await replica.registry.close()
