"""Pipelines of models behind one endpoint (`POST /v2/models/<pipeline>/predict`), as Triton runs an ensemble: each
step is a model the server already serves, and every crop of a step is its own request to that model's batcher, so
crops of one image and of concurrent requests share forward passes. The regions and their answers are assembled by
`forwardpass.ensemble`'s helpers, as in-process pipelines assemble them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from forwardpass.config import ImageConfig, ModelConfig, PipelineConfig
from forwardpass.ensemble import apply_answer, cut_regions, find_pipeline, pipelines_in, step_failed, unready
from forwardpass.errors import ConfigError, DecodeError, ForwardpassError
from forwardpass.model import Model
from forwardpass.pipeline import Prediction
from forwardpass.repository import CONFIG_FILE

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Pipelines", "ServedModel", "StepPredict"]

T = TypeVar("T")

# (model name, one item, request parameters) → that model's answer, through its batcher
StepPredict = Callable[[str, object, dict[str, Any]], Awaitable[Any]]
# a model's name → the model the server serves under it, or None when it serves none
ServedModel = Callable[[str], Model | None]


class Pipelines:
    """The pipelines of a repository, read when first asked for (and again when their config.yaml changes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._read: dict[str, tuple[int, PipelineConfig]] = {}

    def find(self, name: str) -> PipelineConfig | None:
        folder = find_pipeline(name, self.root)
        if folder is None:
            return None
        changed = (folder / CONFIG_FILE).stat().st_mtime_ns
        known = self._read.get(name)
        if known is None or known[0] != changed:
            pipeline = ModelConfig.from_file(folder / CONFIG_FILE).pipeline
            assert pipeline is not None  # find_pipeline checked
            known = self._read[name] = (changed, pipeline)
        return known[1]

    def index(self, served: ServedModel) -> list[dict[str, Any]]:
        """Rows of Triton's repository index for the pipelines, each with its steps."""
        rows = []
        for name in pipelines_in(self.root):
            try:
                pipeline = self.find(name)
            except ConfigError as exc:  # this pipeline's refusal, not the index's: the others are listed
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": str(exc), "steps": []})
                continue
            if pipeline is None:  # removed since listed
                continue
            reason = unready(name, pipeline.steps, served)
            state = "READY" if reason is None else "UNAVAILABLE"
            steps = [step.model for step in pipeline.steps]
            rows.append({"name": name, "version": "", "state": state, "reason": reason or "", "steps": steps})
        return rows

    def metadata(self, name: str, pipeline: PipelineConfig, served: ServedModel) -> dict[str, Any]:
        """KServe's model metadata for a pipeline (Triton's platform "ensemble"): no tensors of its own (it answers
        images on /predict only), its steps, and whether it is ready."""
        reason = unready(name, pipeline.steps, served)
        return {
            "name": name,
            "versions": [],
            "platform": "ensemble",
            "inputs": [],
            "outputs": [],
            "steps": [{"model": step.model, "ready": served(step.model) is not None} for step in pipeline.steps],
            "ready": reason is None,
            **({"reason": reason} if reason else {}),
        }

    async def predict(
        self,
        name: str,
        pipeline: PipelineConfig,
        first: Model,
        raw: object,
        parameters: dict[str, Any],
        step: StepPredict,
    ) -> Prediction:
        """An image's regions, each with every later step's answer (the first error fails the request)."""
        if not isinstance(raw, bytes):
            raise DecodeError(f"pipeline '{name}' takes an image: send its bytes (Content-Type image/*)")
        if not isinstance(first.config.preprocess, ImageConfig):
            raise ConfigError(f"pipeline '{name}' step 1 ({first.name}) must take images (preprocess kind image)")
        from forwardpass.pipeline.image import decode_image  # Pillow only when a pipeline of image models is asked

        max_pixels = first.config.preprocess.max_pixels
        image = await asyncio.to_thread(lambda: decode_image(raw, max_pixels).convert("RGB"))
        found = await _named(name, 1, pipeline.steps[0].model, step(pipeline.steps[0].model, image, parameters))
        regions: list[tuple[dict[str, Any], Image.Image]] = await asyncio.to_thread(cut_regions, image, found)
        for number, declared in enumerate(pipeline.steps[1:], start=2):
            answers = await _named(
                name, number, declared.model, asyncio.gather(*(step(declared.model, crop, {}) for _, crop in regions))
            )
            kept = []
            for (region, crop), answer in zip(regions, answers, strict=True):
                following = apply_answer(declared, region, crop, answer)
                if following is not None:
                    kept.append((region, following))
            regions = kept
        return {"regions": [region for region, _ in regions]}


async def _named(pipeline: str, number: int, model: str, answer: Awaitable[T]) -> T:
    """`answer` awaited, a forwardpass error naming the step that raised it (see `step_failed`)."""
    try:
        return await answer
    except ForwardpassError as exc:
        raise step_failed(pipeline, number, model, exc) from None
