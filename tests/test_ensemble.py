"""Pipelines of models refused at load when a step's output does not fit the next step's input: small ONNX graphs
built here (onnx.helper), loaded by real ONNX Runtime sessions, each mismatch named with both steps and tensors."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from PIL import Image

import forwardpass
from forwardpass.ensemble import pipelines_in
from forwardpass.errors import ConfigError, ForwardpassError, NotFoundError, UnsafePathError

FINDER_PREPROCESS = {"kind": "image", "max_side": 64, "multiple_of": 32}
FINDER_POSTPROCESS = {"kind": "text_detection", "threshold": 0.6, "box_threshold": 0.6, "min_size": 1}
READER_POSTPROCESS = {"kind": "classification", "labels": ["upright", "turned"]}


def save(folder: Path, graph: onnx.GraphProto, config: dict[str, Any]) -> None:
    (folder / "1").mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def finder(folder: Path, map_type: int = TensorProto.FLOAT) -> None:
    """A text detector: the mean of the channels through a sigmoid, one map [N, 1, H, W] (cast to map_type)."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["mean"], ["probability"]),
        helper.make_node("Cast", ["probability"], ["map"], to=map_type),
    ]
    graph = helper.make_graph(
        nodes,
        "finder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("map", map_type, ["batch", 1, "height", "width"])],
    )
    save(folder, graph, {"preprocess": FINDER_PREPROCESS, "postprocess": FINDER_POSTPROCESS, "engine": {"warmup": 0}})


def reader(
    folder: Path,
    shape: list[int | str],
    elem_type: int = TensorProto.FLOAT,
    preprocess: dict[str, Any] | None = None,
    extra_input: bool = False,
) -> None:
    """A two-class classifier over the input's mean per channel (any rank with channels on axis 1)."""
    axes = list(range(2, len(shape)))
    nodes = [
        helper.make_node("Cast", ["x"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["means"], axes=axes, keepdims=0) if axes else None,
        helper.make_node("MatMul", ["means" if axes else "pixels", "weights"], ["scores"]),
    ]
    weights = helper.make_tensor("weights", TensorProto.FLOAT, [int(shape[1]), 2], np.ones(2 * int(shape[1])).tolist())
    inputs = [helper.make_tensor_value_info("x", elem_type, shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", 1]))
        nodes.append(helper.make_node("Identity", ["scale"], ["scale_out"]))
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])]
    if extra_input:
        outputs.append(helper.make_tensor_value_info("scale_out", TensorProto.FLOAT, ["batch", 1]))
    graph = helper.make_graph([node for node in nodes if node is not None], "reader", inputs, outputs, [weights])
    config = {
        "preprocess": preprocess or {"kind": "image", "resize": [16, 32]},
        "postprocess": {**READER_POSTPROCESS, "output": "scores"},
        "engine": {"warmup": 0},
    }
    save(folder, graph, config)


def pipeline(root: Path) -> Path:
    (root / "lines").mkdir()
    (root / "lines" / "config.yaml").write_text(
        yaml.safe_dump({"pipeline": {"steps": [{"model": "finder"}, {"model": "reader", "input": "crops"}]}})
    )
    return root / "lines"


def test_steps_that_fit_read_each_region(tmp_path: Path) -> None:
    finder(tmp_path / "finder")
    reader(tmp_path / "reader", ["batch", 3, 16, 32])
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[10:30, 8:56] = 255  # one bright block (map 0.73; the black around it 0.5, under the threshold)
    regions = forwardpass.load_pipeline(pipeline(tmp_path)).predict(Image.fromarray(image))["regions"]
    assert len(regions) == 1 and regions[0]["label"] in ("upright", "turned")
    corners = np.asarray(regions[0]["points"])
    assert corners[:, 1].max() < 44  # the block grown by the unclip (~10 px a side), not the whole image (48 px)


