"""docs/config.md is the config reference as the code makes it, and the code describes every field it has."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

import forwardpass.config
from forwardpass.config_reference import reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"
MODELS = [
    model
    for model in vars(forwardpass.config).values()
    if isinstance(model, type) and issubclass(model, BaseModel) and model.__module__ == forwardpass.config.__name__
]


def test_docs_config_md_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == reference(), (
        "docs/config.md is out of date; regenerate it: python -m forwardpass.config_reference > docs/config.md"
    )


def test_every_field_of_every_config_model_is_described() -> None:
    assert len(MODELS) > 20
    undescribed = [
        f"{model.__name__}.{name}"
        for model in MODELS
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not undescribed, f"give these fields Field(description=...) in forwardpass/config.py: {undescribed}"
