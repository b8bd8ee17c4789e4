"""What a measurement ran on: CPU model, cores, vector ISA, memory, library versions, execution providers."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["ISA_FLAGS", "LIBRARIES", "machine_info"]

# The /proc/cpuinfo flags that decide which ONNX Runtime kernels run (fp32 AVX2/AVX-512, int8 VNNI, bf16, AMX).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
# Further libraries a measurement may depend on, read from package metadata (nothing is imported); None: absent.
LIBRARIES = ("onnx", "onnxruntime-gpu", "scikit-learn", "fairlearn", "mlcommons-loadgen", "torch", "tensorflow-cpu")


def machine_info() -> dict[str, object]:
    import numpy
    import onnxruntime

    cpuinfo = _read("/proc/cpuinfo")
    flags = set(_field(cpuinfo, "flags").split())
    return {
        "cpu": _field(cpuinfo, "model name") or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(cpuinfo),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "forwardpass": _version("forwardpass"),
        "providers": onnxruntime.get_available_providers(),
        "gpu": _gpus(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def _gpus() -> list[str]:
    """NVIDIA GPUs as `nvidia-smi` names them (with memory); none where it is not installed."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _field(cpuinfo: str, name: str) -> str:
    """The first value of a `name : value` line (every processor repeats them)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def _physical_cores(cpuinfo: str) -> int | None:
    cores: set[tuple[str, str]] = set()
    package = core = ""
    for line in [*cpuinfo.splitlines(), ""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            package = value
        elif key == "core id":
            core = value
        elif not key and core:
            cores.add((package, core))
            package = core = ""
    return len(cores) or None


def _memory_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