@pytest.mark.parametrize(
    ("reader_options", "problem"),
    [
        (
            {"shape": ["batch", 3, 16, 32], "preprocess": {"kind": "image"}},
            r"input 'x' \(FP32 \[-1, 3, 16, 32\]\) takes height 16, but its preprocessing makes a crop's height "
            r"each crop's own",
        ),
        (
            # (a text line squeezed to a size: a fixed resize that does not fit is refused by the model's own load)
            {
                "shape": ["batch", 3, 16, 32],
                "preprocess": {"kind": "image", "text_line": [16, 40], "text_line_overflow": "squeeze"},
            },
            r"takes width 32, but its preprocessing makes a crop's width 40",
        ),
        (
            {"shape": ["batch", 3]},
            r"input 'x' \(FP32 \[-1, 3\]\), but crops are batched as \[batch, channels, height, width\] \(rank 4\)",
        ),
        (
            {"shape": ["batch", 3, 16, 32], "extra_input": True},
            r"it also needs input\(s\) \['scale'\], which a crop does not give",
        ),
    ],
    ids=["size of its own", "width", "rank", "another input"],
)
def test_a_step_whose_input_does_not_take_the_crops_is_refused_naming_both(
    tmp_path: Path, reader_options: dict[str, Any], problem: str
) -> None:
    finder(tmp_path / "finder")
    reader(tmp_path / "reader", **reader_options)
    forwardpass.load(tmp_path / "reader").close()  # the model alone loads: only the pipeline's link is wrong
    with pytest.raises(ConfigError) as refused:
        forwardpass.load_pipeline(pipeline(tmp_path))
    message = str(refused.value)
    assert message.startswith(
        "pipeline 'lines': step 1 (finder) output 'map' (FP32 [-1, 1, -1, -1]) gives image crops that step 2 "
        "(reader) cannot take: "
    )
    assert "\n" not in message
    assert re.search(problem, message), message


def test_a_step_whose_preprocessing_cannot_feed_its_input_is_refused_by_its_own_load(tmp_path: Path) -> None:
    finder(tmp_path / "finder")
    reader(tmp_path / "reader", shape=["batch", 3, 16, 32], elem_type=TensorProto.UINT8)  # FP32 pixels for UINT8
    with pytest.raises(ConfigError, match=r"field 'preprocess.datatype': makes FP32 images, but input 'x' takes UINT8"):
        forwardpass.load_pipeline(pipeline(tmp_path))


def test_a_first_step_whose_output_cannot_hold_regions_is_refused(tmp_path: Path) -> None:
    finder(tmp_path / "finder", map_type=TensorProto.INT64)
    reader(tmp_path / "reader", ["batch", 3, 16, 32])
    with pytest.raises(ConfigError, match=r"step 1 \(finder\) output 'map' \(INT64 \[-1, 1, -1, -1\]\) cannot hold "):
        forwardpass.load_pipeline(pipeline(tmp_path))


def test_load_points_a_pipeline_to_load_pipeline(tmp_path: Path) -> None:
    finder(tmp_path / "finder")
    reader(tmp_path / "reader", ["batch", 3, 16, 32])
    folder = pipeline(tmp_path)
    with pytest.raises(NotFoundError, match=r"'lines' is a pipeline of models, not one model: load it with "):
        forwardpass.load("lines", repository=tmp_path)
    with pytest.raises(NotFoundError, match=rf"load it with forwardpass.load_pipeline\('{re.escape(str(folder))}'\)"):
        forwardpass.load(folder)


def test_a_pipeline_config_symlinked_outside_the_repository_is_refused(tmp_path: Path) -> None:
    """As a model's config.yaml is: it was read (and its steps run) from wherever the link pointed."""
    root = tmp_path / "models"
    finder(root / "finder")
    reader(root / "reader", ["batch", 3, 16, 32])
    outside = pipeline(tmp_path) / "config.yaml"
    (root / "lines").mkdir()
    (root / "lines" / "config.yaml").symlink_to(outside)
    with pytest.raises(UnsafePathError, match=r"'lines': its config\.yaml points outside the repository"):
        forwardpass.load_pipeline("lines", repository=root)
    assert pipelines_in(root) == []
    (root / "lines" / "config.yaml").unlink()
    (root / "lines" / "config.yaml").write_bytes(outside.read_bytes())
    assert pipelines_in(root) == ["lines"]


