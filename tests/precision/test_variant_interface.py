"""A variant keeps its source's interface: the same input and output names, types and shapes, batch axis included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import forwardpass
from forwardpass.precision import OptimizeReport, OptimizeRequest, optimize
from forwardpass.precision.optimize import Precision, Progress

IDS = np.random.default_rng(0).integers(0, 100, (40, 5))


def _embedding_bag_recommender(folder: Path, outputs: int = 16) -> None:
    """An nn.EmbeddingBag scorer exported by torch: it averages int64 ids in an ONNX Loop, whose output's batch axis
    ONNX Runtime's shape inference (quant_pre_process) cannot tell from the input's, and whose body ONNX Runtime's
    INT4 quantizer leaves at the old opset."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Recommender(torch.nn.Module):  # type: ignore[name-defined,misc]  # torch arrives as a ModuleType: Any
        def __init__(self) -> None:
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(100, 8, mode="mean")
            self.weight = torch.nn.Parameter(torch.randn(8, outputs))

        def forward(self, ids: object) -> object:
            return self.bag(ids) @ self.weight

    folder.mkdir(parents=True)
    torch.onnx.export(
        Recommender().eval(),
        (torch.zeros(2, 5, dtype=torch.int64),),
        str(folder / "model.onnx"),
        input_names=["ids"],
        output_names=["score"],
        dynamic_axes={"ids": {0: "batch"}, "score": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def _optimized(
    tmp_path: Path, precision: Precision, outputs: int = 16, progress: Progress | None = None
) -> OptimizeReport:
    """The recommender made in `tmp_path`/repo as version 1 of 'rec', optimized with ids.npy as calibration."""
    _embedding_bag_recommender(tmp_path / "repo" / "rec" / "1", outputs)
    np.save(tmp_path / "ids.npy", IDS)
    request = OptimizeRequest(
        "rec",
        precision,
        repository=tmp_path / "repo",
        calibration=tmp_path / "ids.npy",
        seconds=0.2,
        plot=False,
        allow_slower=True,
    )
    return optimize(request, progress)


def test_int8_of_a_model_with_a_loop_keeps_its_batch_axis(tmp_path: Path) -> None:
    report = _optimized(tmp_path, "int8")
    source = onnx.load(str(tmp_path / "repo" / "rec" / "1" / "model.onnx"))
    variant = onnx.load(str(report.destination / "model.onnx"))
    for wanted, got in zip(
        [*source.graph.input, *source.graph.output], [*variant.graph.input, *variant.graph.output], strict=True
    ):
        assert got == wanted
    model = forwardpass.load("rec", repository=tmp_path / "repo")
    assert model.version == 2 and model.batchable
    direct = ort.InferenceSession(str(report.destination / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = direct.run(None, {"ids": IDS[:8]})[0]
    rows = [outputs["score"] for outputs, _ in model.run_items([{"ids": row} for row in IDS[:8]])]
    assert np.stack(rows) == pytest.approx(expected, abs=1e-6)


def test_auto_leaves_out_a_candidate_onnx_runtime_cannot_load(tmp_path: Path) -> None:
    said: list[str] = []
    report = _optimized(tmp_path, "auto", progress=said.append)
    assert report.version == 2
    assert "int4" not in {candidate.label for candidate in report.candidates}
    assert any(line.startswith("int4 left out: ") and "cannot load" in line for line in said)


def test_a_one_number_output_is_scored_by_r2_against_the_original_not_its_sign(tmp_path: Path) -> None:
    """INT8 moved this recommender's scores by up to 0.08 on a range of 0.44 and its cosine, one number per item,
    read 100.000: each item's cosine was the sign of the product of two scores."""
    folder = tmp_path / "repo" / "rec" / "1"
    report = _optimized(tmp_path, "int8", outputs=1)
    assert report.metric == "R² of the outputs against the original's (x 100)"
    source = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    variant = ort.InferenceSession(str(report.destination / "model.onnx"), providers=["CPUExecutionProvider"])
    want = source.run(None, {"ids": IDS})[0].astype(np.float64).ravel()
    got = variant.run(None, {"ids": IDS})[0].astype(np.float64).ravel()
    r2 = 100 * (1 - np.sum((got - want) ** 2) / np.sum((want - want.mean()) ** 2))
    assert report.chosen.score == pytest.approx(r2, abs=1e-6)
    assert report.chosen.score < 100.0
