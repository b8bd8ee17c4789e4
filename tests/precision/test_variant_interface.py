"""A variant keeps its source's interface: the same input and output names, types and shapes, batch axis included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import forwardpass
from forwardpass.precision import OptimizeRequest, optimize


def _embedding_bag_recommender(folder: Path) -> None:
    """An nn.EmbeddingBag scorer exported by torch: it averages int64 ids in an ONNX Loop, whose output's batch axis
    ONNX Runtime's shape inference (quant_pre_process) cannot tell from the input's, and whose body ONNX Runtime's
    INT4 quantizer leaves at the old opset."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Recommender(torch.nn.Module):  # type: ignore[name-defined,misc]  # torch arrives as a ModuleType: Any
        def __init__(self) -> None:
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(100, 8, mode="mean")
            self.weight = torch.nn.Parameter(torch.randn(8, 16))

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


def test_int8_of_a_model_with_a_loop_keeps_its_batch_axis(tmp_path: Path) -> None:
    _embedding_bag_recommender(tmp_path / "repo" / "rec" / "1")
    ids = np.random.default_rng(0).integers(0, 100, (40, 5))
    np.save(tmp_path / "ids.npy", ids)
    report = optimize(
        OptimizeRequest(
            "rec",
            "int8",
            repository=tmp_path / "repo",
            calibration=tmp_path / "ids.npy",
            seconds=0.2,
            plot=False,
            allow_slower=True,
        )
    )
    source = onnx.load(str(tmp_path / "repo" / "rec" / "1" / "model.onnx"))
    variant = onnx.load(str(report.destination / "model.onnx"))
    for wanted, got in zip(
        [*source.graph.input, *source.graph.output], [*variant.graph.input, *variant.graph.output], strict=True
    ):
        assert got == wanted
    model = forwardpass.load("rec", repository=tmp_path / "repo")
    assert model.version == 2 and model.batchable
    direct = ort.InferenceSession(str(report.destination / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = direct.run(None, {"ids": ids[:8]})[0]
    rows = [outputs["score"] for outputs, _ in model.run_items([{"ids": row} for row in ids[:8]])]
    assert np.stack(rows) == pytest.approx(expected, abs=1e-6)


def test_auto_leaves_out_a_candidate_onnx_runtime_cannot_load(tmp_path: Path) -> None:
    _embedding_bag_recommender(tmp_path / "repo" / "rec" / "1")
    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(0, 100, (40, 5)))
    said: list[str] = []
    report = optimize(
        OptimizeRequest(
            "rec",
            "auto",
            repository=tmp_path / "repo",
            calibration=tmp_path / "ids.npy",
            seconds=0.2,
            plot=False,
            allow_slower=True,
        ),
        said.append,
    )
    assert report.version == 2
    assert "int4" not in {candidate.label for candidate in report.candidates}
    assert any(line.startswith("int4 left out: ") and "cannot load" in line for line in said)