def test_a_pipeline_whose_config_is_refused_is_listed_unavailable_beside_the_others(tmp_path: Path) -> None:
    """A typo in one pipeline's config.yaml (here a step 'version', which steps do not take) made the server's
    repository index answer 400 for every model, and `forwardpass models` exit 2 listing none; that pipeline is
    now one UNAVAILABLE row naming the refusal."""
    import httpx

    from tests.running_server import serve

    finder(tmp_path / "finder")
    reader(tmp_path / "reader", ["batch", 3, 16, 32])
    pipeline(tmp_path)
    steps = [{"model": "finder"}, {"model": "reader", "input": "crops", "version": 1}]
    (tmp_path / "pinned").mkdir()
    (tmp_path / "pinned" / "config.yaml").write_text(yaml.safe_dump({"pipeline": {"steps": steps}}))
    refusal = "field 'pipeline.steps.1.version': Extra inputs are not permitted"
    running = serve(tmp_path)
    try:
        answer = httpx.post(f"{running.url}/v2/repository/index")
        assert answer.status_code == 200, answer.text
        rows = {row["name"]: row for row in answer.json()}
        assert rows["lines"]["state"] == "READY" and rows["finder"]["state"] == "READY"
        assert rows["pinned"]["state"] == "UNAVAILABLE" and refusal in rows["pinned"]["reason"]
    finally:
        running.stop()
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "forwardpass"), "models", "-r", str(tmp_path)],
        env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr
    assert "pipeline of models" in listed.stdout and refusal in listed.stdout


def test_a_step_that_fails_for_one_image_fails_that_request_alone_naming_the_step(tmp_path: Path) -> None:
    """The reader answers NaN for a dim crop (log of its mean less 0.3): that image's request fails whole, no
    partial regions, and the error names the pipeline's step; it said 'the model answered NaN', which of the
    pipeline's models it did not say. Another image's request is answered."""
    import httpx

    from tests.running_server import serve

    finder(tmp_path / "finder")
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("Sub", ["means", "floor"], ["above"]),
        helper.make_node("Log", ["above"], ["logs"]),
        helper.make_node("MatMul", ["logs", "weights"], ["scores"]),
    ]
    constants = [
        helper.make_tensor("floor", TensorProto.FLOAT, [], [0.3]),
        helper.make_tensor("weights", TensorProto.FLOAT, [3, 2], [1, 0, 0, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 32])]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])]
    graph = helper.make_graph(nodes, "reader", inputs, outputs, constants)
    save(
        tmp_path / "reader",
        graph,
        {
            "preprocess": {"kind": "image", "resize": [16, 32], "scale": 1 / 255},
            "postprocess": {**READER_POSTPROCESS, "output": "scores"},
            "engine": {"warmup": 0},
        },
    )
    pipeline(tmp_path)
    bright = np.zeros((48, 64, 3), dtype=np.uint8)
    bright[10:30, 8:56] = 255
    dim = np.zeros_like(bright)
    dim[20:28, 4:60] = 120  # a line the finder finds, too dim for the reader
    named = "pipeline 'lines' step 2 (reader): the model answered NaN in 'scores' for this item"
    lines = forwardpass.load_pipeline("lines", repository=tmp_path)
    failed, answered = lines.predict_each([Image.fromarray(dim), Image.fromarray(bright)])
    lines.close()
    assert isinstance(failed, ForwardpassError) and str(failed).startswith(named)
    assert isinstance(answered, dict) and len(answered["regions"]) == 1
    running = serve(tmp_path)
    try:
        png = io.BytesIO()
        Image.fromarray(dim).save(png, format="PNG")
        answer = httpx.post(
            f"{running.url}/v2/models/lines/predict", content=png.getvalue(), headers={"content-type": "image/png"}
        )
        assert answer.status_code == 400 and answer.json()["error"].startswith(named)
    finally:
        running.stop()
