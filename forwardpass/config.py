"""A model's declarative config (`<repository>/<model>/config.yaml`): tensors, pre/postprocessing, engine, batching.

Every field is optional: an ONNX model with no config is completed from the model itself (like Triton's
auto-complete). Errors name the file, the field and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forwardpass.errors import ConfigError

__all__ = [
    "ClassificationConfig",
    "EmbeddingConfig",
    "EngineConfig",
    "ImageConfig",
    "ModelConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "RawConfig",
    "RegressionConfig",
    "TabularColumn",
    "TabularConfig",
    "TensorConfig",
    "TextConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    name: str
    datatype: str | None = None
    shape: list[int] | None = None
    allow_nonfinite: bool = True


class ImageConfig(_Strict):
    kind: Literal["image"]
    input: str | None = None
    color: Literal["RGB", "L"] = "RGB"
    resize: int | tuple[int, int] | None = Field(
        default=None, description="int: shorter side to this size, keeping aspect; [height, width]: exact size"
    )
    crop: int | tuple[int, int] | None = Field(default=None, description="center crop: int (square) or [h, w]")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    scale: float = 1.0 / 255.0
    mean: list[float] = [0.0]
    std: list[float] = [1.0]
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    datatype: str = "FP32"
    max_pixels: int = Field(default=50_000_000, gt=0, description="refuse decoded images larger than this")


class TextConfig(_Strict):
    kind: Literal["text"]
    tokenizer: str = "tokenizer.json"
    max_length: int = Field(default=512, gt=0)
    padding: Literal["longest", "max_length"] = "longest"
    inputs: dict[Literal["input_ids", "attention_mask", "token_type_ids"], str] = {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
    }


class TabularColumn(_Strict):
    name: str
    transform: Literal["none", "standard", "minmax"] = "none"
    mean: float = 0.0
    std: float = 1.0
    min: float = 0.0
    max: float = 1.0
    impute: float | str | None = Field(default=None, description="value used when the column is missing or empty")
    categories: list[str] | None = Field(default=None, description="one-hot encode into len(categories) features")

    @model_validator(mode="after")
    def _check_scales(self) -> TabularColumn:
        if self.transform == "standard" and self.std == 0:
            raise ValueError("std must not be 0 for transform: standard")
        if self.transform == "minmax" and self.max == self.min:
            raise ValueError("max must differ from min for transform: minmax")
        return self


class TabularConfig(_Strict):
    kind: Literal["tabular"]
    input: str | None = None
    datatype: str = "FP32"
    columns: list[TabularColumn] = Field(min_length=1)


PreprocessConfig = Annotated[ImageConfig | TextConfig | TabularConfig, Field(discriminator="kind")]


class ClassificationConfig(_Strict):
    kind: Literal["classification"]
    output: str | None = None
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    labels: str | list[str] | None = Field(default=None, description="a file in the model folder, or a list")
    top_k: int = Field(default=5, gt=0)


class TargetScaling(_Strict):
    transform: Literal["standard", "minmax"]
    mean: float = 0.0
    std: float = 1.0
    min: float = 0.0
    max: float = 1.0


class RegressionConfig(_Strict):
    kind: Literal["regression"]
    output: str | None = None
    target: TargetScaling | None = None


class EmbeddingConfig(_Strict):
    kind: Literal["embedding"]
    output: str | None = None
    pooling: Literal["mean", "cls", "none"] = "none"
    mask: str = Field(default="attention_mask", description="input tensor whose 1s mark tokens for mean pooling")
    normalize: bool = False


class RawConfig(_Strict):
    kind: Literal["raw"]


PostprocessConfig = Annotated[
    ClassificationConfig | RegressionConfig | EmbeddingConfig | RawConfig, Field(discriminator="kind")
]


class EngineConfig(_Strict):
    intra_op_threads: int = Field(default=0, ge=0, description="0: ONNX Runtime's default (one per core)")
    inter_op_threads: int = Field(default=0, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    providers: Literal["auto"] | list[str] = "auto"
    warmup: int = Field(default=1, ge=0, description="forward passes run on load so the first request is not slow")


class ModelConfig(_Strict):
    description: str = ""
    max_batch_size: int = Field(default=0, ge=0, description="0: no server-side batching")
    inputs: list[TensorConfig] = []
    outputs: list[TensorConfig] = []
    preprocess: PreprocessConfig | None = None
    postprocess: PostprocessConfig | None = None
    engine: EngineConfig = EngineConfig()
    precision: Literal["fp64", "fp32", "fp16", "bf16", "int8", "int4", "mixed"] = "fp32"

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" line {where.line + 1}" if where else ""
            raise ConfigError(f"{path}:{line} is not valid YAML; fix the syntax") from None
        return cls.from_dict(data or {}, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<config>") -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of fields at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_describe(exc, data)}") from None


_KINDS = {
    "preprocess": "'image', 'text', 'tabular'",
    "postprocess": "'classification', 'regression', 'embedding', 'raw'",
}


def _field(loc: tuple[int | str, ...], data: Any) -> str:
    """The error's place as the YAML spells it: pydantic adds levels of its own for a tagged union's tag
    ('preprocess.image.resize') and for a union's member types ('resize.int'); neither is in the file."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue  # the tag of a tagged union
        if not isinstance(node, dict | list):
            break  # below a value: the names of union members
        parts.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        else:
            node = node[part] if isinstance(part, int) and 0 <= part < len(node) else None
    return ".".join(parts)


def _describe(exc: ValidationError, data: Any) -> str:
    """The first error as 'field <dotted.path>: problem; fix'."""
    error = exc.errors()[0]
    field = _field(error["loc"], data) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        fix = "remove it or check its spelling"
    elif kind == "missing":
        fix = "add it"
    elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
        tags = error.get("ctx", {}).get("expected_tags") or _KINDS.get(field, "the documented kinds")
        fix = f"set kind to one of {tags}"
    else:
        fix = f"got {error.get('input')!r}"
    return f"field '{field}': {error['msg']}; {fix}"
