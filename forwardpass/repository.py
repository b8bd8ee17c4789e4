"""A model repository in Triton's layout: `<root>/<model-name>/<version>/<artefact>`, config beside the versions.

    models/
      mobilenet_v2/
        config.yaml        optional: preprocessing, postprocessing, batching, engine
        labels.txt         any files the config names
        1/model.onnx
        2/model.onnx       the highest version wins unless one is asked for
      minilm/
        1/                 a version folder may hold one model file of any format (model.pt, model.keras, ...),
          config.json      or be the model itself: a Hugging Face folder, a SavedModel, an MXNet symbol + params
          model.safetensors
          tokenizer.json

Which format an artefact is, `forwardpass.formats` decides; this module knows only the layout. Hidden entries
(such as the `.forwardpass/` conversion cache) are never the model. Names and files that would leave the root (`..`,
absolute paths, symlinks pointing out) are refused.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from forwardpass.config import MAX_CONFIG_BYTES, LatestVersions, ModelConfig, SpecificVersions, read_yaml
from forwardpass.errors import ConfigError, NotFoundError, UnsafePathError

__all__ = [
    "CONFIG_FILE",
    "PRECISION_FILE",
    "PRECISION_PLOT",
    "ModelEntry",
    "Repository",
    "declares_pipeline",
    "default_repository",
    "find_artefact",
    "lies_in",
    "read_variant",
    "version_number",
    "versions_in",
]

CONFIG_FILE = "config.yaml"
# Written by `forwardpass optimize` beside a derived version's model: its precision and what it derives from.
PRECISION_FILE = "precision.json"
PRECISION_PLOT = "precision.png"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LISTED = 50  # names an unknown-model error lists: a repository may hold thousands


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """Where one version of one model lives."""

    name: str
    version: int | None
    directory: Path  # the model's folder: config and the files it names live here
    artefact: Path

    @property
    def config_path(self) -> Path | None:
        path = self.directory / CONFIG_FILE
        return path if path.is_file() else None

    @property
    def variant(self) -> dict[str, object]:
        """The version's precision.json (empty for a version that `forwardpass optimize` did not make)."""
        folder = self.artefact if self.artefact.is_dir() else self.artefact.parent
        return read_variant(folder)


def default_repository() -> Path:
    """$FORWARDPASS_REPOSITORY, else the bundled `models/` folder of this checkout."""
    configured = os.environ.get("FORWARDPASS_REPOSITORY")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "models"


class Repository:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFoundError(f"model repository '{self.root}' does not exist or is not a folder")
        self._real_root = self.root.resolve()

    def names(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if _valid_name(p.name) and lies_in(p, self._real_root) and versions_in(p)
        )

    def misnamed(self) -> list[str]:
        """Folders that hold a model's versions under a name no request can give ('modèle', 'my model')."""
        return sorted(p.name for p in self.root.iterdir() if not _valid_name(p.name) and versions_in(p))

    def versions(self, name: str) -> list[int]:
        """Every version on disk (what `forwardpass optimize` numbers after), served or not."""
        return versions_in(self._model_dir(name))

    def served_versions(self, name: str) -> list[int]:
        """The versions the config's `version_policy` serves (all of them by default)."""
        directory = self._model_dir(name)
        return self._served(name, directory, versions_in(directory))

    def precisions(self, name: str) -> dict[int, str]:
        """Each version's precision: from its precision.json, "fp32" for a version that has none."""
        directory = self._model_dir(name)
        return {v: str(read_variant(directory / str(v)).get("precision", "fp32")) for v in versions_in(directory)}

    def derived_from(self, name: str) -> dict[int, int]:
        """{version: the version it was made from} for the versions `forwardpass optimize` made."""
        directory = self._model_dir(name)
        lineage = {}
        for v in versions_in(directory):
            source = read_variant(directory / str(v)).get("source")
            if isinstance(source, dict) and isinstance(source.get("version"), int):
                lineage[v] = source["version"]
        return lineage

    def resolve(self, name: str, version: int | None = None, precision: str | None = None) -> ModelEntry:
        """`version`, else the highest version of `precision` (when given), else the highest version."""
        directory = self._model_dir(name)
        on_disk = versions_in(directory)
        versions = self._served(name, directory, on_disk)
        if not versions:
            if declares_pipeline(directory):
                raise _pipeline_not_model(name)
            raise NotFoundError(f"model '{name}' has no numbered version folder with a model in {directory}")
        if version is None and precision is not None:
            precisions = self.precisions(name)
            matching = [v for v in versions if precisions[v] == precision]
            if not matching:
                unserved = [v for v in on_disk if precisions[v] == precision]
                if unserved:  # made, but left out by the policy: "make one" would make another left out
                    raise NotFoundError(
                        f"model '{name}''s {precision} version {', '.join(map(str, unserved))} is not served: its "
                        f"version_policy serves {versions}"
                    )
                have = ", ".join(f"{v}: {p}" for v, p in precisions.items())
                raise NotFoundError(
                    f"model '{name}' has no {precision} version (versions: {have}); "
                    f"make one with: forwardpass optimize {name} --precision {precision}"
                )
            version = matching[-1]
        if version is None:
            version = versions[-1]
        elif version not in versions:
            if version in on_disk:
                raise NotFoundError(
                    f"model '{name}' version {version} is not served: its version_policy serves {versions}"
                )
            folder = directory / str(version)
            if folder.is_dir():
                raise NotFoundError(
                    f"model '{name}' version {version}: {folder} holds no model file; versions with one: {versions}"
                )
            raise NotFoundError(f"model '{name}' has no version {version}; versions: {versions}")
        artefact = find_artefact(directory / str(version))
        for part in [artefact, *(artefact.rglob("*") if artefact.is_dir() else [])]:
            self._inside_root(part, f"model '{name}' version {version}")
        if (directory / CONFIG_FILE).exists():
            self._inside_root(directory / CONFIG_FILE, f"model '{name}''s {CONFIG_FILE}")
        return ModelEntry(name, version, directory, artefact)

    def _model_dir(self, name: str) -> Path:
        if not _valid_name(name):
            raise UnsafePathError(f"'{name}' is not a valid model name (letters, digits, '.', '_', '-'; no paths)")
        directory = self.root / name
        if not directory.is_dir():
            # pipelines too: the CLI runs them by name, and one named like a model would be a misleading guess
            models = self.names()
            served = set(models)
            pipelines = {p.name for p in self.root.iterdir() if p.name not in served and declares_pipeline(p)}
            names = sorted([*models, *pipelines])
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            known = ", ".join(f"{n} (pipeline)" if n in pipelines else n for n in names[:_LISTED]) or "none"
            more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
            raise NotFoundError(f"unknown model '{name}' in repository '{self.root}'; {hint}models: {known}{more}")
        self._inside_root(directory, f"model '{name}'")
        return directory

    def _served(self, name: str, directory: Path, on_disk: list[int]) -> list[int]:
        config = directory / CONFIG_FILE
        if not on_disk or not config.is_file():
            return on_disk
        self._inside_root(config, f"model '{name}''s {CONFIG_FILE}")
        policy = ModelConfig.from_file(config).version_policy
        if isinstance(policy, LatestVersions):
            return on_disk[-policy.latest :]
        if isinstance(policy, SpecificVersions):
            missing = sorted(set(policy.specific) - set(on_disk))
            if missing:
                raise ConfigError(
                    f"model '{name}': version_policy names version {', '.join(map(str, missing))}, which holds no "
                    f"model file (versions: {on_disk})"
                )
            return sorted(set(policy.specific))
        return on_disk

    def _inside_root(self, path: Path, what: str) -> None:
        if not lies_in(path, self._real_root):
            raise UnsafePathError(f"{what} points outside the repository '{self.root}' (symlink?); refused")


