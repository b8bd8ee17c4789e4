"""`Model` = config + pipeline + session: the one object every mode (CLI, API, server, batch, stream) calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from pydantic import ValidationError

from forwardpass.backends.base import Session
from forwardpass.config import (
    ClassificationConfig,
    EngineConfig,
    ModelConfig,
    PostprocessConfig,
    PreprocessConfig,
    TabularConfig,
    TensorConfig,
)
from forwardpass.errors import ConfigError, ForwardpassError, InputError, NotFoundError
from forwardpass.formats import (
    SERVE_MODES,
    ModelFacts,
    ServeMode,
    Serving,
    load_options,
    model_facts,
    open_model_session,
    open_served,
)
from forwardpass.pipeline import Arrays, Pipeline, Prediction
from forwardpass.pipeline.complete import check, complete
from forwardpass.pipeline.outputs import Classify, Regress
from forwardpass.quality import InputWindow, Profile, SchemaCheck
from forwardpass.repository import (
    CONFIG_FILE,
    ModelEntry,
    Repository,
    default_repository,
    find_artefact,
    version_number,
    versions_in,
)
from forwardpass.scheduler.batches import check_rows, fail_alone
from forwardpass.scheduler.sequence import run_steps, state_slots
from forwardpass.tensor import DataType, ShapeBound, TensorSpec

if TYPE_CHECKING:
    from forwardpass.decisions import AuditLog, Decider
    from forwardpass.decisions.audit import Decided

__all__ = ["Model", "file_in_model_folder", "load", "locate", "locate_configured"]

# Items per forward pass in offline `predict` when the config sets no max_batch_size.
DEFAULT_PREDICT_BATCH = 32
# Rules that read any class's probability need every class listed before the request's top-K trims the list.
_EVERY_CLASS = 1 << 30


class Model:
    """A loaded model: its completed config, pipeline and session.

    The public API is small: `infer` (arrays in, arrays out), `predict` and `predict_each` (raw items in,
    predictions out) and `close`, plus the attributes describing the model (`name`, `version`, `config`, `inputs`,
    `outputs`, `pipeline`, `batch_size`, ...). The other public methods are the steps of `predict_each` that another
    layer runs apart (the server around its batcher, batch jobs in their decoding threads, timing and scoring code);
    each docstring says who and why."""

    def __init__(
        self,
        entry: ModelEntry,
        config: ModelConfig,
        session: Session,
        engine: EngineConfig,
        serving: Serving,
        facts: ModelFacts | None = None,
    ) -> None:
        self.entry = entry
        self.engine = engine  # the effective engine options: the config's `engine:` plus load()'s overrides
        self.serving = serving  # the artefact's format, and whether its framework or ONNX Runtime runs it (and why)
        self.name = entry.name
        self.version = entry.version
        self.facts = facts or ModelFacts()
        specs = _apply_overrides(session.inputs, config, session.outputs, entry.name)
        specs_by_name = {spec.name: spec for spec in specs}
        # The config every mode uses: declared, else inferred from the model (each inferred field says why)
        self.config, self.inferred = complete(config, specs, session.outputs, self.facts)
        source = str(entry.config_path or entry.artefact)
        check(self.config, specs, session.outputs, self.facts, entry.directory, source)
        config = self.config
        # the record fields a tabular model takes, in order; None for other models (eval reads it per item)
        self.columns = (
            [c.name for c in config.preprocess.columns] if isinstance(config.preprocess, TabularConfig) else None
        )
        self.session = session
        self.constants = _constants(config, specs)  # fed on every forward pass, never sent by clients
        self._batched_constants = {name for name in self.constants if specs_by_name[name].shape[:1] == (-1,)}
        self.inputs = [spec for spec in specs if spec.name not in self.constants]
        self.outputs = session.outputs
        self._input_specs = {spec.name: spec for spec in self.inputs}
        # batch-first inputs, and (where the graph names it) the same first dimension on the outputs
        self.batchable = self.facts.batch_first is not False and all(
            spec.shape and spec.shape[0] == -1 for spec in self.inputs
        )
        # A model whose first axis is no batch (Silero's state [2, batch, 128], a rank-0 sample rate, outputs
        # [time, batch, classes]) takes each item whole: never stacked, never split along its first axis.
        self.whole_items = not self.batchable and not all(spec.shape[:1] == (1,) for spec in self.inputs)
        self._item_specs = {spec.name: spec if self.whole_items else spec.unbatched() for spec in self.inputs}
        self.pipeline = Pipeline(config, self.inputs, self.outputs, entry.directory)
        # A recording cut into chunks steps through a stateful model here, chunk after chunk (`run_steps`), rather
        # than through the sequence batcher, which keeps state between requests that come apart: its items hold the
        # chunks alone, the state is carried within the item
        self.steps = (
            state_slots(config.sequence_batching, self.inputs, self.outputs)
            if config.sequence_batching is not None and self.pipeline.chunked
            else None
        )
        for slot in self.steps or ():
            del self._item_specs[slot.input]
        self.batch_size = (config.max_batch_size or DEFAULT_PREDICT_BATCH) if self.batchable else 1
        decision = config.decision
        self.decider: Decider | None = None
        self.audit: AuditLog | None = None
        if decision is not None:  # decisions, their audit log and sqlite: imported by the models that decide
            from forwardpass.decisions import AuditLog, Decider

            post = self.pipeline.postprocess
            classes = post.labels if isinstance(post, Classify) else None
            scored = next(
                (spec for spec in self.outputs if isinstance(post, Classify | Regress) and spec.name == post.output),
                None,
            )
            item_scored = scored if scored is None or self.whole_items else scored.unbatched()
            self.decider = Decider(decision, config, classes, item_scored)
            self.audit = AuditLog(group_ms=decision.audit_group_ms) if decision.audit else None
        self.schema = SchemaCheck(config.input_schema) if config.input_schema is not None else None
        self.profile = (
            Profile.load(file_in_model_folder(entry.directory, config.profile, "profile"))
            if config.profile is not None
            else None
        )
        self.window = InputWindow(self.profile) if self.profile is not None else None  # recent inputs, for drift
        self._version = str(self.version or "")

    def reconfigured(self, section: str, value: PreprocessConfig | PostprocessConfig, why: str) -> Model:
        """This model, on the same session, with its `preprocess` or `postprocess` section settled from data, checked
        against the model like any config. Public for `forwardpass init` and `eval`, which settle those sections."""
        config = self.config.model_copy(update={section: value})
        model = Model(self.entry, config, self.session, self.engine, self.serving, self.facts)
        model.inferred = {**self.inferred, section: why}
        return model

    def __repr__(self) -> str:
        return f"Model({self.name!r}, version={self.version}, providers={self.session.providers})"

    def infer(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """The forward pass alone: {input name: batch array} → {output name: batch array}, inputs validated."""
        return self.forward(self.validate(inputs))

    def validate(self, inputs: dict[str, Any]) -> Arrays:
        """A whole request's inputs, batch dimension included → arrays of the model's names, dtypes and shapes.
        Public because the server validates each request before its batcher joins requests."""
        return self._validate(inputs, self._input_specs)

    def forward(self, batch: Arrays) -> Arrays:
        """The forward pass of arrays that `validate` (or `preprocess`, collated) already returned. Public for code
        that runs such arrays again and again: timing (precision's speed, MLPerf), which must not time validation,
        and explanations' perturbed rows. Everyone else calls `infer`."""
        return self.session.run(self._with_constants(batch)) if self.constants else self.session.run(batch)

    def instances(self, count: int) -> list[tuple[Session, Callable[[Arrays], Arrays]]]:
        """`count` sessions run the same way (`session` first, the others opened like it), each with its forward
        pass of validated batches, constant inputs added. Public for the server's registry: one batcher runner
        per instance; it closes the sessions when the model retires."""
        sessions = [self.session, *(open_served(self.serving, self.engine) for _ in range(count - 1))]
        return [(session, self._runner(session)) for session in sessions]

    def _runner(self, session: Session) -> Callable[[Arrays], Arrays]:
        if not self.constants:
            return session.run
        return lambda batch: session.run(self._with_constants(batch))

    def _with_constants(self, batch: Arrays) -> Arrays:
        """The batch plus each constant input: as declared for a rank-0 input, else repeated along the batch."""
        rows = len(next(iter(batch.values()))) if batch else 1
        fed = dict(batch)
        for name, value in self.constants.items():
            fed[name] = np.repeat(value[None], rows, 0) if name in self._batched_constants else value
        return fed

    def preprocess(self, raw: object) -> Arrays:
        """One raw item (image path/bytes, text, record, array) → validated arrays without the batch dimension.
        A record is first checked against the config's input schema, and joins the drift window once it passed.
        Public because the server preprocesses each request before batching, and batch jobs in decoding threads."""
        if self.schema is not None:
            self.schema(raw)
        arrays = self.pipeline.preprocess(raw)
        context = {name: arrays.pop(name) for name in self.pipeline.context if name in arrays}
        arrays = {**self._validate(arrays, self._item_specs), **context}
        if self.window is not None and isinstance(raw, Mapping):
            self.window.add(raw)
        return arrays

    def postprocess(self, rows: Sequence[tuple[Arrays, Arrays]], top_k: int | None = None) -> list[Prediction]:
        """(outputs row, inputs row) per item → predictions. With a decision rule each prediction carries its
        `action` and the `rule` that fired, and the items' audit rows are recorded (journal or commit, see
        `forwardpass.decisions.audit`) before the predictions return. Public because the server postprocesses the
        rows its batcher split."""
        if self.decider is None:
            return [self.pipeline.postprocess(out, inp, top_k) for out, inp in rows]
        read = self.decider.read_classes
        listed = _EVERY_CLASS if read else top_k
        predictions = [self.pipeline.postprocess(out, inp, listed) for out, inp in rows]
        decided: list[Decided] = []
        for prediction, (_, inputs) in zip(predictions, rows, strict=True):
            decision = self.decider.decide(prediction)
            audited = prediction
            if listed is _EVERY_CLASS and isinstance(self.config.postprocess, ClassificationConfig):
                shown = top_k or self.config.postprocess.top_k
                ranked = prediction["top_k"]
                prediction["top_k"] = ranked[:shown]
                # the audit row keeps every score a rule read, so that the log alone shows why each action
                kept = [entry for index, entry in enumerate(ranked) if index < shown or entry["label"] in read]
                audited = {**prediction, "top_k": kept}
            decided.append((inputs, audited, decision.action, decision.rule))
        if self.audit is not None:  # serialized now, before each prediction gets its action and rule
            self.audit.write_decisions(self.name, self._version, decided)
        for prediction, (_, _, action, rule) in zip(predictions, decided, strict=True):
            prediction["action"], prediction["rule"] = action, rule
        return predictions

    def run_items(
        self, items: Sequence[Arrays], batch_size: int | None = None, *, deadline: float | None = None
    ) -> list[tuple[Arrays, Arrays]]:
        """Preprocessed items → forward passes of at most `batch_size` (default: the model's) → (outputs row,
        inputs row) per item. Public for the code that reads the model's raw outputs per item rather than its
        predictions (precision's agreement, MLPerf's system under test, benchmarks), and for the server, which runs
        a recording's chunks here until its request's `deadline` (time.perf_counter(); `run_steps`)."""
        size = batch_size or self.batch_size
        rows: list[tuple[Arrays, Arrays]] = []
        if self.steps is not None:
            steps = self.steps
            return [(run_steps(self.forward, steps, self.pipeline.feeds(dict(item)), deadline), item) for item in items]
        if self.whole_items:
            return [(self.forward(self.pipeline.feeds(dict(item))), item) for item in items]
        for start in range(0, len(items), size):
            batch = self.pipeline.collate(items[start : start + size])
            outputs = self.forward(self.pipeline.feeds(batch))
            count = len(next(iter(batch.values())))
            check_rows(outputs, count)
            for i in range(count):
                # [i, ...]: an array even where a row is one element (a string output's row is else a bare str)
                rows.append(({k: v[i, ...] for k, v in outputs.items()}, {k: v[i] for k, v in batch.items()}))
        return rows

    # A list or tuple matches both signatures; the first wins, as the isinstance check below decides at run time.
    @overload
    def predict(  # type: ignore[overload-overlap]
        self, raw: list[Any] | tuple[Any, ...], *, top_k: int | None = None
    ) -> list[Prediction]: ...

    @overload
    def predict(self, raw: object, *, top_k: int | None = None) -> Prediction: ...

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
        for i, outcome in zip(ready, self.forward_each(list(ready.values()), top_k), strict=True):
            outcomes[i] = outcome
        return outcomes

    def forward_each(self, items: list[Arrays], top_k: int | None = None) -> list[Prediction | ForwardpassError]:
        """Items `preprocess` already gave (e.g. in a batch job's decoding threads) → one outcome per item, in order:
        forward passes of the model's batch size, then postprocessing. Public for batch jobs, which preprocess in
        decoding threads and forward in the job's own. (The loop shared with the other batching loops, and why each
        collects its batch its own way: `forwardpass.scheduler.batches`.)"""
        if not items:
            return []
        return fail_alone(lambda group: self.postprocess(self.run_items(group), top_k), items, ForwardpassError)

    def check_audit_log(self) -> None:
        """ConfigError, the session closed, unless a decision model's audit log can be written (see
        `AuditLog.check_writable`): for the code that starts deciding, so that it is refused before anything is
        scored."""
        if self.audit is None:
            return
        try:
            self.audit.check_writable()
        except ConfigError:
            self.session.close()  # not self.close(): closing its audit log would try to write it
            raise

    def close(self) -> None:
        """Closes the session and the audit log; sessions from `instances` are their owner's to close."""
        self.session.close()
        if self.audit is not None:
            self.audit.close()

    def _validate(self, arrays: dict[str, Any], specs: dict[str, TensorSpec]) -> Arrays:
        if arrays.keys() != specs.keys():
            unknown = arrays.keys() - specs.keys()
            missing = specs.keys() - arrays.keys()
            problem = f"unknown input(s) {sorted(unknown)}" if unknown else f"missing input(s) {sorted(missing)}"
            raise InputError(f"model '{self.name}': {problem}; it takes {list(specs)}")
        return {name: spec.validate(arrays[name]) for name, spec in specs.items()}


def file_in_model_folder(folder: Path, name: str, field: str) -> Path:
    """A file a config's `field` names, refused when it would lie outside the model's folder (`..`, absolute,
    symlinks): a model handed over must not make forwardpass read other files."""
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"{field}: '{name}' points outside the model folder {folder}; keep the file in it")
    return path


