"""Reports on disk: JSON with the documented fields, Markdown, and plots that are real PNG images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from forwardpass.errors import InputError, NotFoundError
from forwardpass.measure.report import compare_reports, load_report, save_bench, save_eval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()  # a truncated or corrupt file raises
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def _eval_data() -> dict[str, Any]:
    return {
        "kind": "eval",
        "model": "m",
        "version": 1,
        "data": "data.csv",
        "task": "classification",
        "group_by": "site",
        "n": 10,
        "bad": 0,
        "top_k_accuracy": {"1": 0.7},
        "accuracy": 0.7,
        "macro_f1": 0.65,
        "per_class": {
            "a": {"precision": 0.8, "recall": 0.6, "f1": 0.69, "support": 5},
            "b": {"precision": 0.6, "recall": 0.8, "f1": 0.69, "support": 5},
        },
        "confusion_matrix": {"labels": ["a", "b"], "matrix": [[3, 2], [1, 4]]},
        "calibration": {
            "ece": 0.1,
            "bins": [
                {"low": 0.5, "high": 0.7, "confidence": 0.6, "accuracy": 0.5, "n": 4},
                {"low": 0.8, "high": 1.0, "confidence": 0.9, "accuracy": 0.83, "n": 6},
            ],
        },
        "groups": {
            "by_group": {"x": {"accuracy": 0.5, "n": 4}, "y": {"accuracy": 0.83, "n": 6}},
            "gaps": {"accuracy": {"difference": 0.33, "lowest": "x", "highest": "y"}},
        },
        "errors": [],
    }


def _timing(throughput: float) -> dict[str, Any]:
    return {
        "throughput": throughput,
        "latency_ms": {"calls": 3, "mean": 1.0, "p50": 1.0, "p90": 1.5, "p99": 2.0, "max": 2.5},
        "rounds": [throughput],
    }


def _bench_data(scale: float = 1.0) -> dict[str, Any]:
    results = [
        {
            "precision": p,
            "version": v,
            "threads": 1,
            "batch_size": b,
            "forwardpass": _timing(100 * b * scale),
            "onnxruntime": _timing(110 * b * scale),
            "ratio": 0.91,
        }
        for p, v in (("fp32", 1), ("int8", 2))
        for b in (1, 8)
    ]
    return {
        "kind": "bench",
        "model": "m",
        "settings": {},
        "machine": {"cpu": "test cpu", "isa": ["avx2"], "gpu": []},
        "results": results,
        "accuracy": {
            "metric": "top-1 accuracy",
            "data": "d",
            "batch_size": 8,
            "by_precision": {
                "fp32": {"version": 1, "value": 0.9, "throughput": 800.0},
                "int8": {"version": 2, "value": 0.88, "throughput": 1600.0},
            },
        },
    }


def test_eval_report_files(tmp_path: Path) -> None:
    written = save_eval(_eval_data(), tmp_path)
    names = [path.name for path in written]
    assert names == ["report.json", "report.md", "confusion_matrix.png", "per_class.png", "calibration.png"]
    for path in written[2:]:
        assert_png(path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["plots"] == names[2:] and data["kind"] == "eval"
    markdown = (tmp_path / "report.md").read_text()
    assert "| top-1 accuracy | 0.7000 |" in markdown
    assert "## Per group (site)" in markdown and "| accuracy | 0.3300 | x | y |" in markdown
    assert "![confusion_matrix.png](confusion_matrix.png)" in markdown


def test_bench_report_files(tmp_path: Path) -> None:
    latencies = {"forwardpass fp32 b1": [1.0, 1.2, 3.0], "onnxruntime fp32 b1": [0.9, 1.1, 2.0]}
    written = save_bench(_bench_data(), latencies, tmp_path)
    names = [path.name for path in written]
    assert names[:2] == ["report.json", "report.md"]
    assert set(names[2:]) == {
        "latency_distribution.png",
        "throughput_vs_batch_size.png",
        "latency_vs_throughput.png",
        "accuracy_vs_throughput.png",
    }
    for path in written[2:]:
        assert_png(path)
    markdown = (tmp_path / "report.md").read_text()
    assert "Machine: test cpu" in markdown and "| int8 | 2 | 0.8800 | 1,600 |" in markdown


def test_compare_sets_reports_side_by_side(tmp_path: Path) -> None:
    for name, scale in (("monday", 1.0), ("tuesday", 2.0)):
        save_bench(_bench_data(scale), {}, tmp_path / name)
    reports = [(name, load_report(tmp_path / name)) for name in ("monday", "tuesday")]
    markdown, written = compare_reports(reports, tmp_path / "compare")
    assert "| figure | monday | tuesday |" in markdown
    assert "| int8, 1 thread, batch 8 | 800.0000 | 1,600 |" in markdown
    assert [path.name for path in written] == ["compare.json", "compare.md", "compare.png"]
    assert_png(written[2])
    save_eval(_eval_data(), tmp_path / "eval")
    with pytest.raises(InputError, match="one kind"):
        compare_reports([*reports, ("eval", load_report(tmp_path / "eval"))], None)


def test_load_report_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no report"):
        load_report(tmp_path / "missing")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="not a forwardpass eval or bench report"):
        load_report(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_report(tmp_path / "broken.json")
