"""How a non-ONNX model is served: natively by its framework, or converted to ONNX once (cached beside it, with
parity checked) and run by ONNX Runtime. `auto` converts, times both briefly and keeps the faster; the choice and
its reason are reported, and remembered in the cache so that later loads skip the timing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, MissingExtraError
from forwardpass.formats.base import ConvertOptions, Format, LoadOptions
from forwardpass.formats.convert import (
    CACHE_FOLDER,
    convert_with_parity,
    parity_inputs,
    provenance_path,
    source_fingerprint,
)

__all__ = ["SERVE_MODES", "ServeMode", "Serving", "open_format_session"]

log = logging.getLogger(__name__)

ServeMode = Literal["auto", "native", "onnx"]
SERVE_MODES: tuple[ServeMode, ...] = ("auto", "native", "onnx")
Engine = Literal["native", "onnx"]

# auto's timing: each engine runs the same few batches (1, 3 and 16 items) this many rounds, interleaved; the best
# round counts, so one noisy moment on a busy machine cannot decide.
_TIMING_ROUNDS = 3
_TIMING_ITEMS = 20


@dataclass(frozen=True, slots=True)
class Serving:
    """What runs a model and why: reported by `Model.serving` and `forwardpass models`."""

    format: str  # the artefact's format: "onnx", "torchscript", "huggingface", ...
    engine: Engine  # "native": the format's own framework; "onnx": ONNX Runtime
    mode: ServeMode  # what was asked
    reason: str
    source: Path  # the artefact
    options: LoadOptions
    providers: tuple[str, ...] = ()
    converted: Path | None = None  # the ONNX file that runs, when converted
    parity: dict[str, Any] | None = None  # the conversion's parity figures, when one was made

    @property
    def runs(self) -> Path:
        """The file or folder that runs: the converted ONNX model, or the artefact itself."""
        return self.converted or self.source

    def describe(self) -> str:
        """e.g. 'torchscript → onnx (auto: 1.9x faster than native)'."""
        if self.format == "onnx":
            return "onnx"
        return f"{self.format} → {self.engine} ({self.reason})"


def open_format_session(
    fmt: Format,
    artefact: Path,
    engine: EngineConfig,
    options: LoadOptions,
    mode: ServeMode,
    convert: ConvertOptions,
) -> tuple[Session, Serving]:
    """A session running `artefact` of format `fmt` natively or converted to ONNX, as `mode` says (auto times both),
    and how it runs."""
    opener = _Opener(fmt, artefact, engine, options, mode)
    if fmt.name == "onnx":
        session = fmt.open_native(artefact, engine, options)
        return session, opener.serving(session, "onnx", "an ONNX model")
    if mode == "native":
        return opener.native("native asked")
    cache = ConversionCache(artefact, options, convert)
    if mode == "onnx":
        return opener.converted(cache, convert, "onnx asked")
    return _auto(opener, cache, convert)


@dataclass(frozen=True, slots=True)
class _Opener:
    fmt: Format
    artefact: Path
    engine: EngineConfig
    options: LoadOptions
    mode: ServeMode

    def native(self, reason: str) -> tuple[Session, Serving]:
        session = self.fmt.open_native(self.artefact, self.engine, self.options)
        return session, self.serving(session, "native", reason)

    def converted(self, cache: ConversionCache, convert: ConvertOptions, reason: str) -> tuple[Session, Serving]:
        from forwardpass.backends.ort import OrtSession  # imported on use: onnxruntime takes ~0.2 s to import

        provenance = cache.provenance() or cache.convert(self.fmt, self.artefact, self.options, convert)
        session = OrtSession(cache.onnx_path, self.engine)
        return session, self.serving(session, "onnx", reason, cache.onnx_path, provenance.get("parity"))

    def serving(
        self,
        session: Session,
        engine: Engine,
        reason: str,
        converted: Path | None = None,
        parity: dict[str, Any] | None = None,
    ) -> Serving:
        providers = tuple(session.providers)
        return Serving(
            self.fmt.name, engine, self.mode, reason, self.artefact, self.options, providers, converted, parity
        )


def _auto(opener: _Opener, cache: ConversionCache, convert: ConvertOptions) -> tuple[Session, Serving]:
    remembered = cache.choice(opener.engine)
    if remembered is not None:
        chosen, reason = remembered
        if chosen == "native":
            return opener.native(reason)
        if cache.provenance() is not None:
            return opener.converted(cache, convert, reason)
    try:
        native, _ = opener.native("")
    except MissingExtraError:
        if cache.provenance() is None:
            raise
        return opener.converted(cache, convert, "auto: converted earlier; the framework is not installed")
    try:
        converted, serving = opener.converted(cache, convert, "")
    except (ConfigError, MissingExtraError) as exc:  # parity missed, or the converter is not installed
        reason = f"auto: conversion refused: {exc}"
        log.warning("%s: serving natively; %s", opener.artefact, reason)
        if isinstance(exc, ConfigError):  # the same artefact would be refused again; a missing converter may come
            cache.remember(opener.engine, "native", reason)
        return native, opener.serving(native, "native", reason)
    batches = parity_inputs(opener.fmt, opener.artefact, native.inputs, _TIMING_ITEMS)
    native_s, onnx_s = _time_both(native, converted, batches)
    if onnx_s <= native_s:
        reason = f"auto: {native_s / onnx_s:.1f}x faster than native"
        native.close()
        cache.remember(opener.engine, "onnx", reason)
        return converted, opener.serving(converted, "onnx", reason, serving.converted, serving.parity)
    reason = f"auto: {onnx_s / native_s:.1f}x faster than onnx"
    converted.close()
    cache.remember(opener.engine, "native", reason)
    return native, opener.serving(native, "native", reason, parity=serving.parity)


def _time_both(native: Session, converted: Session, batches: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    """Seconds per pass over the same batches: the best of a few interleaved rounds for each engine."""
    best = {"native": float("inf"), "onnx": float("inf")}
    for session in (native, converted):  # a first pass of each warms caches and lazy initialisation
        for batch in batches:
            session.run(dict(batch))
    for _ in range(_TIMING_ROUNDS):
        for key, session in (("native", native), ("onnx", converted)):
            start = time.perf_counter()
            for batch in batches:
                session.run(dict(batch))
            best[key] = min(best[key], time.perf_counter() - start)
    return best["native"], best["onnx"]


class ConversionCache:
    """`<artefact folder>/.forwardpass/` (or `<file's folder>/.forwardpass/<file name>/`): the converted model, its
    provenance and auto's choice. Keyed by the artefact's fingerprint and the options, so any change converts anew.
    A read-only model folder caches under the system's temporary folder instead (never the user's home)."""

    def __init__(self, artefact: Path, options: LoadOptions, convert: ConvertOptions) -> None:
        self.folder = _writable_cache_folder(artefact)
        self.onnx_path = self.folder / "model.onnx"
        self._choices = self.folder / "auto.json"
        self._key = hashlib.sha256(
            json.dumps(
                [source_fingerprint(artefact), asdict(options), asdict(convert), _forwardpass_version()],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()

    def provenance(self) -> dict[str, Any] | None:
        """The provenance of a cached conversion that is still current, else None."""
        recorded = _read_json(provenance_path(self.onnx_path))
        if recorded is None or recorded.get("cache_key") != self._key or not self.onnx_path.is_file():
            return None
        return recorded

    def convert(self, fmt: Format, artefact: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        self._choices.unlink(missing_ok=True)
        provenance = convert_with_parity(fmt, artefact, self.onnx_path, options, convert)
        provenance["cache_key"] = self._key
        _write_json(provenance_path(self.onnx_path), provenance)
        return provenance

    def choice(self, engine: EngineConfig) -> tuple[Engine, str] | None:
        entry = (_read_json(self._choices) or {}).get(self._engine_key(engine))
        if not isinstance(entry, dict) or entry.get("engine") not in ("native", "onnx"):
            return None
        return entry["engine"], str(entry.get("reason", ""))

    def remember(self, engine: EngineConfig, chosen: Engine, reason: str) -> None:
        choices = _read_json(self._choices) or {}
        choices[self._engine_key(engine)] = {"engine": chosen, "reason": reason}
        _write_json(self._choices, choices)

    def _engine_key(self, engine: EngineConfig) -> str:
        return f"{self._key}:{engine.model_dump_json()}"


def _writable_cache_folder(artefact: Path) -> Path:
    folder = artefact / CACHE_FOLDER if artefact.is_dir() else artefact.parent / CACHE_FOLDER / artefact.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return folder
    except OSError:
        digest = hashlib.sha256(str(artefact.resolve()).encode()).hexdigest()[:16]
        fallback = Path(tempfile.gettempdir()) / "forwardpass-cache" / digest
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Written whole or not at all: another process may be reading the cache."""
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    staged.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(staged, path)


def _forwardpass_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("forwardpass")
    except PackageNotFoundError:
        return "unknown"