def _constants(config: ModelConfig, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The config's `constants:` as arrays of their inputs' dtypes, without the batch dimension."""
    by_name = {spec.name: spec for spec in specs}
    arrays = {}
    for name, value in config.constants.items():
        spec = by_name[name]  # `check` refused constants for inputs the model does not have
        item = spec if not spec.shape or spec.shape[0] != -1 else spec.unbatched()
        try:
            arrays[name] = item.validate(np.asarray(value))
        except ForwardpassError as exc:
            raise ConfigError(f"constants.{name}: {exc}; give a value of shape {list(item.shape)}") from None
    return arrays


def _apply_overrides(
    specs: list[TensorSpec], config: ModelConfig, outputs: list[TensorSpec], model: str
) -> list[TensorSpec]:
    """Config entries under `inputs:` and `outputs:` may only restate what the model says (name, datatype,
    shape), plus an input's NaN/inf policy and bounds on its dimensions; one that says otherwise is refused."""
    by_name = {spec.name: spec for spec in specs}
    result = dict(by_name)
    for declared in config.inputs:
        spec = _restated(declared, by_name, "inputs")
        bound = _shape_bound(declared, spec, model) if declared.max_shape is not None else None
        result[declared.name] = TensorSpec(spec.name, spec.dtype, spec.shape, declared.allow_nonfinite, bound)
    by_output = {spec.name: spec for spec in outputs}
    for declared in config.outputs:
        _restated(declared, by_output, "outputs")
    return list(result.values())


def _shape_bound(declared: TensorConfig, spec: TensorSpec, model: str) -> ShapeBound:
    """inputs[].max_shape, checked against the model's input: one bound per dimension, each -1 or at least 1, a
    fixed dimension's bound its size."""
    limits = tuple(declared.max_shape or ())
    field = f"inputs.{declared.name}.max_shape {list(limits)}"
    if len(limits) != len(spec.shape):
        raise ConfigError(
            f"{field} has {len(limits)} dimensions, the model's input {list(spec.shape)} has {len(spec.shape)}: "
            "give one bound per dimension (-1: no bound)"
        )
    for index, (limit, size) in enumerate(zip(limits, spec.shape, strict=True)):
        if limit != -1 and limit < 1:
            raise ConfigError(f"{field}: dimension {index}'s bound {limit} is under 1; write at least 1, or -1 (none)")
        if size != -1 and limit not in (-1, size):
            raise ConfigError(f"{field}: dimension {index} is fixed at {size} in the model; write {size} or -1 for it")
    return ShapeBound(model, limits)


def _restated(declared: TensorConfig, specs: dict[str, TensorSpec], field: str) -> TensorSpec:
    spec = specs.get(declared.name)
    if spec is None:
        raise ConfigError(f"{field}: the model has no {field[:-1]} '{declared.name}'; it has {list(specs)}")
    if declared.shape is not None and tuple(declared.shape) != spec.shape:
        raise ConfigError(f"{field}.{declared.name}.shape {declared.shape} differs from the model's {list(spec.shape)}")
    if declared.datatype is not None and DataType.from_name(declared.datatype) is not spec.dtype:
        raise ConfigError(
            f"{field}.{declared.name}.datatype {declared.datatype} differs from the model's {spec.dtype.name}; "
            "remove it or write the model's"
        )
    return spec


def locate(
    model: str | Path, repository: str | Path | None = None, version: int | None = None, precision: str | None = None
) -> ModelEntry:
    """With `repository`: a model name in it, nothing else. Without: a model file, a model folder (with numbered
    versions, or holding the artefact itself), else a name in the default repository. `precision` picks the highest
    version of that precision (see `forwardpass optimize`) when no version is given."""
    if repository is not None:
        return Repository(repository).resolve(str(model), version, precision)
    path = Path(model)
    if path.is_file():
        # <model>/<version>/model.onnx keeps its model folder's config and labels
        version = version_number(path.parent.name)
        if version is not None and (path.parent.parent / CONFIG_FILE).is_file():
            return ModelEntry(path.parent.parent.name, version, path.parent.parent, path)
        return ModelEntry(path.stem, None, path.parent, path)
    if path.is_dir():
        if versions_in(path):
            return Repository(path.parent).resolve(path.name, version, precision)
        return ModelEntry(path.name, None, path, find_artefact(path))
    if isinstance(model, str) and ("/" in model or "\\" in model or model.endswith(".onnx")):
        raise NotFoundError(f"no model file or folder at '{model}'")
    return Repository(default_repository()).resolve(str(model), version, precision)


def locate_configured(
    model: str | Path, repository: str | Path | None = None, version: int | None = None, precision: str | None = None
) -> tuple[ModelEntry, ModelConfig]:
    """`locate`, and the model's config; asked for neither a version nor a precision, the version is the highest of
    the config's `precision:` when it names one (what every mode serves by default)."""
    entry = locate(model, repository, version, precision)
    config = ModelConfig.of(entry.config_path)
    if version is None and precision is None and config.precision is not None and entry.version is not None:
        entry = locate(model, repository, None, config.precision)
    return entry, config


def load(
    model: str | Path,
    *,
    repository: str | Path | None = None,
    version: int | None = None,
    serve: ServeMode | None = None,
    trust_pickle: bool = False,
    signature: str | None = None,
    precision: str | None = None,
    **engine_options: Any,
) -> Model:
    """Load a model by file, folder or repository name, in any supported format (ONNX, TorchScript, torch.export,
    SavedModel, Keras, frozen GraphDef, MXNet, scikit-learn, XGBoost, LightGBM, Hugging Face folders).

    `serve` overrides the config's `source.serve` for non-ONNX models: "native" (their framework), "onnx"
    (converted once, parity-checked, cached beside the artefact) or "auto" (the faster of the two; the default).
    `trust_pickle=True` lets pickled models (scikit-learn, joblib) load: unpickling runs code from the file.
    `signature` picks a TensorFlow SavedModel signature. `precision` ("int8", "fp16", ...) picks the highest version
    of that precision that `forwardpass optimize` made (the config's `precision:` does the same when neither
    `version` nor `precision` is given). Other keyword options override the config's `engine:`
    section (e.g. `intra_op_threads=1`, `providers=["CPUExecutionProvider"]`, `warmup=0`)."""
    entry, config = locate_configured(model, repository, version, precision)
    if precision is not None and entry.variant.get("precision", "fp32") != precision:
        raise NotFoundError(f"'{model}' is {entry.variant.get('precision', 'fp32')}, not {precision}")
    hint = entry.variant.get("serve")  # a variant that only its framework runs (bf16 in torch) says so
    if serve is None and hint in SERVE_MODES:
        serve = hint
    try:
        engine = EngineConfig.model_validate({**config.engine.model_dump(), **engine_options})
    except ValidationError as exc:
        raise ConfigError(f"engine options {engine_options}: {exc.errors()[0]['msg']}") from None
    if serve is not None and serve not in SERVE_MODES:
        raise ConfigError(f"serve='{serve}' is not a serve mode; use one of {', '.join(SERVE_MODES)}")
    options, convert = load_options(config.source, trust_pickle=trust_pickle, signature=signature)
    session, serving = open_model_session(entry.artefact, engine, options, serve or config.source.serve, convert)
    try:
        return Model(entry, config, session, engine, serving, model_facts(serving))
    except BaseException:
        session.close()  # refused at load: nothing of it stays open
        raise