def lies_in(path: Path, folder: Path) -> bool:
    """Whether `path`, its links followed, lies in `folder` (resolved already); a symlink loop lies nowhere."""
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):  # Python 3.11's pathlib raises RuntimeError for a loop
        return False


def find_artefact(folder: Path) -> Path:
    """The model in a version folder: `model.onnx`; else the only `.onnx` file; else the only entry (a model file,
    or a model folder such as `model.savedmodel/`); else the folder itself, whose files together are the model."""
    if declares_pipeline(folder):
        raise _pipeline_not_model(str(folder))
    preferred = folder / "model.onnx"
    if preferred.is_file():
        return preferred
    entries = _model_entries(folder)
    onnx = [p for p in entries if p.suffix == ".onnx"]
    if len(onnx) > 1:
        raise NotFoundError(f"{folder}: expected one model file (.onnx), found {', '.join(p.name for p in onnx)}")
    if onnx:
        return onnx[0]
    if not entries:
        raise NotFoundError(f"{folder}: no model file or folder in it")
    return entries[0] if len(entries) == 1 else folder


def declares_pipeline(folder: Path) -> bool:
    """Its config.yaml declares `pipeline:`: the folder is a pipeline of the repository's models, not a model."""
    try:  # a config that never spells the word is not parsed: an unknown name looks through every folder
        with (folder / CONFIG_FILE).open("rb") as file:
            if b"pipeline" not in file.read(MAX_CONFIG_BYTES + 1):  # past that, read_yaml refuses it
                return False
        config = read_yaml(folder / CONFIG_FILE)
    except (OSError, ConfigError):  # the model's own load names the problem
        return False
    return isinstance(config, dict) and config.get("pipeline") is not None


def _pipeline_not_model(model: str) -> NotFoundError:
    return NotFoundError(
        f"'{model}' is a pipeline of models, not one model: load it with forwardpass.load_pipeline('{model}')"
    )


def read_variant(folder: Path) -> dict[str, object]:
    """A version folder's precision.json, or {} when it has none or it cannot be read as a JSON object."""
    try:
        data = json.loads((folder / PRECISION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None and ".." not in name


def versions_in(directory: Path) -> list[int]:
    """The numbered version folders of a model folder that hold a model file, ascending."""
    if not directory.is_dir():
        return []
    numbered = ((version_number(p.name), p) for p in directory.iterdir())
    return sorted(number for number, p in numbered if number is not None and p.is_dir() and _has_artefact(p))


def version_number(name: str) -> int | None:
    """The version a folder's name is: ASCII digits written as the number is ('7'; not '07', which would be a second
    version 7, nor the Arabic-Indic, fullwidth or superscript digits that str.isdigit() takes too: '²' is no int)."""
    return int(name) if name.isascii() and name.isdigit() and str(int(name)) == name else None


def _has_artefact(folder: Path) -> bool:
    return bool(_model_entries(folder))


def _model_entries(folder: Path) -> list[Path]:
    """What in a folder may be (part of) the model: not hidden, not the model's config, not its precision record."""
    ignored = (CONFIG_FILE, PRECISION_FILE, PRECISION_PLOT)
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in ignored)
