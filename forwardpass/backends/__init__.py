"""Backends run the forward pass. Each gives a `Session`; nothing else in forwardpass knows an engine's API."""

from __future__ import annotations

from pathlib import Path

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError

__all__ = ["Session", "open_session"]


def open_session(artefact: Path, engine: EngineConfig) -> Session:
    """The backend for a model file, chosen by its format."""
    if artefact.suffix == ".onnx":
        from forwardpass.backends.ort import OrtSession  # imported on use: onnxruntime takes ~0.2 s to import

        return OrtSession(artefact, engine)
    raise ConfigError(f"{artefact}: no backend for '{artefact.suffix}' files; supported: .onnx")
