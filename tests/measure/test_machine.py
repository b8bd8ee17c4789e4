"""Machine info: the keys every recorded measurement carries."""

from __future__ import annotations

import onnx
import onnxruntime

from forwardpass.measure import machine_info
from forwardpass.measure.machine import ISA_FLAGS, _physical_cores


def test_machine_info_names_cpu_cores_isa_and_versions() -> None:
    info = machine_info()
    assert {"cpu", "logical_cores", "physical_cores", "usable_cores", "isa", "python", "numpy"} <= set(info)
    assert info["onnxruntime"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in info["providers"]  # type: ignore[operator]
    assert isinstance(info["isa"], list) and set(info["isa"]) <= set(ISA_FLAGS)
    assert isinstance(info["logical_cores"], int) and info["logical_cores"] >= 1
    libraries = info["libraries"]
    assert isinstance(libraries, dict) and libraries["onnx"] == onnx.__version__
    assert isinstance(info["gpu"], list)


def test_physical_cores_count_distinct_packages_and_cores() -> None:
    block = "processor : {}\nphysical id : {}\ncore id : {}\n\n"
    cpuinfo = "".join(
        block.format(i, package, core) for i, (package, core) in enumerate([(0, 0), (0, 0), (0, 1), (1, 0)])
    )
    assert _physical_cores(cpuinfo) == 3
    assert _physical_cores("processor : 0\n") is None
