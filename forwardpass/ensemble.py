"""Pipelines of models declared in config (Triton's ensemble): a model folder whose config.yaml has `pipeline:` and
no version folders. The first step finds regions in the image (`detection` boxes or `text_detection` quadrilaterals);
each later step runs on every region's crop, cut upright from the original image, all regions of all images in the
step's own batches; a classifier step may turn crops 180 degrees for the steps after it. The answer is
{"regions": [...]}: each region's box, its detection score (`box_score`) and every later step's answer (merged, or
under the step's `key`). Each step is an ordinary model of the same repository, loaded and checked as such."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from forwardpass.config import (
    ClassificationConfig,
    DetectionConfig,
    ImageConfig,
    ModelConfig,
    StepConfig,
    TextDetectionConfig,
)
from forwardpass.errors import ConfigError, DecodeError, ForwardpassError, NotFoundError, UnsafePathError
from forwardpass.model import Model, load
from forwardpass.pipeline import Prediction
from forwardpass.pipeline.detection import Detect
from forwardpass.pipeline.ocr import DetectText, crop_quad
from forwardpass.repository import CONFIG_FILE, declares_pipeline, default_repository, lies_in
from forwardpass.tensor import FLOATS, TensorSpec

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "Ensemble",
    "apply_answer",
    "check_steps",
    "cut_regions",
    "find_pipeline",
    "load_pipeline",
    "pipelines_in",
    "step_failed",
    "unready",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a repository name, as forwardpass.repository allows


def find_pipeline(model: str | Path, repository: str | Path | None = None) -> Path | None:
    """The folder of `model` when it is a pipeline (a folder, or a name in the repository), else None."""
    folder = Path(model) if repository is None and Path(model).is_dir() else None
    if folder is None and _NAME.fullmatch(str(model)) and ".." not in str(model):  # never a path out of the root
        root = Path(repository) if repository is not None else default_repository()
        folder = root / str(model)
        if not lies_in(folder / CONFIG_FILE, root.resolve()):  # as a model's config
            raise UnsafePathError(f"'{model}': its {CONFIG_FILE} points outside the repository '{root}'; refused")
    if folder is None:
        return None
    return folder if declares_pipeline(folder) else None


def pipelines_in(repository: Path) -> list[str]:
    """The names of the pipelines in a repository."""
    folders = (path for path in repository.iterdir() if path.is_dir() and not path.name.startswith("."))
    return sorted(folder.name for folder in folders if _inside_pipeline(folder.name, repository))


def _inside_pipeline(name: str, repository: Path) -> bool:
    try:
        return find_pipeline(name, repository) is not None
    except UnsafePathError:  # named when asked for; a listing leaves it out
        return False


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
        check_steps(name, self.plan, steps)
        first = steps[0]
        self.image_config: ImageConfig = first.config.preprocess  # type: ignore[assignment]  # _check made sure
        self.config = config.model_copy(update={"preprocess": self.image_config})  # how the CLI reads inputs
        self.inputs = first.inputs
        self.batch_size = first.batch_size
        self.whole_items = False  # it reads images, never arrays whose first axis might be no batch

    def __repr__(self) -> str:
        return f"Ensemble({self.name!r}, steps={[step.name for step in self.steps]})"

    # A list or tuple matches both signatures; the first wins, as the isinstance check below decides at run time.
    @overload
    def predict(  # type: ignore[overload-overlap]
        self, raw: list[Any] | tuple[Any, ...], *, top_k: int | None = None
    ) -> list[Prediction]: ...

    @overload
    def predict(self, raw: object, *, top_k: int | None = None) -> Prediction: ...

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
                outcomes[i] = step_failed(self.name, 1, self.steps[0].name, outcome)
                continue
            outcomes[i] = {"regions": []}
            regions += [(i, region, crop) for region, crop in cut_regions(images[i], outcome)]
        for number, (step, model) in enumerate(zip(self.plan[1:], self.steps[1:], strict=True), start=2):
            answers = _by_aspect(model, [crop for _, _, crop in regions])
            kept = []
            for (i, region, crop), answer in zip(regions, answers, strict=True):
                if isinstance(answer, ForwardpassError):
                    outcomes[i] = step_failed(self.name, number, model.name, answer)
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
        from PIL import Image  # Pillow only when a pipeline runs: a server of models that take no images never does

        from forwardpass.pipeline.image import decode_image

        if not isinstance(raw, str | Path | bytes | Image.Image):
            raise DecodeError(f"expected an image (file path, bytes or PIL image), got {type(raw).__name__}")
        return decode_image(raw, self.image_config.max_pixels).convert("RGB")


def step_failed(pipeline: str, number: int, model: str, error: ForwardpassError) -> ForwardpassError:
    """`error`, of its own class (so its status), saying which step of the pipeline raised it: "the model answered
    NaN" alone does not say which of the pipeline's models did."""
    try:
        named = type(error)(f"pipeline '{pipeline}' step {number} ({model}): {error}")
    except TypeError:  # a class whose constructor takes more than the message: kept as raised
        return error
    named.__dict__.update(error.__dict__)
    return named


