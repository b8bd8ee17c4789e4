"""The data plane: the one implementation of the KServe V2 / Triton operations behind HTTP, gRPC and in-process use.

Transports decode their wire format into `InferRequest` and call this; it validates each request on its own
(before it can join a batch), sends it through the model's batcher, picks the requested outputs, applies the
classification extension, and records metrics. It raises only forwardpass errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import weakref
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np

from forwardpass.config import PipelineConfig
from forwardpass.ensemble import check_steps, unready
from forwardpass.errors import (
    AnswerTooLarge,
    DeadlineExceeded,
    DecodeError,
    Forbidden,
    ForwardpassError,
    InputError,
    NotFoundError,
    ShapeError,
)
from forwardpass.explain import explain
from forwardpass.model import Model
from forwardpass.pipeline import Arrays
from forwardpass.pipeline.kinds import kind_of
from forwardpass.pipeline.outputs import Classify, Prediction
from forwardpass.quality.drift import InputWindow
from forwardpass.quality.metrics import DriftCollector
from forwardpass.registry import ModelRegistry, Served
from forwardpass.scheduler.batcher import Batched
from forwardpass.scheduler.sequence import sequence_flags
from forwardpass.server.limits import RequestLimits
from forwardpass.server.metrics import Metrics, Timings
from forwardpass.server.pipelines import Pipelines
from forwardpass.server.settings import ServerSettings
from forwardpass.server.triton_config import PLATFORM, triton_config
from forwardpass.server.types import InferRequest, InferResponse, RequestedOutput, Tensor
from forwardpass.tensor import DataType, as_text

__all__ = ["EXTENSIONS", "IGNORED_UNLOAD_PARAMETERS", "UNOFFERED", "DataPlane", "unoffered"]

log = logging.getLogger(__name__)

EXTENSIONS = [
    "classification",
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
]

# Triton's features this server does not offer, with what to do instead: each transport refuses their calls (HTTP
# paths, gRPC methods) naming the feature, so that a client (perf_analyzer --shared-memory) says why it stopped.
UNOFFERED = {
    "system shared memory": "send the tensors' data in the request",
    "CUDA shared memory": "send the tensors' data in the request",
    "trace settings": "per-stage timings are in /metrics and the model statistics",
    "log settings": "the server logs to stderr; --access-log adds a line per request",
}

# Unload parameters that change nothing here: we have no ensembles whose dependents could be unloaded too.
IGNORED_UNLOAD_PARAMETERS = frozenset({"unload_dependents"})


def unoffered(feature: str) -> str:
    """The one-line refusal of a call to `feature`, a key of UNOFFERED."""
    return f"{feature} is not supported by this server: {UNOFFERED[feature]}"


class DataPlane:
    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        self._registry = registry
        self._settings = settings
        self.metrics = Metrics(self._queue_depths)
        self.metrics.registry.register(DriftCollector(self._drift_windows))
        self._limits: weakref.WeakKeyDictionary[Served, RequestLimits] = weakref.WeakKeyDictionary()
        self._explaining = asyncio.Semaphore(1)  # an explanation takes seconds of CPU and tens of MB
        self._pipelines = Pipelines(registry.repository.root)
        registry.on_batch = lambda served, rows, run_s: self.metrics.batch(served.name, served.version, rows, run_s)
        try:
            self._version = package_version("forwardpass")
        except PackageNotFoundError:
            self._version = "0+unknown"

    # health and metadata

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._registry.ready()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "forwardpass", "version": self._version, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """A model is ready once served; a pipeline once every step is served and fits the next."""
        try:
            self._registry.get(name, version)
        except NotFoundError:
            pipeline = None if version else self._pipelines.find(name)
            return pipeline is not None and unready(name, pipeline.steps, self._served_model) is None
        return True

    def decoder_card(self, name: str) -> dict[str, Any] | None:
        """OpenAI's description of `name` when it is a decoder language model (its config has a generation
        section), else None (a pipeline's name, an unknown name: model_metadata says what it is)."""
        try:
            served = self._registry.get(name)
        except NotFoundError:
            return None
        return model_card(served) if served.model.config.generation is not None else None

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        pipeline = self._pipeline(name, version)
        if pipeline is not None:
            return self._pipelines.metadata(name, pipeline, self._served_model)
        served = self._registry.get(name, version)
        return {
            "name": served.name,
            "versions": self._registry.versions(served.name),
            "platform": PLATFORM,
            "inputs": [spec.to_dict() for spec in served.inputs],
            "outputs": [spec.to_dict() for spec in served.outputs],
        }

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return triton_config(self._registry.get(name, version))

    def model_statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        if name:
            versions = [version] if version else self._registry.versions(name)
            pairs = [(name, self._registry.get(name, v).version) for v in versions]
        else:
            pairs = [(served.name, served.version) for served in self._registry.loaded()]
        return self.metrics.statistics(sorted(pairs))

    # repository

    async def repository_index(self) -> list[dict[str, Any]]:
        """Every model of the repository and its state, then every pipeline with its steps. The folders are listed in
        a thread: 10,000 of them took ~1.5 s, during which the event loop answered nothing."""
        names = await asyncio.to_thread(self._registry.repository.names)
        return [*self._registry.index(names), *self._pipelines.index(self._served_model)]

    async def load_model(self, name: str) -> None:
        await self._registry.load(name)

    async def unload_model(self, name: str) -> None:
        await self._registry.unload(name)

    def limits(self, name: str, version: str | None = None, *, tensors: bool = True) -> RequestLimits:
        """What a request to this model may be: transports check it before they decode a body (404 first; 403 for
        tensors to a decision model, whose schema check, drift window and audit row are /predict's)."""
        pipeline = None if tensors else self._pipeline(name, version)
        if pipeline is not None:  # a pipeline reads what its first step reads
            return self.limits(pipeline.steps[0].model, None, tensors=False)
        served = self._served(name, version)
        if tensors and served.model.decider is not None:
            error = _decisions_elsewhere(served.name)
            self.metrics.failed(served.name, served.version, error)
            raise error
        limits = self._limits.get(served)
        if limits is None:
            limits = self._limits[served] = RequestLimits.of(served)
        return limits

    # inference

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        started = time.perf_counter()
        served = self._served(name, version)
        try:
            with served.in_use():
                model = served.model
                if model.decider is not None:  # its schema check, drift window and audit row are the pipeline's
                    raise _decisions_elsewhere(served.name)
                arrays = {tensor.name: tensor.data for tensor in request.inputs}
                if len(arrays) != len(request.inputs):
                    raise InputError(f"model '{name}': an input is given twice: {[t.name for t in request.inputs]}")
                sequencer = served.sequencer
                valid = sequencer.validate(arrays) if sequencer else model.validate(arrays)
                batch = {name: as_text(name, array) for name, array in valid.items()}
                rows = _rows(batch, served.max_batch_size) if model.batchable else 1
                wanted = _requested(served, request.outputs)
                validated = time.perf_counter()
                timeout_s = _timeout_s(request.parameters, self._settings)
                if sequencer is not None:  # submitted before any await: a stream's steps keep their order
                    sequence_id, start, end = sequence_flags(request.parameters, served.name)
                    step = sequencer.submit(sequence_id, batch, start=start, end=end, client=request.client)
                    done = await _expiring(step, name, timeout_s)
                else:
                    done = await self._run(served, batch, rows, timeout_s)
                answered = time.perf_counter()
                outputs = [self._output(served, done.outputs, output) for output in wanted]
                self._check_answer_size(served.name, [(tensor.name, tensor.data) for tensor in outputs])
        except ForwardpassError as exc:
            self.metrics.failed(served.name, served.version, exc, time.perf_counter() - started)
            raise
        except Exception as exc:
            raise self._internal(served, exc, started) from exc
        finished = time.perf_counter()
        timings = Timings(done.queued_s, validated - started, done.run_s, finished - answered, total=finished - started)
        self.metrics.succeeded(served.name, served.version, timings)
        return InferResponse(served.name, served.version, outputs, request.id)

    async def predict(
        self, name: str, version: str | None, raw: object, parameters: dict[str, Any], *, inline: bool = False
    ) -> Prediction | list[Prediction]:
        """The whole pipeline for one raw item (image bytes, text, record) or a list of records: preprocess →
        batcher → postprocess; a list gets a list. Preprocessing runs in a worker thread unless the caller says
        the item is small (`inline`): a thread hop costs more than a small record's preprocessing. A pipeline of
        models runs each step's items through that step's batcher (`forwardpass.server.pipelines`)."""
        pipeline = self._pipeline(name, version)
        if pipeline is not None:
            steps = [self._served(step.model, None).model for step in pipeline.steps]  # 404: a step not served
            check_steps(name, pipeline.steps, steps)  # 400: a step that does not take what the one before gives
            return await self._pipelines.predict(name, pipeline, steps[0], raw, parameters, self._step)
        started = time.perf_counter()
        served = self._served(name, version)
        try:
            with served.in_use():
                model = served.model
                top_k = _top_k(parameters)
                raws = _items(served, raw)
                explaining = _wants_explanation(parameters)
                if explaining and not self._settings.explain:
                    raise Forbidden("explanations are off on this server; start it with --explain to allow them")
                if explaining and raws is not None:
                    raise InputError("?explain=true takes one item, not a list")
                limits = self.limits(name, version, tensors=False)
                if inline:
                    items = [_preprocess(model, item, limits) for item in raws or [raw]]
                else:
                    work = [raw] if raws is None else raws
                    items = await asyncio.to_thread(lambda: [_preprocess(model, item, limits) for item in work])
                preprocessed = time.perf_counter()
                timeout_s = _timeout_s(parameters, self._settings)
                if model.steps is not None:  # a recording's chunks step through a stateful model, in order
                    deadline = preprocessed + timeout_s
                    rows = await asyncio.to_thread(lambda: model.run_items(items, deadline=deadline))
                    queued_s, run_s = 0.0, time.perf_counter() - preprocessed
                elif model.whole_items:  # no batch dimension: stacked, the items would gain one the model lacks
                    alone = [await self._run(served, model.pipeline.feeds(dict(item)), 1, timeout_s) for item in items]
                    queued_s, run_s = sum(done.queued_s for done in alone), sum(done.run_s for done in alone)
                    rows = [(done.outputs, item) for done, item in zip(alone, items, strict=True)]
                else:
                    batch = model.pipeline.collate(items)
                    feeds = model.pipeline.feeds(batch)  # less what only the postprocessing reads
                    done = await self._run(served, feeds, len(items), timeout_s)
                    queued_s, run_s = done.queued_s, done.run_s
                    rows = [
                        (_item_outputs(served, done.outputs, i, len(items)), {k: v[i] for k, v in batch.items()})
                        for i in range(len(items))
                    ]
                answered = time.perf_counter()
                self._check_answer_size(served.name, [pair for outputs, _ in rows for pair in outputs.items()])
                if model.audit is not None and model.audit.group_ms == 0:  # an SQLite commit: milliseconds, a disk
                    predictions = await asyncio.to_thread(model.postprocess, rows, top_k)
                else:
                    predictions = model.postprocess(rows, top_k)
                if explaining:  # SHAP takes milliseconds to seconds: not on the loop, and one at a time
                    async with self._explaining:
                        predictions[0]["explanation"] = await asyncio.to_thread(explain, model, raw, predictions[0])
        except ForwardpassError as exc:
            self.metrics.failed(served.name, served.version, exc, time.perf_counter() - started)
            raise
        except Exception as exc:
            raise self._internal(served, exc, started) from exc
        finished = time.perf_counter()
        timings = Timings(queued_s, preprocessed - started, run_s, finished - answered, total=finished - started)
        self.metrics.succeeded(served.name, served.version, timings)
        return predictions if raws is not None else predictions[0]

    def _pipeline(self, name: str, version: str | None) -> PipelineConfig | None:
        """The pipeline of models `name` names when no served model has that name (pipelines have no versions)."""
        try:
            self._registry.get(name, version)
        except NotFoundError:
            return None if version else self._pipelines.find(name)
        return None

    def _served_model(self, name: str) -> Model | None:
        try:
            return self._registry.get(name, None).model
        except NotFoundError:
            return None

    async def _step(self, model: str, item: object, parameters: dict[str, Any]) -> Prediction:
        answer = await self.predict(model, None, item, parameters)
        assert isinstance(answer, dict)  # one item in, one prediction out
        return answer

    def _served(self, name: str, version: str | None) -> Served:
        try:
            return self._registry.get(name, version)
        except ForwardpassError as exc:
            self.metrics.failed(None, None, exc)
            raise

    async def _run(self, served: Served, batch: Arrays, rows: int, timeout_s: float) -> Batched:
        return await _expiring(served.batcher.submit(batch, rows), served.name, timeout_s)

    def _output(self, served: Served, outputs: Arrays, wanted: RequestedOutput) -> Tensor:
        data = outputs[wanted.name]
        if wanted.classification:
            labels = _labels_of(served, wanted.name)
            return Tensor(
                wanted.name, "BYTES", _classify(data, wanted.classification, labels, served.max_batch_size > 0)
            )
        return Tensor(wanted.name, DataType.from_numpy(data.dtype).name, data)

    def _check_answer_size(self, model: str, outputs: list[tuple[str, np.ndarray]]) -> None:
        """Refuses an answer whose outputs hold more than max_response_bytes, before any of it is encoded: a request
        of a few bytes can ask for gigabytes (a shape fed to ConstantOfShape), and each encoding copies them again.
        Sizes are as binary data carries them; V2 JSON text of the same numbers takes a few times more."""
        limit = self._settings.max_response_bytes
        sizes: dict[str, int] = {}
        for name, data in outputs:
            sizes[name] = sizes.get(name, 0) + _binary_bytes(data)
        total = sum(sizes.values())
        if total > limit:
            largest = max(sizes, key=sizes.__getitem__)
            raise AnswerTooLarge(
                f"model '{model}' answers {total:,} bytes (output '{largest}': {sizes[largest]:,}), over the "
                f"server's max_response_bytes of {limit:,}; ask for fewer rows or outputs"
            )

    def _internal(self, served: Served, exc: Exception, started: float) -> ForwardpassError:
        log.exception("model '%s' version %s failed unexpectedly", served.name, served.version)
        error = ForwardpassError(f"model '{served.name}' failed: {type(exc).__name__}: {exc}".splitlines()[0])
        self.metrics.failed(served.name, served.version, error, time.perf_counter() - started)
        return error

    def _drift_windows(self) -> dict[tuple[str, str], InputWindow]:
        return {
            (served.name, served.version): served.model.window
            for served in self._registry.loaded()
            if served.model.window is not None
        }

    def _queue_depths(self) -> dict[tuple[str, str], int]:
        return {(served.name, served.version): served.depth for served in self._registry.loaded()}


def _preprocess(model: Model, raw: object, limits: RequestLimits) -> Arrays:
    kind = kind_of(model.config)
    if isinstance(raw, str) and kind.file_items:
        # the image and audio pipelines read a str as a file path: over the network that would open the server's own
        raise DecodeError(f"model '{model.name}' takes {kind.name} files: send its bytes (Content-Type {kind.name}/*)")
    if isinstance(raw, bytes) and limits.max_pixels is not None:
        from PIL import Image, UnidentifiedImageError  # on use: a server of models that take no images never needs it

        with contextlib.suppress(UnidentifiedImageError, OSError):  # not an image: the pipeline says so
            with Image.open(io.BytesIO(raw)) as image:  # reads the header only
                size = image.size
            limits.check_image(*size)
    # What the pipeline finds wrong with the input it raises as an InputError (a 4xx); any other exception is a bug
    # in forwardpass or a library, left to `predict`, which logs its traceback and answers 500.
    return model.preprocess(raw)


def _depth(value: object) -> int:
    """How deeply lists nest at their first element: [[1, 2], [3, 4]] is 2."""
    depth = 0
    while isinstance(value, list) and value:
        depth, value = depth + 1, value[0]
    return depth


def _items(served: Served, raw: object) -> list[object] | None:
    """A JSON list of records (or of texts, for a text model) is a batch of items, as the CLI reads it, and so is a
    nested list one dimension deeper than a one-input tensor model's item (rows, as a .npy batch is read); None:
    `raw` is one item (a list of numbers is one tensor)."""
    if not isinstance(raw, list) or not raw:
        return None
    model = served.model
    lists = kind_of(model.config).lists
    if lists == "rows":
        if len(model.inputs) != 1 or _depth(raw) != len(model.inputs[0].shape):
            return None
    elif not all(isinstance(item, dict) or (lists == "texts" and isinstance(item, str)) for item in raw):
        return None
    most = max(served.max_batch_size, 1)
    if len(raw) > most:
        raise InputError(
            f"a list of {len(raw)} items is over model '{served.name}''s max_batch_size of {served.max_batch_size}; "
            "split it"
        )
    return raw


def _item_outputs(served: Served, outputs: Arrays, index: int, count: int) -> Arrays:
    """Item `index`'s row of each output. A model without a batch dimension answers one item whole: its first
    axis is the model's own (e.g. 22 time steps), never a batch to take row 0 of."""
    if served.max_batch_size == 0 and count == 1 and any(value.shape[:1] != (1,) for value in outputs.values()):
        return dict(outputs)
    for key, value in outputs.items():
        if value.shape[:1] != (count,):
            shape = list(value.shape)
            raise ShapeError(f"model '{served.name}' gave output '{key}' of shape {shape} for {count} items")
    return {key: value[index, ...] for key, value in outputs.items()}  # an array, even of one string


def _binary_bytes(data: np.ndarray) -> int:
    """An output's bytes as binary data carries it: its elements, and for strings each one's 4-byte length too."""
    if data.dtype.kind != "O":
        return data.nbytes
    return sum(4 + len(value) for value in data.reshape(-1).tolist())


def _decisions_elsewhere(name: str) -> Forbidden:
    return Forbidden(f"model '{name}' makes audited decisions: send records to /v2/models/{name}/predict")


def _rows(batch: Arrays, max_batch_size: int) -> int:
    arrays = iter(batch.values())
    first: int = next(arrays).shape[0]
    if any(array.shape[0] != first for array in arrays):  # no dict built per request unless it is refused
        sizes = {name: array.shape[0] for name, array in batch.items()}
        raise InputError(f"inputs disagree on the batch size (first dimension): {sizes}")
    if first == 0:
        raise InputError("the batch has 0 rows; send at least one")
    if max_batch_size and first > max_batch_size:
        raise InputError(f"a batch of {first} rows is over the model's max_batch_size of {max_batch_size}; split it")
    return first


def _requested(served: Served, requested: list[RequestedOutput] | None) -> list[RequestedOutput]:
    specs = {spec.name: spec for spec in served.outputs}
    if requested is None:
        return [RequestedOutput(name) for name in specs]
    for wanted in requested:
        spec = specs.get(wanted.name)
        if spec is None:
            raise InputError(f"model '{served.name}' has no output '{wanted.name}'; it has {list(specs)}")
        if wanted.classification < 0:
            raise InputError(f"output '{wanted.name}': classification must be a positive count of classes")
        if wanted.classification and spec.dtype is DataType.BYTES:
            raise InputError(f"output '{wanted.name}' holds strings; classification needs numeric scores")
    return requested


def _labels_of(served: Served, output: str) -> list[str] | None:
    postprocess = served.model.pipeline.postprocess
    if isinstance(postprocess, Classify) and postprocess.output == output:
        return postprocess.labels
    return None


def _classify(values: np.ndarray, k: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    """Triton's classification extension: the top `k` of each row as "score:index[:label]" strings ([rows, k]); an
    output of one score per row ([batch]) has rows of one score, an unbatched model's output is one row ([k])."""
    rows = values.reshape(values.shape[0], -1) if batched else values.reshape(1, -1)
    rows = rows.astype(np.float64)
    k = min(k, rows.shape[1])
    best = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    result = np.empty(best.shape, dtype=object)
    for r, indexes in enumerate(best):
        for j, index in enumerate(indexes.tolist()):
            label = f":{labels[index]}" if labels and index < len(labels) else ""
            result[r, j] = f"{rows[r, index]:f}:{index}{label}"
    return result if batched else result.reshape(k)


def _timeout_s(parameters: dict[str, Any], settings: ServerSettings) -> float:
    """The server's timeout, or the request's `timeout` parameter (microseconds, as tritonclient sends) if shorter."""
    asked = parameters.get("timeout")
    if asked is None:
        return settings.request_timeout_s
    if isinstance(asked, bool) or not isinstance(asked, int | float) or asked <= 0:
        raise InputError(f"parameter 'timeout' must be a positive number of microseconds, got {asked!r}")
    return min(settings.request_timeout_s, asked / 1e6)


def _top_k(parameters: dict[str, Any]) -> int | None:
    top_k = parameters.get("top_k")
    if top_k is None:
        return None
    if isinstance(top_k, str) and top_k.isascii() and top_k.isdigit():  # "²" is a digit that int() refuses
        top_k = int(top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
        raise InputError(f"parameter 'top_k' must be a positive integer, got {top_k!r}")
    return top_k


async def _expiring(future: asyncio.Future[Batched], name: str, timeout_s: float) -> Batched:
    expiry = asyncio.get_running_loop().call_later(timeout_s, _expire, future, name, timeout_s)
    try:
        return await future
    finally:
        expiry.cancel()


def _wants_explanation(parameters: dict[str, Any]) -> bool:
    asked = parameters.get("explain", False)
    if isinstance(asked, str) and asked.lower() in ("true", "1", "false", "0"):
        return asked.lower() in ("true", "1")
    if not isinstance(asked, bool):
        raise InputError(f"parameter 'explain' must be true or false, got {asked!r}")
    return asked


def _expire(future: asyncio.Future[Batched], name: str, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"model '{name}' did not answer within {timeout_s:g} s; retry later"))


def model_card(served: Served) -> dict[str, Any]:
    """A served model as OpenAI's API describes one (GET /v1/models lists them, GET /v1/models/{id} answers one)."""
    created = int(served.model.entry.directory.stat().st_mtime)
    return {"id": served.name, "object": "model", "created": created, "owned_by": "forwardpass"}
