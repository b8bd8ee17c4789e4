"""The servers under test: how each is installed (its own virtualenv), configured for one model, started on the server
core, timed to its first answer, measured (CPU and memory of its whole process tree) and stopped.
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PEERS = Path(__file__).resolve().parent
ROOT = PEERS.parent.parent
VIRTUALENVS = ROOT / ".build" / "peers"
PEER_PACKAGES = {
    "mlserver": ["mlserver==1.7.1", "uvloop==0.21.0", "onnxruntime"],  # newer uvloop breaks MLServer 1.7's start-up
    "litserve": ["litserve", "onnxruntime"],
    # Triton 2.51's server binary, Python backend and stubs ship in nvidia-pytriton's wheel (../../../shared/PEERS.md)
    "triton": ["nvidia-pytriton==0.7.0", "onnxruntime==1.32.0"],
    # bench/http_servers.py: the thin floor under uvicorn and under granian, both from here, at the project's versions
    "granian": [
        "granian==2.8.9",
        "uvicorn==0.55.0",
        "httptools==0.9.0",
        "uvloop==0.23.0",
        "starlette==1.10.0",
        "orjson==3.13.0",
        "numpy==2.4.6",
        "onnxruntime==1.32.0",
    ],
}
# The same batching window for every server that batches: at most 32 requests, the oldest waits at most 2 ms.
MAX_BATCH_SIZE = 32
MAX_QUEUE_DELAY_S = 0.002
START_TIMEOUT_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ServerSpec:
    key: str
    label: str
    kind: str  # forwardpass | thin | mlserver | litserve
    batching: bool
    formats: tuple[str, ...] = ("json",)


SERVERS = {
    spec.key: spec
    for spec in (
        ServerSpec("forwardpass", "forwardpass (dynamic batching)", "forwardpass", True, ("json", "binary")),
        ServerSpec("forwardpass-nobatch", "forwardpass (batching off)", "forwardpass", False, ("json", "binary")),
        ServerSpec("thin", "thin uvicorn+orjson (floor)", "thin", False, ("json", "binary")),
        ServerSpec("mlserver", "MLServer 1.7.1", "mlserver", False),
        ServerSpec("mlserver-batching", "MLServer 1.7.1 + adaptive batching", "mlserver", True),
        ServerSpec("litserve", "LitServe", "litserve", False),
        ServerSpec("litserve-batching", "LitServe + batching", "litserve", True),
        ServerSpec("triton", "Triton 2.51 (Python backend + ORT)", "triton", True, ("json", "binary")),
    )
}


def ensure_virtualenv(kind: str) -> Path:
    """`.build/peers/<kind>/`, created and installed on first use, reused while its package list is unchanged."""
    folder = VIRTUALENVS / kind
    marker = folder / "installed.json"
    packages = PEER_PACKAGES[kind]
    if marker.is_file() and json.loads(marker.read_text()) == packages:
        return folder
    print(f"creating {folder} with {' '.join(packages)} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    subprocess.run([str(folder / "bin" / "pip"), "install", "-q", *packages], check=True)
    marker.write_text(json.dumps(packages))
    return folder


def peer_versions(kind: str) -> dict[str, str]:
    """Versions of the peer's main packages as installed in its virtualenv."""
    names = [package.split("==")[0] for package in PEER_PACKAGES[kind]]
    script = (
        "import json, sys\nfrom importlib.metadata import version\n"
        "print(json.dumps({name: version(name) for name in sys.argv[1:]}))"
    )
    python = VIRTUALENVS / kind / "bin" / "python"
    done = subprocess.run([str(python), "-c", script, *names], check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout))


def forwardpass_config(batching: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "engine": {"intra_op_threads": 1, "inter_op_threads": 1},
        "max_batch_size": MAX_BATCH_SIZE if batching else 0,
    }
    if batching:
        config["dynamic_batching"] = {"max_queue_delay_us": round(MAX_QUEUE_DELAY_S * 1e6)}
    return config


