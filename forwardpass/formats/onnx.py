"""ONNX: served by ONNX Runtime as it is; "converting" it changes its opset with ONNX's version converter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError
from forwardpass.formats.base import ConvertOptions, LoadOptions
from forwardpass.formats.facts import ModelFacts, onnx_facts

__all__ = ["ONNX", "OnnxFormat"]


class OnnxFormat:
    name = "onnx"
    extra = ""
    detect_rank = 10

    def detect(self, path: Path) -> bool:
        return path.suffix == ".onnx" and not path.is_dir()

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> Session:
        from forwardpass.backends.ort import OrtSession  # imported on use: onnxruntime takes ~0.2 s to import

        return OrtSession(path, engine)

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        import onnx
        from onnx import version_converter

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError, OSError, ValueError... for unreadable files
            problem = _first_line(exc)
            raise ConfigError(f"{path}: not a readable ONNX model (truncated or corrupt?): {problem}") from None
        try:
            converted = version_converter.convert_version(model, convert.opset)
        except Exception as exc:  # the converter raises plain RuntimeErrors for opsets it cannot reach
            problem = _first_line(exc)
            raise ConfigError(f"{path}: ONNX cannot convert this model to opset {convert.opset}: {problem}") from None
        onnx.save(converted, str(output))
        return {"tool_versions": {"onnx": onnx.__version__}}

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        return onnx_facts(path)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


ONNX = OnnxFormat()
