"""Source formats: which format an artefact is, and how it is opened (natively, or converted to ONNX with parity).

Each format is an instance registered under the `forwardpass.formats` entry-point group (the built-in ones in
forwardpass's pyproject.toml, a third party's in its own). The first whose `detect` says yes wins, asked in the order
of their `detect_rank`. The entry points are read and their modules imported when the first artefact is detected,
and formats import their frameworks only when a model is opened, so `import forwardpass` stays cheap.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig, SourceConfig
from forwardpass.errors import ConfigError, NotFoundError
from forwardpass.formats.base import ConvertOptions, Format, LoadOptions
from forwardpass.formats.convert import convert_with_parity
from forwardpass.formats.facts import ModelFacts, merge_facts, onnx_facts
from forwardpass.formats.serve import SERVE_MODES, ServeMode, Serving, open_format_session

__all__ = [
    "ENTRY_POINT_GROUP",
    "SERVE_MODES",
    "ConvertOptions",
    "Format",
    "LoadOptions",
    "ModelFacts",
    "ServeMode",
    "Serving",
    "convert_model",
    "detect_format",
    "load_options",
    "model_facts",
    "open_model_session",
    "open_served",
    "registered_formats",
    "resolve_artefact",
]

ENTRY_POINT_GROUP = "forwardpass.formats"


@cache
def registered_formats() -> tuple[Format, ...]:
    """The formats every installed distribution registers, in detection order (rank, then name: deterministic)."""
    found: dict[str, Format] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[entry.name] = entry.load()
        except Exception as exc:  # a broken package's format: named with its fix, not a traceback from importlib
            raise ConfigError(
                f"the model format '{entry.name} = {entry.value}' ({ENTRY_POINT_GROUP}) cannot be loaded: "
                f"{type(exc).__name__}: {exc}; fix or uninstall the package that registers it"
            ) from None
    if not found:  # forwardpass's own formats are entry points too: only an installed distribution has them
        raise ConfigError(f"no model formats registered ({ENTRY_POINT_GROUP}); install forwardpass: pip install -e .")
    return tuple(fmt for _, fmt in sorted(found.items(), key=lambda item: (item[1].detect_rank, item[0])))


def detect_format(path: Path) -> Format:
    """The format of a model file or folder, or a ConfigError naming the path and the formats known."""
    if not path.exists():
        raise NotFoundError(f"no model file or folder at '{path}'")
    for fmt in registered_formats():
        if fmt.detect(path):
            return fmt
    known = ", ".join(fmt.name for fmt in registered_formats())
    raise ConfigError(f"{path}: not a model in any known format ({known})")


def resolve_artefact(path: Path) -> tuple[Format, Path]:
    """A path that is a model, or a folder holding exactly one model among other files (config, labels)."""
    formats = registered_formats()
    if path.is_dir() and not any(fmt.detect(path) for fmt in formats):
        found = [
            entry
            for entry in sorted(path.iterdir())
            if not entry.name.startswith(".") and any(f.detect(entry) for f in formats)  # hidden: caches
        ]
        if len(found) == 1:
            return detect_format(found[0]), found[0]
        if found:
            names = ", ".join(entry.name for entry in found)
            raise ConfigError(f"{path}: holds several models ({names}); keep one per version folder")
    return detect_format(path), path


def open_model_session(
    artefact: Path,
    engine: EngineConfig,
    options: LoadOptions | None = None,
    serve_mode: ServeMode = "auto",
    convert: ConvertOptions | None = None,
) -> tuple[Session, Serving]:
    """The one way to open a model: detect its format, then run it natively or converted as `serve_mode` says."""
    fmt, path = resolve_artefact(artefact)
    return open_format_session(fmt, path, engine, options or LoadOptions(), serve_mode, convert or ConvertOptions())


def open_served(serving: Serving, engine: EngineConfig) -> Session:
    """Another session that runs a model the way it is already served (e.g. a server's second instance)."""
    return open_model_session(serving.runs, engine, serving.options, "native")[0]


def model_facts(serving: Serving) -> ModelFacts:
    """What the served artefact records about itself: its framework's word, and its ONNX graph's where it runs
    converted (distributions and the batch axis are read from the graph that actually runs)."""
    fmt = next(fmt for fmt in registered_formats() if fmt.name == serving.format)
    framework = fmt.facts(serving.source, serving.options)
    return merge_facts(framework, onnx_facts(serving.converted) if serving.converted is not None else None)


def convert_model(
    source: Path, output: Path, options: LoadOptions | None = None, convert: ConvertOptions | None = None
) -> dict[str, Any]:
    """`forwardpass convert`: write OUTPUT.onnx and OUTPUT.json (provenance with parity), or refuse with figures."""
    fmt, path = resolve_artefact(source)
    return convert_with_parity(fmt, path, output, options or LoadOptions(), convert or ConvertOptions())


def load_options(
    source: SourceConfig, *, trust_pickle: bool = False, signature: str | None = None
) -> tuple[LoadOptions, ConvertOptions]:
    """A config's `source:` section (plus what the caller says) as the options formats take."""
    declared = source.inputs
    options = LoadOptions(
        trust_pickle=trust_pickle,
        signature=signature or source.signature,
        input_names=[tensor.name for tensor in declared] or None,
        output_names=list(source.outputs) or None,
        input_shapes={tensor.name: list(tensor.shape) for tensor in declared if tensor.shape is not None},
        input_dtypes={tensor.name: tensor.datatype for tensor in declared if tensor.datatype is not None},
    )
    return options, ConvertOptions(opset=source.opset, tolerance=source.tolerance)