def command_for(
    spec: ServerSpec, name: str, model: Path, port: int, workdir: Path, grpc_port: int = 0
) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that serve `model` as `name` over HTTP on `port` (and gRPC on
    `grpc_port`, for the servers that speak it: forwardpass and Triton; 0: forwardpass without gRPC)."""
    environment = {"OMP_NUM_THREADS": "1"}
    if spec.kind == "forwardpass":
        version = workdir / "repository" / name / "1"
        version.mkdir(parents=True)
        shutil.copyfile(model, version / "model.onnx")  # a repository refuses links that point outside it
        (version.parent / "config.yaml").write_text(yaml.safe_dump(forwardpass_config(spec.batching)))
        # Bytecode as an installed package has it (pip compiles it; this tree is an editable install, and an
        # environment with PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module at every start: ~0.13 s)
        compileall.compile_dir(ROOT / "forwardpass", quiet=1)
        executable = Path(sys.executable).with_name("forwardpass")
        command = [str(executable), "serve", "--repository", str(version.parent.parent), "--host", "127.0.0.1"]
        command += ["--http-port", str(port), "--grpc-port", str(grpc_port)]
        return command, environment | {"FORWARDPASS_ACCESS_LOG": "0"}
    if spec.kind == "thin":
        return [sys.executable, str(PEERS / "thin.py"), str(model), "--name", name, "--port", str(port)], environment
    if spec.kind == "mlserver":
        folder = workdir / "mlserver"
        (folder / name).mkdir(parents=True)
        settings = json.loads((PEERS / "mlserver" / "settings.json").read_text())
        settings |= {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port()}
        (folder / "settings.json").write_text(json.dumps(settings))
        model_settings = json.loads((PEERS / "mlserver" / "model-settings.json").read_text())
        model_settings |= {"name": name, "parameters": {"uri": str(model)}}
        if spec.batching:
            model_settings |= {"max_batch_size": MAX_BATCH_SIZE, "max_batch_time": MAX_QUEUE_DELAY_S}
        (folder / name / "model-settings.json").write_text(json.dumps(model_settings))
        executable = ensure_virtualenv("mlserver") / "bin" / "mlserver"
        return [str(executable), "start", str(folder)], environment | {"PYTHONPATH": str(PEERS / "mlserver")}
    if spec.kind == "litserve":
        python = ensure_virtualenv("litserve") / "bin" / "python"
        command = [str(python), str(PEERS / "litserve_server.py"), str(model), "--name", name, "--port", str(port)]
        if spec.batching:
            command += ["--max-batch-size", str(MAX_BATCH_SIZE), "--batch-timeout", str(MAX_QUEUE_DELAY_S)]
        return command, environment
    if spec.kind == "triton":
        return triton_command(spec, name, model, port, workdir, grpc_port or None)
    raise ValueError(f"unknown server kind {spec.kind!r}")


def site_packages(kind: str) -> Path:
    return next((VIRTUALENVS / kind / "lib").glob("python3*/site-packages"))


def triton_libraries(folder: Path) -> Path:
    """`folder` with the shared libraries Triton and perf_analyzer load, under the names they ask for: the wheel
    keeps them under hashed names in nvidia_pytriton.libs."""
    libs = site_packages("triton") / "nvidia_pytriton.libs"
    folder.mkdir(parents=True, exist_ok=True)
    for library in libs.iterdir():
        stem, _, version = library.name.partition(".so")
        plain = folder / f"{stem.rsplit('-', 1)[0]}.so{version}"  # libb64-98cb6333.so.0d -> libb64.so.0d
        if not plain.exists():
            plain.symlink_to(library)
        short = folder / f"{stem.rsplit('-', 1)[0]}.so.{version.lstrip('.').split('.')[0]}"  # libcudart.so.12
        if version and not short.exists():
            short.symlink_to(library)
    return folder


def perf_analyzer_libraries(folder: Path) -> Path:
    """A folder holding only the two libraries perf_analyzer (tritonclient 2.41's binary) needs even on a CPU,
    libb64.so.0d and libcudart.so.12, taken from nvidia-pytriton's wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    for library in (site_packages("triton") / "nvidia_pytriton.libs").iterdir():
        for stem, name in (("libb64-", "libb64.so.0d"), ("libcudart-", "libcudart.so.12")):
            if library.name.startswith(stem) and not (folder / name).exists():
                (folder / name).symlink_to(library)
    return folder


def triton_command(
    spec: ServerSpec, name: str, model: Path, port: int, workdir: Path, grpc_port: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """Triton's own binary serving `model` through its Python backend (bench/peers/triton/model.py), its dynamic
    batcher (up to the common batch size), one instance on the CPU."""
    import onnx

    packages = site_packages("triton")
    server = packages / "pytriton" / "tritonserver"
    backends = workdir / "triton-backends"
    shutil.copytree(server / "backends", backends)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copyfile(stub, backends / "python" / "triton_python_backend_stub")
    (backends / "python" / "triton_python_backend_stub").chmod(0o755)
    repository = workdir / "triton-models"
    (repository / name / "1").mkdir(parents=True)
    shutil.copyfile(PEERS / "triton" / "model.py", repository / name / "1" / "model.py")
    (repository / name / "1" / "site_packages.txt").write_text(str(packages))
    graph = onnx.load(str(model)).graph

    def dims(value: Any) -> str:
        return ", ".join(str(d.dim_value) for d in value.type.tensor_type.shape.dim[1:])

    # No queue delay: Triton's batcher would wait the whole window even for a lone request (410 req/s at c=1 with
    # 2 ms); without one it batches what queued while the instance was busy -- as forwardpass does when idle.
    batching = "dynamic_batching { }"
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH_SIZE if spec.batching else 0}\n'
        f'input [{{ name: "input" data_type: TYPE_FP32 dims: [{dims(graph.input[0])}] }}]\n'
        f'output [{{ name: "output" data_type: TYPE_FP32 dims: [{dims(graph.output[0])}] }}]\n'
        f"{batching if spec.batching else ''}\n"
        "instance_group [{ kind: KIND_CPU count: 1 }]\n"
        f'parameters [{{ key: "onnx_path" value: {{ string_value: "{model}" }} }}]\n'
    )
    command = [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--http-port={port}",
        f"--grpc-port={grpc_port or free_port()}",
        "--allow-metrics=false",
        "--log-verbose=0",
    ]
    libraries = f"{triton_libraries(workdir / 'triton-libs')}:{packages / 'nvidia_pytriton.libs'}"
    return command, {"OMP_NUM_THREADS": "1", "LD_LIBRARY_PATH": libraries}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningServer:
    """A server process tree pinned to one core. Use as a context manager: it is stopped (SIGTERM, then SIGKILL) on
    exit."""

    command: list[str]
    environment: dict[str, str]
    log: Path
    cpu: int
    process: subprocess.Popen[bytes] = field(init=False)
    started: float = field(init=False)

    def __enter__(self) -> RunningServer:
        self.started = time.perf_counter()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(self.cpu), *self.command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.environment},
                start_new_session=True,  # its own process group, so stop() reaches every worker it spawns
                cwd=self.log.parent,
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_first_answer(self, answers: Callable[[], bool]) -> float:
        """Seconds from spawn to the first time `answers()` is true; polls every 5 ms."""
        deadline = self.started + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; log: {self.log_tail()}")
            if answers():
                return time.perf_counter() - self.started
            time.sleep(0.005)
        raise RuntimeError(f"no answer within {START_TIMEOUT_S:.0f} s; log: {self.log_tail()}")

    def wait_idle(self, busy: float = 0.10, window_s: float = 0.25, timeout_s: float = 60.0) -> float:
        """Wait until the tree uses less than `busy` of a core over `window_s`: a load generator that stops leaves
        requests the server still works through, and they would eat into the next measurement. Returns seconds
        waited."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            before = self.cpu_seconds()
            time.sleep(window_s)
            if (self.cpu_seconds() - before) / window_s < busy:
                break
        return time.perf_counter() - started

    def log_tail(self, characters: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-characters:]

    def pids(self) -> list[int]:
        return [self.process.pid, *_descendants(self.process.pid)]

    def cpu_seconds(self) -> float:
        """User + system time of every live process of the tree."""
        total = 0
        for pid in self.pids():
            fields = _stat_fields(pid)
            if fields:
                total += int(fields[11]) + int(fields[12])  # utime, stime (after the command name)
        return total / CLOCK_TICKS

    def memory_mb(self) -> dict[str, float]:
        """Proportional (PSS) and resident (RSS) set size of the whole tree, in MB."""
        totals = {"Pss": 0, "Rss": 0}
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                key, _, value = line.partition(":")
                if key in totals:
                    totals[key] += int(value.split()[0])
        return {"pss_mb": totals["Pss"] / 1024, "rss_mb": totals["Rss"] / 1024}

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left after a grace period. Waits for every member,
        not only the first process: a peer's workers that outlive it would steal the core from the next server."""
        for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.perf_counter() + grace_s
            while self._group_alive() and time.perf_counter() < deadline:
                time.sleep(0.05)
            if not self._group_alive():
                break

    def _group_alive(self) -> bool:
        self.process.poll()  # reap the first process, or the group never looks empty
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces): field 0 is the state, 1 the parent pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found
