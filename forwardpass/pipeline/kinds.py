"""Input kinds: what a model's raw input is (an image, a text, a record, a history of items, a sound, tensors as
they are), declared once. Every mode asks `kind_of(config)` instead of testing config classes: the pipeline builds
the kind's preprocessor, the CLI and batch jobs pick the kind's reader by its name, the server reads a request's
body and lists the way the kind says.

A new kind: its config section (config.py), its entry here and its preprocessor (pipeline/), and a reader in each
mode that reads files (cli/inputs.py, modes/sources.py) where the default ones do not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from forwardpass.config import AudioConfig, ImageConfig, InteractionsConfig, ModelConfig, TabularConfig, TextConfig

__all__ = ["KINDS", "InputKind", "kind_of"]


@dataclass(frozen=True, slots=True)
class InputKind:
    name: Literal["image", "text", "tabular", "interactions", "audio", "tensor"]
    section: type[BaseModel] | None  # its `preprocess:` section in config.yaml; None: tensors as they are
    lists: Literal["records", "texts", "rows"]  # what a JSON list sent to /predict holds, one item each
    # A text item may name a file where the caller is local (the CLI's image and sound paths); over the network it
    # never may
    file_items: bool = False


KINDS: tuple[InputKind, ...] = (
    InputKind("image", ImageConfig, "records", file_items=True),
    InputKind("text", TextConfig, "texts"),
    InputKind("tabular", TabularConfig, "records"),
    InputKind("interactions", InteractionsConfig, "records"),
    InputKind("audio", AudioConfig, "records", file_items=True),
    InputKind("tensor", None, "rows"),
)
_BY_SECTION = {kind.section: kind for kind in KINDS}


def kind_of(config: ModelConfig) -> InputKind:
    """The kind of input a model with this config takes."""
    return _BY_SECTION[type(config.preprocess) if config.preprocess is not None else None]
