"""`Model` = config + pipeline + session: the one object every mode (CLI, API, server, batch, stream) calls."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from forwardpass.backends import open_session
from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig, ModelConfig
from forwardpass.errors import ConfigError, ForwardpassError, InputError, NotFoundError, ShapeError
from forwardpass.pipeline import Arrays, Pipeline, Prediction
from forwardpass.repository import CONFIG_FILE, ModelEntry, Repository, default_repository, find_artefact, versions_in
from forwardpass.tensor import TensorSpec

__all__ = ["Model", "load", "locate"]

# Items per forward pass in offline `predict` when the config sets no max_batch_size.
DEFAULT_PREDICT_BATCH = 32


class Model:
    def __init__(self, entry: ModelEntry, config: ModelConfig, session: Session, engine: EngineConfig) -> None:
        self.entry = entry
        self.engine = engine  # the effective engine options: the config's `engine:` plus load()'s overrides
        self.name = entry.name
        self.version = entry.version
        self.config = config
        self.session = session
        self.inputs = _apply_overrides(session.inputs, config)
        self.outputs = session.outputs
        self._input_specs = {spec.name: spec for spec in self.inputs}
        self._item_specs = {spec.name: spec.unbatched() for spec in self.inputs}
        self.pipeline = Pipeline(config, self.inputs, self.outputs, entry.directory)
        batchable = all(spec.shape and spec.shape[0] == -1 for spec in self.inputs)
        self.batch_size = (config.max_batch_size or DEFAULT_PREDICT_BATCH) if batchable else 1

    def __repr__(self) -> str:
        return f"Model({self.name!r}, version={self.version}, providers={self.session.providers})"

    def infer(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """The forward pass alone: {input name: batch array} → {output name: batch array}, inputs validated."""
        return self.session.run(self._validate(inputs, self._input_specs))

    def preprocess(self, raw: object) -> Arrays:
        """One raw item (image path/bytes, text, record, array) → validated arrays without the batch dimension."""
        return self._validate(self.pipeline.preprocess(raw), self._item_specs)

    def run_items(self, items: Sequence[Arrays], batch_size: int | None = None) -> list[tuple[Arrays, Arrays]]:
        """Preprocessed items → forward passes of at most `batch_size` (default: the model's) → (outputs row,
        inputs row) per item."""
        size = batch_size or self.batch_size
        rows: list[tuple[Arrays, Arrays]] = []
        for start in range(0, len(items), size):
            batch = self.pipeline.collate(items[start : start + size])
            outputs = self.session.run(batch)
            count = len(next(iter(batch.values())))
            if any(len(value) != count for value in outputs.values()):
                shapes = {name: list(value.shape) for name, value in outputs.items()}
                raise ShapeError(f"model '{self.name}' gave outputs {shapes} for {count} items: it has no batch dim")
            for i in range(count):
                rows.append(({k: v[i] for k, v in outputs.items()}, {k: v[i] for k, v in batch.items()}))
        return rows

    def predict(self, raw: object, *, top_k: int | None = None) -> Prediction | list[Prediction]:
        """The whole pipeline. One raw item gives one prediction; a list or tuple of items gives a list. The first
        bad item raises its error; `predict_each` gives every item its own outcome instead."""
        raws: Sequence[object] = raw if isinstance(raw, list | tuple) else [raw]
        predictions = []
        for outcome in self.predict_each(raws, top_k=top_k):
            if isinstance(outcome, ForwardpassError):
                raise outcome
            predictions.append(outcome)
        return predictions if isinstance(raw, list | tuple) else predictions[0]

    def predict_each(self, raws: Sequence[object], *, top_k: int | None = None) -> list[Prediction | ForwardpassError]:
        """One outcome per raw item, in order: its prediction, or the error that item alone causes. A bad item
        never fails its neighbours: items are preprocessed alone, and a failed batch is retried item by item."""
        outcomes: list[Prediction | ForwardpassError] = [{} for _ in raws]
        ready: dict[int, Arrays] = {}
        for i, raw in enumerate(raws):
            try:
                ready[i] = self.preprocess(raw)
            except ForwardpassError as exc:
                outcomes[i] = exc
        for i, outcome in zip(ready, self._forward(list(ready.values()), top_k), strict=True):
            outcomes[i] = outcome
        return outcomes

    def _forward(self, items: list[Arrays], top_k: int | None) -> list[Prediction | ForwardpassError]:
        if not items:
            return []
        try:
            return [self.pipeline.postprocess(out, inp, top_k) for out, inp in self.run_items(items)]
        except ForwardpassError as exc:
            if len(items) == 1:
                return [exc]
        # A failed batch (e.g. items of different shapes) blames no item by itself: each runs alone to find it.
        return [self._forward([item], top_k)[0] for item in items]

    def close(self) -> None:
        self.session.close()

    def _validate(self, arrays: dict[str, Any], specs: dict[str, TensorSpec]) -> Arrays:
        if arrays.keys() != specs.keys():
            unknown = arrays.keys() - specs.keys()
            missing = specs.keys() - arrays.keys()
            problem = f"unknown input(s) {sorted(unknown)}" if unknown else f"missing input(s) {sorted(missing)}"
            raise InputError(f"model '{self.name}': {problem}; it takes {list(specs)}")
        return {name: spec.validate(arrays[name]) for name, spec in specs.items()}


def _apply_overrides(specs: list[TensorSpec], config: ModelConfig) -> list[TensorSpec]:
    """Config entries under `inputs:` may only restate what the model says, plus the NaN/inf policy."""
    by_name = {spec.name: spec for spec in specs}
    result = dict(by_name)
    for declared in config.inputs:
        spec = by_name.get(declared.name)
        if spec is None:
            raise ConfigError(f"inputs: the model has no input '{declared.name}'; it has {list(by_name)}")
        if declared.shape is not None and tuple(declared.shape) != spec.shape:
            raise ConfigError(f"inputs.{declared.name}.shape {declared.shape} differs from the model's {spec.shape}")
        result[declared.name] = TensorSpec(spec.name, spec.dtype, spec.shape, declared.allow_nonfinite)
    return list(result.values())


def locate(model: str | Path, repository: str | Path | None = None, version: int | None = None) -> ModelEntry:
    """With `repository`: a model name in it, nothing else. Without: a model file, a model folder (with numbered
    versions, or holding the artefact itself), else a name in the default repository."""
    if repository is not None:
        return Repository(repository).resolve(str(model), version)
    path = Path(model)
    if path.is_file():
        # <model>/<version>/model.onnx keeps its model folder's config and labels
        if path.parent.name.isdigit() and (path.parent.parent / CONFIG_FILE).is_file():
            return ModelEntry(path.parent.parent.name, int(path.parent.name), path.parent.parent, path)
        return ModelEntry(path.stem, None, path.parent, path)
    if path.is_dir():
        if versions_in(path):
            return Repository(path.parent).resolve(path.name, version)
        return ModelEntry(path.name, None, path, find_artefact(path))
    if isinstance(model, str) and ("/" in model or "\\" in model or model.endswith(".onnx")):
        raise NotFoundError(f"no model file or folder at '{model}'")
    return Repository(default_repository()).resolve(str(model), version)


def load(
    model: str | Path,
    *,
    repository: str | Path | None = None,
    version: int | None = None,
    **engine_options: Any,
) -> Model:
    """Load a model by file, folder or repository name. Keyword options override the config's `engine:` section
    (e.g. `intra_op_threads=1`, `providers=["CPUExecutionProvider"]`, `warmup=0`)."""
    entry = locate(model, repository, version)
    config = ModelConfig.from_file(entry.config_path) if entry.config_path else ModelConfig()
    try:
        engine = EngineConfig.model_validate({**config.engine.model_dump(), **engine_options})
    except ValidationError as exc:
        raise ConfigError(f"engine options {engine_options}: {exc.errors()[0]['msg']}") from None
    return Model(entry, config, open_session(entry.artefact, engine), engine)
