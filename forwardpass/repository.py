"""A model repository in Triton's layout: `<root>/<model-name>/<version>/<artefact>`, config beside the versions.

    models/
      mobilenet_v2/
        config.yaml        optional: preprocessing, postprocessing, batching, engine
        labels.txt         any files the config names
        1/model.onnx
        2/model.onnx       the highest version wins unless one is asked for

Names and files that would leave the root (`..`, absolute paths, symlinks pointing out) are refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from forwardpass.errors import NotFoundError, UnsafePathError

__all__ = ["CONFIG_FILE", "ModelEntry", "Repository", "default_repository", "find_artefact", "versions_in"]

CONFIG_FILE = "config.yaml"
ARTEFACT_SUFFIXES = (".onnx",)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
            if _NAME.fullmatch(p.name)
            and ".." not in p.name
            and p.resolve().is_relative_to(self._real_root)
            and versions_in(p)
        )

    def versions(self, name: str) -> list[int]:
        return versions_in(self._model_dir(name))

    def resolve(self, name: str, version: int | None = None) -> ModelEntry:
        directory = self._model_dir(name)
        versions = versions_in(directory)
        if not versions:
            raise NotFoundError(f"model '{name}' has no numbered version folder with a model in {directory}")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise NotFoundError(f"model '{name}' has no version {version}; versions: {versions}")
        artefact = find_artefact(directory / str(version))
        self._inside_root(artefact, f"model '{name}' version {version}")
        return ModelEntry(name, version, directory, artefact)

    def _model_dir(self, name: str) -> Path:
        if not _NAME.fullmatch(name) or ".." in name:
            raise UnsafePathError(f"'{name}' is not a valid model name (letters, digits, '.', '_', '-'; no paths)")
        directory = self.root / name
        if not directory.is_dir():
            known = ", ".join(self.names()) or "none"
            raise NotFoundError(f"unknown model '{name}' in repository '{self.root}'; models: {known}")
        self._inside_root(directory, f"model '{name}'")
        return directory

    def _inside_root(self, path: Path, what: str) -> None:
        if not path.resolve().is_relative_to(self._real_root):
            raise UnsafePathError(f"{what} points outside the repository '{self.root}' (symlink?); refused")


def find_artefact(folder: Path) -> Path:
    """The model file in a version folder: `model.onnx`, else the only file with a known suffix."""
    preferred = folder / "model.onnx"
    if preferred.is_file():
        return preferred
    candidates = sorted(p for p in folder.iterdir() if p.suffix in ARTEFACT_SUFFIXES)
    if len(candidates) != 1:
        found = "none" if not candidates else ", ".join(p.name for p in candidates)
        raise NotFoundError(f"{folder}: expected one model file ({', '.join(ARTEFACT_SUFFIXES)}), found {found}")
    return candidates[0]


def versions_in(directory: Path) -> list[int]:
    """The numbered version folders of a model folder that hold a model file, ascending."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir() and _has_artefact(p))


def _has_artefact(folder: Path) -> bool:
    return any(p.suffix in ARTEFACT_SUFFIXES for p in folder.iterdir())
