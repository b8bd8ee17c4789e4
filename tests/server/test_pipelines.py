"""A pipeline of models behind one endpoint: the bundled `ocr` through the server answers what it answers in
process, concurrent requests share the steps' batches, and what it cannot read is refused in one line."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

import forwardpass
from forwardpass.ensemble import cut_regions
from forwardpass.repository import default_repository
from tests.running_server import RunningServer, copy_bundled, serve

PAGE = default_repository().parent / "samples" / "text" / "page.png"
UNREADY = {  # pipelines the server lists but cannot run
    "unserved": "[{model: ocr_det}, {model: ocr_reader, input: crops}]",
    "misfit": "[{model: ocr_rec}, {model: ocr_cls, input: crops}]",
}


@pytest.fixture(scope="module")
def ocr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("ocr_repository")
    for name in ("ocr_det", "ocr_cls", "ocr_rec"):
        copy_bundled(name, root)
    shutil.copytree(default_repository() / "ocr", root / "ocr")
    for name, steps in UNREADY.items():
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(f"pipeline:\n  steps: {steps}\n")
    running = serve(root)
    yield running
    running.stop()


def read(server: RunningServer, body: bytes, content_type: str = "image/png") -> httpx.Response:
    url = f"{server.url}/v2/models/ocr/predict"
    return httpx.post(url, content=body, headers={"content-type": content_type}, timeout=120)


def test_the_pipeline_answers_through_the_server_as_its_steps_do(ocr_server: RunningServer) -> None:
    """The same boxes as in process; each line read as the recognizer reads it alone: the server's batcher joins
    only lines of one width, so none is padded to a wider neighbour's (in process, lines are padded to the widest
    of their batch of 6, as RapidOCR does)."""
    pipeline = forwardpass.load_pipeline("ocr")
    image = Image.open(PAGE).convert("RGB")
    regions = cut_regions(image, pipeline.steps[0].predict(image))
    answer = read(ocr_server, PAGE.read_bytes())
    assert answer.status_code == 200, answer.text
    found = answer.json()["regions"]
    assert [line["points"] for line in found] == [region["points"] for region, _ in regions]
    alone = [pipeline.steps[2].predict(crop) for _, crop in regions]
    assert [line["text"] for line in found] == [line["text"] for line in alone]
    for line, want in zip(found, alone, strict=True):
        assert line["score"] == pytest.approx(want["score"], abs=1e-6)


def test_concurrent_requests_get_their_own_answers(ocr_server: RunningServer) -> None:
    body = PAGE.read_bytes()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: read(ocr_server, body), range(4)))
    texts = [[line["text"] for line in answer.json()["regions"]] for answer in answers]
    assert all(answer.status_code == 200 for answer in answers)
    assert texts == [texts[0]] * 4 and len(texts[0]) >= 5


def test_text_instead_of_an_image_is_refused_in_one_line(ocr_server: RunningServer) -> None:
    answer = read(ocr_server, b"not an image", "text/plain")
    assert 400 <= answer.status_code < 500
    assert "image" in answer.json()["error"] and "\n" not in answer.json()["error"]


def test_a_corrupt_image_is_refused(ocr_server: RunningServer) -> None:
    answer = read(ocr_server, PAGE.read_bytes()[:200])
    assert 400 <= answer.status_code < 500, answer.text


def test_an_unknown_model_is_still_404(ocr_server: RunningServer, tmp_path: Path) -> None:
    answer = httpx.post(f"{ocr_server.url}/v2/models/nothing/predict", content=b"x")
    assert answer.status_code == 404


def test_the_answer_drawn_on_the_image_on_request(ocr_server: RunningServer) -> None:
    url = f"{ocr_server.url}/v2/models/ocr/predict?draw=true"
    answer = httpx.post(url, content=PAGE.read_bytes(), headers={"content-type": "image/png"}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    drawn = Image.open(io.BytesIO(answer.content))
    with Image.open(PAGE) as page:
        assert drawn.size == page.size


def test_drawing_needs_an_image(ocr_server: RunningServer) -> None:
    url = f"{ocr_server.url}/v2/models/ocr_rec/predict?draw=true"
    answer = httpx.post(url, content=b'{"a": 1}', headers={"content-type": "application/json"}, timeout=120)
    assert answer.status_code == 400 and "draws on an image" in answer.json()["error"]


def test_the_repository_index_lists_pipelines_with_their_steps_and_state(ocr_server: RunningServer) -> None:
    rows = {row["name"]: row for row in httpx.post(f"{ocr_server.url}/v2/repository/index").json()}
    assert rows["ocr_det"]["state"] == "READY"
    assert rows["ocr"] == {
        "name": "ocr",
        "version": "",
        "state": "READY",
        "reason": "",
        "steps": ["ocr_det", "ocr_cls", "ocr_rec"],
    }
    assert rows["unserved"]["state"] == "UNAVAILABLE"
    assert rows["unserved"]["reason"] == "pipeline 'unserved' step 2: model 'ocr_reader' is not loaded"
    assert rows["misfit"]["state"] == "UNAVAILABLE"
    assert "step 1 (ocr_rec) must find regions" in rows["misfit"]["reason"]


def test_a_pipelines_metadata_and_readiness(ocr_server: RunningServer) -> None:
    metadata = httpx.get(f"{ocr_server.url}/v2/models/ocr").json()
    assert metadata["platform"] == "ensemble" and metadata["ready"] is True
    assert metadata["steps"] == [{"model": name, "ready": True} for name in ("ocr_det", "ocr_cls", "ocr_rec")]
    assert httpx.get(f"{ocr_server.url}/v2/models/ocr/ready").status_code == 200
    unserved = httpx.get(f"{ocr_server.url}/v2/models/unserved").json()
    assert unserved["ready"] is False and unserved["steps"][1] == {"model": "ocr_reader", "ready": False}
    assert httpx.get(f"{ocr_server.url}/v2/models/unserved/ready").status_code == 404


def test_a_pipeline_whose_steps_do_not_fit_is_refused_naming_them(ocr_server: RunningServer) -> None:
    url = f"{ocr_server.url}/v2/models/misfit/predict"
    answer = httpx.post(url, content=PAGE.read_bytes(), headers={"content-type": "image/png"}, timeout=120)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("pipeline 'misfit' step 1 (ocr_rec) must find regions")
