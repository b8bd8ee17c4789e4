"""Shared fixtures, kept small: tiny real ONNX models written with `onnx.helper` (no framework needed)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

AddModel = Callable[..., Path]

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so would every command a
# test interrupts with Ctrl-C (Python keeps an ignored SIGINT): give the commands the default the tests expect.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# A skip hides a test that did not run, so every skip fails unless its reason starts with one of these prefixes,
# each with why skipping there cannot hide a bug. Only code paths that do not exist where the tests run belong here
# (a platform, a device); a missing model, package or file is a broken setup and fails (`make test` builds it all).
ALLOWED_SKIPS: dict[str, str] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    report = yield
    assert isinstance(report, pytest.TestReport)
    _fail_unexpected_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, object, object]:
    report = yield  # a module-level pytest.importorskip skips here
    assert isinstance(report, pytest.CollectReport)
    _fail_unexpected_skip(report)
    return report


def _fail_unexpected_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):  # an xfail reports as skipped; xfail_strict guards those
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if any(reason.startswith(allowed) for allowed in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped, and this reason is not in tests/conftest.py ALLOWED_SKIPS: {reason}"


def _write_add_model(path: Path, constant: float = 1.0, width: int = 4) -> Path:
    """y = x + constant on float32 [batch, width]: the smallest real model ONNX Runtime can run."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[helper.make_tensor("c", TensorProto.FLOAT, [width], np.full(width, constant, np.float32))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def add_model() -> AddModel:
    """`add_model(path, constant=1.0, width=4)` writes an ONNX model computing y = x + constant and returns path."""
    return _write_add_model
