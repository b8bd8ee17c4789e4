"""Conversion to ONNX with proof: convert, run both engines on the same inputs, refuse a conversion that drifts, and
write how the file was made (source, tool versions, opset, parity figures) to a JSON file beside it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError
from forwardpass.formats.base import ConvertOptions, Format, LoadOptions
from forwardpass.formats.parity import check_parity, random_samples
from forwardpass.tensor import TensorSpec

__all__ = ["HasParitySamples", "convert_with_parity", "provenance_path", "source_fingerprint"]

CACHE_FOLDER = ".forwardpass"  # conversion caches; never part of a model artefact


@runtime_checkable
class HasParitySamples(Protocol):
    """A format whose inputs random numbers cannot stand for (e.g. token ids): it gives realistic parity inputs."""

    def parity_samples(self, path: Path, specs: Sequence[TensorSpec], n: int) -> list[dict[str, np.ndarray]]: ...


def provenance_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def convert_with_parity(
    fmt: Format,
    source: Path,
    output: Path,
    options: LoadOptions,
    convert: ConvertOptions,
    engine: EngineConfig | None = None,
) -> dict[str, Any]:
    """Write `output` (.onnx) and its provenance JSON beside it, or raise ConfigError with the parity figures and
    write nothing. Returns the provenance."""
    from forwardpass.backends.ort import OrtSession  # imported on use: onnxruntime takes ~0.2 s to import

    engine = engine or EngineConfig(warmup=0)
    output = output if output.suffix == ".onnx" else output.with_name(output.name + ".onnx")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".converting-") as work:
        staged = Path(work) / "model.onnx"
        made_by = fmt.convert(source, staged, options, convert)
        if not staged.is_file():
            raise ConfigError(f"{source}: the {fmt.name} converter wrote no ONNX model")
        native = fmt.open_native(source, engine, options)
        try:
            try:
                converted = OrtSession(staged, engine)
            except ConfigError as exc:  # it names the staged file, which the user never sees
                reason = str(exc).partition(": ONNX Runtime cannot load this model: ")[2] or str(exc)
                raise ConfigError(f"{source}: ONNX Runtime cannot run its {fmt.name} conversion ({reason})") from None
            try:
                samples = parity_inputs(fmt, source, native.inputs, convert.parity_samples)
                report = check_parity(native, converted, samples)
                inputs, outputs = converted.inputs, converted.outputs
            finally:
                converted.close()
            reference = native.providers
        finally:
            native.close()
        if not report.passes(convert.tolerance):
            raise ConfigError(
                f"{source}: the ONNX conversion of this {fmt.name} model misses parity: {report.summary()}; "
                f"tolerance {convert.tolerance:g} (pass a looser --tolerance to accept it)"
            )
        provenance = {
            "source": {"path": str(source), "format": fmt.name, "fingerprint": source_fingerprint(source)},
            "output": output.name,
            "opset": _opset(staged),
            "tool_versions": {
                **_versions("forwardpass", "numpy", "onnx", "onnxruntime"),
                **made_by.get("tool_versions", {}),
            },
            "options": {"load": _non_default(options), "convert": asdict(convert)},
            "parity": {
                **report.to_dict(),
                "tolerance": convert.tolerance,
                "reference": reference,
                "candidate": ["onnxruntime"],
            },
            "inputs": [spec.to_dict() for spec in inputs],
            "outputs": [spec.to_dict() for spec in outputs],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **{key: value for key, value in made_by.items() if key != "tool_versions"},
        }
        for made in Path(work).iterdir():  # external-data files a converter may write beside the model
            if made != staged:
                os.replace(made, output.parent / made.name)
        os.replace(staged, output)
    provenance_path(output).write_text(json.dumps(provenance, indent=2, default=str) + "\n", encoding="utf-8")
    return provenance


def source_fingerprint(path: Path) -> str:
    """Changes when the artefact changes: names, sizes and modification times of its files (caches excluded)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        relative = file.relative_to(path) if path.is_dir() else Path(file.name)
        if CACHE_FOLDER in relative.parts:
            continue
        stat = file.stat()
        digest.update(f"{relative.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def parity_inputs(fmt: Format, source: Path, specs: Sequence[TensorSpec], n: int) -> list[dict[str, np.ndarray]]:
    """Inputs both engines run for a comparison: the format's own (real text, split points, categories) where it
    has them, else random numbers."""
    if isinstance(fmt, HasParitySamples):
        return fmt.parity_samples(source, specs, n)
    return random_samples(specs, n)


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _versions(*distributions: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in distributions:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _non_default(options: LoadOptions) -> dict[str, Any]:
    defaults = asdict(LoadOptions())
    return {key: value for key, value in asdict(options).items() if value != defaults[key]}
