"""The config reference (docs/config.md), made from the config schema itself so that it cannot drift from the code:
every field of `config.yaml` with its type, default and description.

    python -m forwardpass.config_reference > docs/config.md      (tests/test_config_reference.py checks it is current)
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from forwardpass.config import ModelConfig

__all__ = ["reference"]

INTRO = """# config.yaml reference

Generated from `forwardpass/config.py` by `python -m forwardpass.config_reference`; do not edit by hand.

Every field is optional unless marked **required**. What a config leaves out is inferred from the model where the
model records it (`forwardpass init MODEL` writes the inferred config with why), and the result is checked against
the model when it loads: a field that does not fit is refused with the fix.
"""


def reference() -> str:
    paths: dict[type[BaseModel], list[str]] = {}
    _collect(ModelConfig, "", paths)
    return "\n".join([INTRO, *(_section(model, where) for model, where in paths.items())])


def _collect(model: type[BaseModel], path: str, paths: dict[type[BaseModel], list[str]]) -> None:
    """Every section, in the order a reader meets it, with every path that leads to it (one table each)."""
    if model in paths:
        paths[model].append(path)
        return
    paths[model] = [path]
    for name, field in model.model_fields.items():
        for inner in _models_in(field.annotation):
            _collect(inner, f"{path}.{name}" if path else name, paths)


def _section(model: type[BaseModel], where: list[str]) -> str:
    tag = _kind_tag(model)
    title = ", ".join(path or "(top level)" for path in where) + (f" ({tag})" if tag else "")
    lines = [f"## {title}", ""]
    doc = (model.__doc__ or "").strip()
    if doc and model.__module__ == "forwardpass.config":
        lines += [" ".join(doc.split()), ""]
    lines += ["| field | type | default | what it does |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = _type_name(field.annotation)
        default = "**required**" if field.is_required() else _default(field.default, field.default_factory)
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {default} | {description} |")
    return "\n".join(lines) + "\n"


def _kind_tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    return f"kind: {get_args(field.annotation)[0]}"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(get_args(annotation)[0])
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in get_args(annotation))
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(arg) for arg in get_args(annotation) if arg is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        tag = _kind_tag(annotation)
        return f"{tag} section" if tag else "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(value: Any, factory: Any) -> str:
    if value is PydanticUndefined:
        value = factory() if factory is not None else None
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if value is None:
        return "—"
    return f"`{value!r}`".replace("|", "\\|")


if __name__ == "__main__":
    sys.stdout.write(reference())
