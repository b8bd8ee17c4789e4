"""Pipelines of models declared in config (Triton's ensemble): a model folder whose config.yaml has `pipeline:` and
no version folders. The first step finds regions in the image (`detection` boxes or `text_detection` quadrilaterals);
each later step runs on every region's crop, cut upright from the original image, all regions of all images in the
step's own batches; a classifier step may turn crops 180 degrees for the steps after it. The answer is
{"regions": [...]}: each region's box, its detection score (`box_score`) and every later step's answer (merged, or
under the step's `key`). Each step is an ordinary model of the same repository, loaded and checked as such."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from forwardpass.config import (
    ClassificationConfig,
    DetectionConfig,
    ImageConfig,
    ModelConfig,
    StepConfig,
    TextDetectionConfig,
)
from forwardpass.errors import ConfigError, DecodeError, ForwardpassError, NotFoundError
from forwardpass.model import Model, load
from forwardpass.pipeline import Prediction
from forwardpass.pipeline.image import decode_image
from forwardpass.pipeline.ocr import crop_quad
from forwardpass.repository import CONFIG_FILE, default_repository

__all__ = ["Ensemble", "apply_answer", "cut_regions", "find_pipeline", "load_pipeline"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a repository name, as forwardpass.repository allows


def find_pipeline(model: str | Path, repository: str | Path | None = None) -> Path | None:
    """The folder of `model` when it is a pipeline (a folder, or a name in the repository), else None."""
    folder = Path(model) if repository is None and Path(model).is_dir() else None
    if folder is None and _NAME.fullmatch(str(model)) and ".." not in str(model):  # never a path out of the root
        folder = Path(repository) if repository is not None else default_repository()
        folder = folder / str(model)
    if folder is None or not (folder / CONFIG_FILE).is_file():
        return None
    return folder if ModelConfig.from_file(folder / CONFIG_FILE).pipeline is not None else None


def load_pipeline(model: str | Path, repository: str | Path | None = None, **engine_options: Any) -> Ensemble:
    """The pipeline `model` (a folder, or a name in the repository), each step loaded from the repository that
    holds it; `engine_options` as `forwardpass.load`'s, for every step."""
    folder = find_pipeline(model, repository)
    if folder is None:
        raise NotFoundError(f"'{model}' is not a pipeline (a model folder whose config.yaml declares pipeline:)")
    config = ModelConfig.from_file(folder / CONFIG_FILE)
    assert config.pipeline is not None
    steps: list[Model] = []
    try:
        for number, step in enumerate(config.pipeline.steps, start=1):
            try:
                steps.append(load(step.model, repository=folder.parent, **engine_options))
            except NotFoundError as exc:
                raise NotFoundError(f"pipeline '{folder.name}' step {number}: {exc}") from None
        return Ensemble(folder.name, config, steps)
    except BaseException:
        for loaded in steps:
            loaded.close()
        raise


class Ensemble:
    """Quacks like `Model` where a caller only predicts: `predict`, `predict_each`, `config`, `inputs`, `close`."""

    def __init__(self, name: str, config: ModelConfig, steps: list[Model]) -> None:
        assert config.pipeline is not None
        self.name = name
        self.version = None
        self.plan = config.pipeline.steps
        self.steps = steps
        _check(name, self.plan, steps)
        first = steps[0]
        self.image_config: ImageConfig = first.config.preprocess  # type: ignore[assignment]  # _check made sure
        self.config = config.model_copy(update={"preprocess": self.image_config})  # how the CLI reads inputs
        self.inputs = first.inputs
        self.batch_size = first.batch_size
        self.whole_items = False  # it reads images, never arrays whose first axis might be no batch

    def __repr__(self) -> str:
        return f"Ensemble({self.name!r}, steps={[step.name for step in self.steps]})"

    def predict(self, raw: object, *, top_k: int | None = None) -> Prediction | list[Prediction]:
        raws: Sequence[object] = raw if isinstance(raw, list | tuple) else [raw]
        outcomes = self.predict_each(raws, top_k=top_k)
        for outcome in outcomes:
            if isinstance(outcome, ForwardpassError):
                raise outcome
        predictions = [outcome for outcome in outcomes if not isinstance(outcome, ForwardpassError)]
        return predictions if isinstance(raw, list | tuple) else predictions[0]

    def predict_each(self, raws: Sequence[object], *, top_k: int | None = None) -> list[Prediction | ForwardpassError]:
        """One outcome per image: {"regions": [...]}, or the error that image alone causes."""
        outcomes: list[Prediction | ForwardpassError] = []
        images: dict[int, Image.Image] = {}
        for i, raw in enumerate(raws):
            try:
                images[i] = self._decode(raw)
                outcomes.append({})
            except ForwardpassError as exc:
                outcomes.append(exc)
        found = self.steps[0].predict_each(list(images.values()), top_k=top_k)
        regions: list[tuple[int, dict[str, Any], Image.Image]] = []  # (item, region, its crop)
        for i, outcome in zip(images, found, strict=True):
            if isinstance(outcome, ForwardpassError):
                outcomes[i] = outcome
                continue
            outcomes[i] = {"regions": []}
            regions += [(i, region, crop) for region, crop in cut_regions(images[i], outcome)]
        for step, model in zip(self.plan[1:], self.steps[1:], strict=True):
            answers = _by_aspect(model, [crop for _, _, crop in regions])
            kept = []
            for (i, region, crop), answer in zip(regions, answers, strict=True):
                if isinstance(answer, ForwardpassError):
                    outcomes[i] = answer
                    continue
                following = apply_answer(step, region, crop, answer)
                if following is not None:
                    kept.append((i, region, following))
            regions = kept
        for i, region, _ in regions:
            outcome = outcomes[i]
            if isinstance(outcome, dict):
                outcome["regions"].append(region)
        return outcomes

    def close(self) -> None:
        for model in self.steps:
            model.close()

    def _decode(self, raw: object) -> Image.Image:
        if not isinstance(raw, str | Path | bytes | Image.Image):
            raise DecodeError(f"expected an image (file path, bytes or PIL image), got {type(raw).__name__}")
        return decode_image(raw, self.image_config.max_pixels).convert("RGB")


