"""MXNet (Gluon `export()`: `NAME-symbol.json` + `NAME-NNNN.params`), run in an isolated environment.

mxnet 1.9.1, the last release, imports only with numpy < 1.24 and its ONNX exporter needs onnx < 1.19, so it cannot
share forwardpass's environment. On first use forwardpass creates a virtual environment of its own for it
(`$FORWARDPASS_CACHE/mxnet-env`, else `.build/mxnet-env` in this checkout; never the home folder) and keeps it.
Both ways of running a model go through one child process there (mxnet_worker.py), which speaks numpy arrays over
its stdin/stdout: natively, every `run` is a request to it; converted, it exports ONNX once and ONNX Runtime runs
the file here.

MXNet symbols record no input shapes: give them as `input_shapes` (-1 for dynamic dimensions, the batch first).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import IO, Any

import numpy as np

from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, ForwardpassError, InputError
from forwardpass.formats.base import ConvertOptions, LoadOptions
from forwardpass.formats.facts import ModelFacts
from forwardpass.formats.mxnet_worker import read_message, write_message
from forwardpass.tensor import DataType, TensorSpec

__all__ = ["MXNET", "MXNetFormat", "MXNetSession", "isolated_python", "model_files"]

log = logging.getLogger(__name__)

# Verified together on Python 3.11: mxnet imports (numpy 1.23.5) and exports ONNX (onnx 1.18, its protobuf).
PINS = ("mxnet==1.9.1", "numpy==1.23.5", "onnx==1.18.0", "protobuf==7.36.2")
WORKER = Path(__file__).with_name("mxnet_worker.py")
_SYMBOL_SUFFIX = "-symbol.json"
# mx2onnx's operator translations stop at opset 13; newer opsets are reached with onnx's version converter.
_EXPORTER_OPSETS = range(12, 14)


def model_files(path: Path) -> list[tuple[Path, Path]]:
    """The (symbol, params) pairs at `path`: a `NAME-symbol.json` file, or a folder holding them. The params are
    `NAME-NNNN.params` (the highest epoch when there are several) or `NAME.params`."""
    if path.is_file() and path.name.endswith(_SYMBOL_SUFFIX):
        symbols = [path]
    elif path.is_dir():
        symbols = sorted(path.glob(f"*{_SYMBOL_SUFFIX}"))
    else:
        return []
    pairs = []
    for symbol in symbols:
        params = _params_for(symbol)
        if params is not None:
            pairs.append((symbol, params))
    return pairs


def _params_for(symbol: Path) -> Path | None:
    prefix = symbol.name[: -len(_SYMBOL_SUFFIX)]
    epoch = re.compile(rf"{re.escape(prefix)}-(\d+)\.params")
    epochs = [(int(m.group(1)), p) for p in symbol.parent.iterdir() if (m := epoch.fullmatch(p.name)) and p.is_file()]
    if epochs:
        return max(epochs)[1]
    plain = symbol.with_name(f"{prefix}.params")
    return plain if plain.is_file() else None


class MXNetFormat:
    name = "mxnet"
    extra = ""  # nothing to install here: the isolated environment is created on first use
    detect_rank = 40

    def detect(self, path: Path) -> bool:
        return bool(model_files(path))

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> MXNetSession:
        symbol, params = _one_model(path)
        worker = _Worker(engine.intra_op_threads)
        try:
            inputs, outputs = _open(worker, symbol, params, options)
            session = MXNetSession(worker, inputs, outputs)
            for _ in range(engine.warmup):
                session.run({spec.name: _zeros(spec) for spec in inputs})
        except BaseException:
            worker.close()
            raise
        return session

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        return ModelFacts()  # the format records nothing beyond its tensors

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        symbol, params = _one_model(path)
        if convert.opset < _EXPORTER_OPSETS.start:
            raise ConfigError(f"{symbol}: MXNet's ONNX exporter writes opset 12 or newer; got opset {convert.opset}")
        exporter_opset = min(convert.opset, _EXPORTER_OPSETS[-1])
        worker = _Worker(threads=0)
        try:
            inputs, _ = _open(worker, symbol, params, options)
            reply, _ = worker.request(
                {"op": "export", **_shapes_and_dtypes(inputs), "output": str(output), "opset": exporter_opset},
                failure=ConfigError,
                about=symbol,
            )
        finally:
            worker.close()
        _finish_export(symbol, output, convert.opset)
        return {
            "converter": "mxnet.onnx (mx2onnx), then onnx.version_converter",
            "exporter_opset": exporter_opset,
            "tool_versions": {f"{name} (isolated)": version for name, version in reply["versions"].items()},
            "isolated_environment": str(environment_dir()),
        }


MXNET = MXNetFormat()


class MXNetSession:
    """A model running in the isolated environment's mxnet; each `run` is one request to the worker process."""

    def __init__(self, worker: _Worker, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self._worker = worker
        self.inputs = inputs
        self.outputs = outputs
        self.providers = ["mxnet:cpu"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for spec in self.inputs:
            if spec.name not in inputs:
                raise InputError(f"missing input '{spec.name}'")
            feed[spec.name] = np.asarray(inputs[spec.name], dtype=spec.dtype.numpy_dtype)
        _, results = self._worker.request({"op": "run"}, feed, failure=InputError)
        return results

    def close(self) -> None:
        self._worker.close()


def _one_model(path: Path) -> tuple[Path, Path]:
    pairs = model_files(path)
    if not pairs:
        raise ConfigError(f"{path}: no MXNet model (expected NAME{_SYMBOL_SUFFIX} with NAME-NNNN.params beside it)")
    if len(pairs) > 1:
        names = ", ".join(symbol.name for symbol, _ in pairs)
        raise ConfigError(f"{path}: several MXNet models ({names}); keep one per version folder")
    symbol, params = pairs[0]
    _check_symbol_file(symbol)
    return symbol, params


def _check_symbol_file(symbol: Path) -> None:
    """Cheap checks here, before a child process starts; the worker reads the file in full."""
    try:
        graph = json.loads(symbol.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{symbol}: cannot read this MXNet symbol file ({exc.strerror})") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ConfigError(f"{symbol}: not a readable MXNet symbol file ({exc})") from None
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise ConfigError(f"{symbol}: not an MXNet symbol file (no 'nodes' list)")


def _open(
    worker: _Worker, symbol: Path, params: Path, options: LoadOptions
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    reply, _ = worker.request({"op": "open", "symbol": str(symbol), "params": str(params)}, failure=ConfigError)
    names: list[str] = reply["inputs"]
    missing = [name for name in names if name not in options.input_shapes]
    if missing:
        example = ", ".join(f"{name}: [-1, ...]" for name in missing)
        raise ConfigError(
            f"{symbol}: MXNet models record no input shapes; give input_shapes for {missing} "
            f"(config source: {{input_shapes: {{{example}}}}}, -1 for dynamic dimensions, the batch first)"
        )
    inputs = [_input_spec(symbol, name, options) for name in names]
    reply, _ = worker.request({"op": "describe", **_shapes_and_dtypes(inputs)}, failure=ConfigError, about=symbol)
    described: dict[str, dict[str, Any]] = reply["outputs"]
    outputs = [
        TensorSpec(name, DataType.from_name(found["dtype"]), tuple(found["shape"])) for name, found in described.items()
    ]
    return inputs, outputs


def _input_spec(symbol: Path, name: str, options: LoadOptions) -> TensorSpec:
    shape = tuple(options.input_shapes[name])
    if not shape or any(dim < -1 or dim == 0 for dim in shape):
        raise ConfigError(f"{symbol}: input_shapes['{name}'] = {list(shape)}: use positive sizes, -1 for dynamic")
    dtype = DataType.from_name(options.input_dtypes.get(name, "FP32"))
    if dtype.numpy_dtype is None or dtype is DataType.BYTES:
        raise ConfigError(f"{symbol}: input '{name}' cannot be {dtype.name} for an MXNet model; use a numeric type")
    return TensorSpec(name, dtype, shape)


def _shapes_and_dtypes(inputs: list[TensorSpec]) -> dict[str, dict[str, Any]]:
    return {
        "shapes": {spec.name: list(spec.shape) for spec in inputs},
        "dtypes": {spec.name: str(spec.dtype.numpy_dtype) for spec in inputs},
    }


def _zeros(spec: TensorSpec) -> np.ndarray:
    return np.zeros(tuple(1 if dim == -1 else dim for dim in spec.shape), dtype=spec.dtype.numpy_dtype)


def _finish_export(symbol: Path, output: Path, opset: int) -> None:
    """mx2onnx lists the weights among the graph inputs (they would look like inputs to fill) and stops at opset 13:
    drop those inputs, lift the opset to the one asked for, and label the IR version that opset needs."""
    import onnx
    from onnx import helper, version_converter

    model = onnx.load(str(output))
    weights = {initializer.name for initializer in model.graph.initializer}
    real_inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    if model.opset_import[0].version != opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as exc:  # onnx raises its own untyped errors for operators it cannot lift
            raise ConfigError(
                f"{symbol}: cannot lift MXNet's ONNX export to opset {opset}: {str(exc).splitlines()[0]}"
            ) from None
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(output))


class _Worker:
    """mxnet_worker.py running under the isolated interpreter; one request at a time (a lock keeps them whole)."""

    def __init__(self, threads: int) -> None:
        python = isolated_python()
        env = {**os.environ, "MXNET_HOME": str(environment_dir() / "mxnet-home")}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the process; _stop closes it
        # -I: the script's own folder stays off sys.path, where mxnet.py and onnx.py would shadow the frameworks.
        self._process = subprocess.Popen(
            [str(python), "-I", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        self._lock = threading.Lock()
        self._stop = weakref.finalize(self, _stop, self._process, self._stderr)

    def request(
        self,
        header: dict[str, Any],
        arrays: dict[str, np.ndarray] | None = None,
        *,
        failure: type[ForwardpassError],
        about: Path | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The reply; a refusal raises `failure` naming the file at fault (the worker's, else `about`)."""
        with self._lock:
            stdin, stdout = self._streams()
            try:
                write_message(stdin, header, arrays or {})
                reply, results = read_message(stdout)
            except (OSError, EOFError, ValueError):
                raise ForwardpassError(f"the MXNet worker process stopped: {self._last_words()}") from None
        if "error" in reply:
            where = reply.get("file") or about
            raise failure(f"{where}: {reply['error']}" if where else reply["error"])
        return reply, results

    def close(self) -> None:
        self._stop()

    def _streams(self) -> tuple[IO[bytes], IO[bytes]]:
        if self._process.stdin is None or self._process.stdout is None or not self._stop.alive:
            raise ForwardpassError("the MXNet session is closed")
        return self._process.stdin, self._process.stdout

    def _last_words(self) -> str:
        self._process.wait(timeout=10)
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {self._process.returncode}"


def _stop(process: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
    """Closing stdin tells the worker to exit; one that does not is killed."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()
    stderr.close()


def cache_root() -> Path:
    """$FORWARDPASS_CACHE, else `.build/` in this checkout, else beside the Python environment (never the home)."""
    configured = os.environ.get("FORWARDPASS_CACHE")
    if configured:
        return Path(configured)
    checkout = Path(__file__).resolve().parents[2]
    return checkout / ".build" if (checkout / "pyproject.toml").is_file() else Path(sys.prefix) / "forwardpass-cache"


def environment_dir() -> Path:
    return cache_root() / "mxnet-env"


def isolated_python() -> Path:
    """The isolated environment's interpreter, the environment created first if it is missing or has other pins.
    A lock file lets concurrent processes wait for one creation instead of racing."""
    home = environment_dir()
    python = home / "bin" / "python"
    marker = home / "forwardpass-pins.txt"
    wanted = "\n".join(PINS) + "\n"
    if _read(marker) != wanted or not python.exists():
        import fcntl  # POSIX only; importing it here keeps `import forwardpass` working everywhere

        home.parent.mkdir(parents=True, exist_ok=True)
        with open(home.parent / "mxnet-env.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _read(marker) != wanted or not python.exists():
                _create_environment(home)
                marker.write_text(wanted, encoding="utf-8")
    return python


def _create_environment(home: Path) -> None:
    log.warning("creating the isolated MXNet environment in %s (once: ~70 MB download, ~380 MB on disk)", home)
    shutil.rmtree(home, ignore_errors=True)
    report = home.parent / "mxnet-env.log"
    with open(report, "w") as output:
        for command in (
            [_base_python(), "-m", "venv", str(home)],
            [str(home / "bin" / "python"), "-m", "pip", "install", "--no-input", "--only-binary", ":all:", *PINS],
        ):
            if subprocess.run(command, stdout=output, stderr=subprocess.STDOUT).returncode != 0:
                shutil.rmtree(home, ignore_errors=True)
                raise ForwardpassError(
                    f"could not create the isolated MXNet environment in {home} ('{' '.join(command[1:4])}' failed;"
                    f" its output is in {report})"
                )


def _base_python() -> str:
    """numpy 1.23, which mxnet needs, has wheels up to Python 3.11."""
    if sys.version_info < (3, 12):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        raise ForwardpassError("MXNet needs numpy 1.23, which has no wheels past Python 3.11: install python3.11")
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None