def unready(name: str, plan: list[StepConfig], loaded: Callable[[str], Model | None]) -> str | None:
    """Why the pipeline cannot run on the models `loaded` gives by name (a step's model missing, or one that does
    not take what the step before gives), else None."""
    steps = []
    for number, step in enumerate(plan, start=1):
        model = loaded(step.model)
        if model is None:
            return f"pipeline '{name}' step {number}: model '{step.model}' is not loaded"
        steps.append(model)
    try:
        check_steps(name, plan, steps)
    except ConfigError as exc:
        return str(exc)
    return None


def check_steps(name: str, plan: list[StepConfig], steps: list[Model]) -> None:
    """Each step's model must take what the step gives it: refused at load, naming both steps and their tensors."""
    first = steps[0]
    if not isinstance(first.config.preprocess, ImageConfig):
        raise ConfigError(f"pipeline '{name}' step 1 ({first.name}) must take images (preprocess kind image)")
    if not isinstance(first.config.postprocess, DetectionConfig | TextDetectionConfig):
        raise ConfigError(
            f"pipeline '{name}' step 1 ({first.name}) must find regions (postprocess kind detection or "
            f"text_detection) for step 2 ({steps[1].name}) to crop"
        )
    found = _region_outputs(first)
    gives = f"step 1 ({first.name}) output {' and '.join(_describe(spec) for spec in found)}"
    for spec in found:
        if spec.dtype not in FLOATS or len(spec.shape) < 2:
            raise ConfigError(
                f"pipeline '{name}': {gives} cannot hold regions (a floating-point map or rows of boxes) for step 2 "
                f"({steps[1].name}) to crop"
            )
    for number, (step, model) in enumerate(zip(plan, steps, strict=True), start=1):
        if number > 1:
            misfit = _crop_misfit(model)
            if misfit is not None:
                raise ConfigError(
                    f"pipeline '{name}': {gives} gives image crops that step {number} ({model.name}) cannot take: "
                    f"{misfit}"
                )
        if step.rotate_label is not None and not isinstance(model.config.postprocess, ClassificationConfig):
            raise ConfigError(f"pipeline '{name}' step {number} ({model.name}): rotate_label needs a classifier")


def _region_outputs(model: Model) -> list[TensorSpec]:
    """The outputs the first step's regions are read from (the ones its detection postprocessing names)."""
    reader = model.pipeline.postprocess
    names = reader.outputs if isinstance(reader, Detect) else (reader.output,) if isinstance(reader, DetectText) else ()
    return [spec for spec in model.outputs if spec.name in names]


def _crop_misfit(model: Model) -> str | None:
    """Why a crop (an RGB image of any size) cannot become this model's input, or None when it can."""
    pre = model.config.preprocess
    if not isinstance(pre, ImageConfig):
        return f"its input '{model.inputs[0].name}' has no image preprocessing (preprocess kind image)"
    fed = {pre.input or model.inputs[0].name, *model.config.constants}
    unfed = [spec.name for spec in model.inputs if spec.name not in fed]
    if unfed:
        return f"it also needs input(s) {unfed}, which a crop does not give"
    # (a datatype its preprocessing cannot feed is refused by the model's own load)
    spec = next(spec for spec in model.inputs if spec.name == (pre.input or model.inputs[0].name))
    if len(spec.shape) != 4:
        return f"input {_describe(spec)}, but crops are batched as [batch, {_AXES[pre.layout]}] (rank 4)"
    height, width = _crop_size(pre)
    axes = (2, 3) if pre.layout == "NCHW" else (1, 2)
    for axis, side, what in zip(axes, (height, width), ("height", "width"), strict=True):
        fixed = spec.shape[axis]
        if fixed != -1 and side != fixed:
            made_side = "each crop's own" if side is None else str(side)
            return (
                f"input {_describe(spec)} takes {what} {fixed}, but its preprocessing makes a crop's {what} "
                f"{made_side} (set preprocess resize, letterbox or text_line)"
            )
    return None


_AXES = {"NCHW": "channels, height, width", "NHWC": "height, width, channels"}


def _crop_size(pre: ImageConfig) -> tuple[int | None, int | None]:
    """(height, width) every crop has after this preprocessing; None where it follows the crop."""
    if pre.letterbox is not None:
        return pre.letterbox
    if pre.text_line is not None:
        return pre.text_line[0], pre.text_line[1] if pre.text_line_overflow == "squeeze" else None
    if pre.crop is not None:
        return (pre.crop, pre.crop) if isinstance(pre.crop, int) else pre.crop
    if isinstance(pre.resize, tuple):
        return pre.resize
    return None, None


def _describe(spec: TensorSpec) -> str:
    return f"'{spec.name}' ({spec.dtype.name} {list(spec.shape)})"


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
        from PIL import Image

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
        from PIL import Image

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