def _check(name: str, plan: list[StepConfig], steps: list[Model]) -> None:
    """Each step's model must take what the step gives it: refused at load, naming the step and the model."""
    first = steps[0].config
    if not isinstance(first.preprocess, ImageConfig):
        raise ConfigError(f"pipeline '{name}' step 1 ({steps[0].name}) must take images (preprocess kind image)")
    if not isinstance(first.postprocess, DetectionConfig | TextDetectionConfig):
        raise ConfigError(
            f"pipeline '{name}' step 1 ({steps[0].name}) must find regions (postprocess kind detection or "
            f"text_detection) for step 2 ({steps[1].name}) to crop"
        )
    for number, (step, model) in enumerate(zip(plan, steps, strict=True), start=1):
        if number > 1 and not isinstance(model.config.preprocess, ImageConfig):
            raise ConfigError(
                f"pipeline '{name}' step {number} ({model.name}) takes crops of step 1's regions, but its input "
                f"'{model.inputs[0].name}' has no image preprocessing (preprocess kind image)"
            )
        if step.rotate_label is not None and not isinstance(model.config.postprocess, ClassificationConfig):
            raise ConfigError(f"pipeline '{name}' step {number} ({model.name}): rotate_label needs a classifier")


def cut_regions(image: Image.Image, found: Prediction) -> list[tuple[dict[str, Any], Image.Image]]:
    """The first step's regions in `image` (its answer `found`), each with its crop."""
    pixels = np.asarray(image)
    return [(region, _crop(image, pixels, region)) for region in _regions(found)]


def apply_answer(step: StepConfig, region: dict[str, Any], crop: Image.Image, answer: Prediction) -> Image.Image | None:
    """The step's answer recorded in its region (merged, or under the step's key); the crop the next steps get
    (turned when the step says so), or None when the answer's score drops the region."""
    if step.key is None:
        region.update(answer)
    else:
        region[step.key] = answer
    if step.min_score is not None and float(answer.get("score", 0.0)) < step.min_score:
        return None
    if step.rotate_label is not None and _turned(step, answer):
        return crop.transpose(Image.Transpose.ROTATE_180)
    return crop


def _regions(found: Prediction) -> list[dict[str, Any]]:
    """The first step's regions: text boxes ({"points"}) or detections ({"box", "label", ...}), score renamed."""
    listed: list[dict[str, Any]] = found["boxes"] if "boxes" in found else found["detections"]
    regions = []
    for item in listed:
        region = {key: value for key, value in item.items() if key != "score"}
        region["box_score"] = item["score"]
        regions.append(region)
    return regions


def _crop(image: Image.Image, pixels: np.ndarray, region: dict[str, Any]) -> Image.Image:
    if "points" in region:
        return Image.fromarray(np.ascontiguousarray(crop_quad(pixels, np.asarray(region["points"]))))
    x1, y1, x2, y2 = (round(value) for value in region["box"])
    return image.crop((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)))


def _by_aspect(model: Model, crops: list[Image.Image]) -> list[Prediction | ForwardpassError]:
    """The model's answer for each crop, the crops batched in order of aspect ratio (as PaddleOCR does: lines of a
    batch are padded to the widest, so similar widths waste the least)."""
    order = np.argsort(np.asarray([crop.width / crop.height for crop in crops]))
    answers: list[Prediction | ForwardpassError] = [{} for _ in crops]
    for position, answer in zip(order, model.predict_each([crops[i] for i in order]), strict=True):
        answers[position] = answer
    return answers


def _turned(step: StepConfig, answer: Prediction) -> bool:
    return bool(answer.get("label") == step.rotate_label and float(answer.get("score", 0.0)) > step.rotate_min_score)
