"""Precision variants of one model: the repository's version folders, told apart by the `precision.json` that
`forwardpass optimize` writes beside each converted or quantized artefact.

    models/digits_cnn/
      1/model.onnx                          no precision.json: the original, fp32
      2/model.onnx  2/precision.json        {"precision": "int8", ...}
      3/model.onnx  3/precision.json        {"precision": "fp16", ...}

`variants("digits_cnn", ["fp32", "int8"])` → {"fp32": 1, "int8": 2}: the highest version of each precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from forwardpass.errors import InputError, NotFoundError
from forwardpass.model import locate
from forwardpass.repository import PRECISION_FILE, read_variant, versions_in

__all__ = ["DEFAULT_PRECISION", "precision_of", "variants"]

DEFAULT_PRECISION = "fp32"


def precision_of(version_folder: Path) -> str:
    """The precision a version folder declares in precision.json; the original model (no file) is fp32."""
    if not (version_folder / PRECISION_FILE).is_file():
        return DEFAULT_PRECISION
    declared = read_variant(version_folder).get("precision")
    if not isinstance(declared, str) or not declared:
        raise InputError(f"'{version_folder / PRECISION_FILE}' is not a JSON object with a \"precision\" text field")
    return declared


def variants(model: str | Path, precisions: Sequence[str], repository: str | Path | None = None) -> dict[str, int]:
    """The version to load for each asked precision (the highest version that has it)."""
    entry = locate(model, repository)
    if entry.version is None:
        raise InputError(f"'{model}' is a model file; --precision picks among a repository model's version folders")
    found: dict[str, int] = {}
    for version in versions_in(entry.directory):
        found[precision_of(entry.directory / str(version))] = version  # ascending: the highest wins
    missing = [precision for precision in precisions if precision not in found]
    if missing:
        have = ", ".join(f"{p} (version {v})" for p, v in sorted(found.items(), key=lambda item: item[1]))
        raise NotFoundError(
            f"model '{entry.name}' has no {', '.join(missing)} version; it has {have}."
            f" Make one with forwardpass optimize"
        )
    return {precision: found[precision] for precision in precisions}
