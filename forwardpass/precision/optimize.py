"""`optimize`: make candidate precisions of an ONNX model, measure each beside the original in the same run, and
write the fastest one within the accuracy budget as a new version (or to an output folder), atomically.

Work happens in a hidden staging folder beside the destination; only the finished version folder is renamed into
place, so a failure at any step leaves the repository as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from forwardpass.errors import ConfigError, InputError
from forwardpass.measure.speed import check_batch_sizes
from forwardpass.model import Model, load, locate
from forwardpass.pipeline import Arrays
from forwardpass.precision.provenance import plot_candidates, provenance
from forwardpass.precision.samples import Samples, read_samples
from forwardpass.precision.score import Quality, artefact_size, measure_speed, quality_for
from forwardpass.precision.transforms import (
    Converted,
    Int8Settings,
    compute_layers,
    keep_interface,
    layer_precisions,
    to_bf16_torch,
    to_fp16,
    to_fp32,
    to_fp64,
    to_int4,
    to_int8_dynamic,
    to_int8_static,
)
from forwardpass.repository import PRECISION_FILE, PRECISION_PLOT, ModelEntry, versions_in

__all__ = ["PRECISIONS", "Candidate", "OptimizeReport", "OptimizeRequest", "optimize"]

Precision = Literal["fp64", "fp32", "fp16", "bf16", "int8", "int8-dynamic", "int4", "auto"]
PRECISIONS: tuple[Precision, ...] = ("fp64", "fp32", "fp16", "bf16", "int8", "int8-dynamic", "int4", "auto")
NEEDS_CALIBRATION = frozenset({"int8", "auto"})
ORIGINAL = "original"
TIMED_BATCH = 16  # the default batch size throughput is timed at
# Precisions made for something other than speed (fp64: precision; fp16: half the file at FP32 speed on a CPU). Every
# other variant exists to be faster, and one slower than its source is refused unless asked for with allow_slower.
NOT_FOR_SPEED = frozenset({"fp64", "fp16"})
# What FP16 variants are held to (README): every output within this share of its largest FP32 magnitude. Weights or
# activations past FP16's range (±65504) break it; such a variant is refused, never written as a version. BF16 keeps
# FP32's range: its coarser steps move near-tied softmax outputs legitimately, and its score shows what they cost.
HELD_TO = {"fp16": 1e-2}
# Dynamic INT8 only where it pays: MatMul-style layers. Dynamic convolutions (ConvInteger) are several times slower.
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM", "GRU")

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class OptimizeRequest:
    model: str
    precision: Precision
    repository: Path | None = None
    version: int | None = None
    calibration: Path | None = None
    eval_data: Path | None = None
    max_accuracy_drop: float | None = None
    output: Path | None = None
    int8: Int8Settings = field(default_factory=Int8Settings)
    block_size: int = 16
    threads: int = 0
    batch_size: int = 0  # 0: TIMED_BATCH, or the model's max_batch_size where that is smaller
    seconds: float = 1.0
    calibration_limit: int = 256
    plot: bool = True
    allow_slower: bool = False  # write a variant even when it measured slower than its source


@dataclass(slots=True)
class Candidate:
    label: str
    precision: str  # what precision.json calls it: fp32, int8, mixed, ...
    converted: Converted | None  # None for the original
    layers: dict[str, str]
    score: float = 0.0  # in points of the report's metric (OptimizeReport.metric), higher is better
    throughput: float = 0.0
    latency_ms: float = 0.0
    size_bytes: int = 0
    drop: float = 0.0
    within_budget: bool = True  # its drop is within --max-accuracy-drop (always, when none was given)
    # Why a reduced-float variant is no version of the model whatever the budget (its outputs leave FP32's by more
    # than HELD_TO), in a few words; None when they do not
    off_range: str | None = None

    @property
    def qualifies(self) -> bool:
        return self.within_budget and self.off_range is None

    @property
    def refusal(self) -> str:
        """Why it cannot be chosen, in a few words ('' when it can): the reason, never 'over budget' for one where
        no budget was given."""
        return "over budget" if not self.within_budget else (self.off_range or "")

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "precision": self.precision,
            "score": self.score,
            "score_drop": self.drop,
            "throughput": self.throughput,
            "latency_ms_p50": self.latency_ms,
            "size_bytes": self.size_bytes,
            "within_budget": self.within_budget,
            "off_range": self.off_range,
        }


@dataclass(slots=True)
class OptimizeReport:
    model: str
    metric: str
    original: Candidate
    candidates: list[Candidate]
    chosen: Candidate
    destination: Path
    version: int | None
    provenance: dict[str, object] = field(default_factory=dict)
    plot: Path | None = None


def optimize(request: OptimizeRequest, progress: Progress | None = None) -> OptimizeReport:
    """Validate the request, stage a copy of the model, search the candidates, time them beside the original, and
    publish the chosen one as a new version (or `request.output`) with its provenance."""
    say = progress or (lambda _: None)
    entry = _validated(request)
    destination_parent = request.output.parent if request.output else entry.directory
    destination_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".forwardpass-optimize-", dir=destination_parent))
    opened: list[Model] = []
    try:
        source = _stage(entry, staging)
        original = _open(source, request.threads, opened)
        request = replace(request, batch_size=_timed_batch_size(original, request.batch_size))
        say("reading calibration and eval data")
        calibration = (
            read_samples(
                original,
                request.calibration,
                role="calibration",
                limit=request.calibration_limit,
                model_name=entry.name,
            )
            if request.calibration
            else None
        )
        quality, eval_samples = quality_for(original, request.eval_data, calibration, entry.name)
        search = _Search(request, staging, source, original, quality, calibration, eval_samples, opened, say)
        candidates = search.run()
        say("timing every candidate beside the original")
        _time(search, candidates, eval_samples, request)
        chosen = _choose(candidates, request, quality.metric)
        _refuse_slower(chosen, search.original, request)
        for model in opened:  # closed before publishing: the chosen folder is moved
            model.close()
        opened.clear()
        return _publish_chosen(request, entry, quality, calibration, search, candidates, chosen)
    finally:
        for model in opened:
            model.close()
        shutil.rmtree(staging, ignore_errors=True)


def _validated(request: OptimizeRequest) -> ModelEntry:
    """The model the request names, once every option is known to make sense (before anything is written)."""
    if request.precision not in PRECISIONS:
        raise InputError(f"unknown precision '{request.precision}'; use one of {', '.join(PRECISIONS)}")
    if request.max_accuracy_drop is not None and request.max_accuracy_drop < 0:
        raise InputError("--max-accuracy-drop must not be negative")
    if request.batch_size < 0 or request.seconds <= 0 or request.calibration_limit < 1:
        raise InputError("--duration and --calibration-limit must be positive, --batch-size not negative")
    entry = locate(request.model, request.repository, request.version)
    if entry.artefact.suffix != ".onnx":
        raise ConfigError(
            f"{entry.artefact}: optimize works on ONNX models; convert it first (forwardpass convert {request.model})"
        )
    if request.precision in NEEDS_CALIBRATION and request.calibration is None:
        raise InputError(f"--precision {request.precision} needs --calibration DATA (samples like the real inputs)")
    if request.output is not None and request.output.exists():
        raise InputError(f"output '{request.output}' already exists; choose a new folder")
    return entry


def _timed_batch_size(model: Model, asked: int) -> int:
    """The batch size throughput is timed at: the one asked for, refused over the model's max_batch_size (no forward
    pass of the served model holds more), or by default TIMED_BATCH capped by that maximum."""
    if asked:
        check_batch_sizes(model, [asked])
        return asked
    return min(TIMED_BATCH, model.config.max_batch_size or TIMED_BATCH)


def _stage(entry: ModelEntry, staging: Path) -> Path:
    """The model's files copied into `staging`, its artefact as version 0; returns that artefact."""
    _copy_model_files(entry, staging)
    source = staging / "0" / "model.onnx"
    source.parent.mkdir()
    shutil.copyfile(entry.artefact, source)
    return source


def _time(search: _Search, candidates: list[Candidate], samples: Samples, request: OptimizeRequest) -> None:
    """Every candidate's throughput and latency, measured interleaved with the original's on the eval items."""
    models = {ORIGINAL: search.original_model, **{c.label: search.models[c.label] for c in candidates}}
    speeds = measure_speed(models, samples, batch_size=request.batch_size, seconds=request.seconds)
    for candidate in [search.original, *candidates]:
        speed = speeds[candidate.label]
        candidate.throughput, candidate.latency_ms = speed.throughput, speed.latency_ms


def _publish_chosen(
    request: OptimizeRequest,
    entry: ModelEntry,
    quality: Quality,
    calibration: Samples | None,
    search: _Search,
    candidates: list[Candidate],
    chosen: Candidate,
) -> OptimizeReport:
    """The chosen candidate's folder, with its provenance (and plot), moved to its new version or output folder."""
    base = search.original
    folder = search.folders[chosen.label]
    record = provenance(request, entry, quality, calibration, base, chosen, candidates)
    (folder / PRECISION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if request.plot:
        plot_candidates(folder / PRECISION_PLOT, base, candidates, chosen, quality.metric, request.batch_size)
    destination, version = _publish(folder, staging=search.staging, entry=entry, output=request.output)
    plot = destination / PRECISION_PLOT if request.plot else None
    return OptimizeReport(entry.name, quality.metric, base, candidates, chosen, destination, version, record, plot)


class _Search:
    """Makes and scores candidates in numbered staging folders."""

    def __init__(
        self,
        request: OptimizeRequest,
        staging: Path,
        source: Path,
        original: Model,
        quality: Quality,
        calibration: Samples | None,
        eval_samples: Samples,
        opened: list[Model],
        say: Progress,
    ) -> None:
        self.request = request
        self.eval_samples = eval_samples
        self.staging = staging
        self.source = source
        self.onnx_model = onnx.load(str(source))
        self.quality = quality
        self.calibration = calibration
        self.opened = opened
        self.say = say
        self.models: dict[str, Model] = {}
        self.folders: dict[str, Path] = {}
        self.original_model = original
        say(f"measuring the original ({quality.metric})")
        self.original = Candidate(ORIGINAL, "fp32", None, dict.fromkeys(compute_layers(self.onnx_model), "fp32"))
        self.original.score = quality.measure(original)
        self.original.size_bytes = artefact_size(source)

    def run(self) -> list[Candidate]:
        precision = self.request.precision
        if precision != "auto":
            return [self._make(precision, precision, self._transform(precision))]
        return self._auto()

    def _transform(self, precision: str, exclude: Sequence[str] = ()) -> Callable[[Path], Converted]:
        request = self.request
        if precision == "fp64":
            return lambda out: to_fp64(self.source, out)
        if precision == "fp32":
            return lambda out: to_fp32(self.source, out)
        if precision == "fp16":
            return lambda out: to_fp16(self.source, out)
        if precision == "bf16":
            # the eval items when there is no calibration set (quality_for has refused a request with neither)
            example = self.original_model.pipeline.collate(list((self.calibration or self.eval_samples).items[:2]))
            return lambda out: to_bf16_torch(self.source, out.with_suffix(".pt"), example)
        if precision == "int8":
            batches = self._calibration_batches()
            cache = self.staging / f"calibration-{request.int8.method}.json"  # every INT8 candidate shares it
            return lambda out: to_int8_static(self.source, out, batches, request.int8, exclude, cache)
        if precision == "int8-dynamic":
            return lambda out: to_int8_dynamic(self.source, out)
        if precision == "int8-dynamic-matmul":
            return lambda out: to_int8_dynamic(self.source, out, DYNAMIC_OPS)
        if precision == "int4":
            return lambda out: to_int4(self.source, out, request.block_size)
        raise InputError(f"unknown precision '{precision}'")

    def _calibration_batches(self) -> list[Arrays]:
        assert self.calibration is not None  # checked before the search starts
        return self.calibration.batches(16, self.original_model)

    def _make(self, label: str, precision: str, transform: Callable[[Path], Converted]) -> Candidate:
        self.say(f"making {label}")
        folder = self.staging / str(len(self.folders) + 1)
        folder.mkdir()
        converted = transform(folder / "model.onnx")
        for stray in folder.glob("*.onnx.data"):
            stray.unlink()
        if converted.engine == "onnxruntime":
            keep_interface(self.onnx_model, converted.path)
        self.folders[label] = folder
        model = _open(converted.path, self.request.threads, self.opened)
        self.models[label] = model
        layers = (
            layer_precisions(self.onnx_model, onnx.load(str(converted.path)))
            if converted.engine == "onnxruntime"
            else {}
        ) | converted.layer_overrides
        candidate = Candidate(label, precision, converted, layers)
        self.say(f"measuring {label} ({self.quality.metric})")
        candidate.score = self.quality.measure(model)
        candidate.size_bytes = artefact_size(converted.path)
        candidate.drop = self.original.score - candidate.score
        budget = self.request.max_accuracy_drop
        candidate.within_budget = budget is None or candidate.drop <= budget + 1e-9
        held = HELD_TO.get(precision)
        if held is not None:
            # no budget asked for still means this much: an FP16 model that overflows is no FP16 version of it
            spread = _spread(self.original_model, model, self.eval_samples.batches(16, self.original_model))
            if spread > held:
                why = (
                    f"{label} moves the outputs by up to {spread:.3g} of their largest FP32 value on the eval items "
                    f"({precision} is held to {held:g}; values past its range or resolution)"
                )
                if self.request.precision == precision:
                    raise InputError(f"{why}; nothing was written. Keep FP32, or try another --precision")
                self.say(why)
                candidate.off_range = f"past {precision}'s range: outputs moved {spread:.2g} (held to {held:g})"
        return candidate

    def _optional(self, precision: str, transform: Callable[[Path], Converted]) -> list[Candidate]:
        """The candidate, or none where its tool cannot make a model of this graph that ONNX Runtime loads (the INT4
        quantizer raises the opset to 21 but leaves a Loop body's ReduceMean with its opset-17 axes attribute): the
        other candidates still compete, where the whole search used to end in that load error."""
        try:
            return [self._make(precision, precision, transform)]
        except ConfigError as exc:
            self.say(f"{precision} left out: {exc}")
            return []

    def _auto(self) -> list[Candidate]:
        """Whole-model precisions first; then, when full INT8 misses the budget, mixed precision: layers ranked by
        how much keeping each alone in FP32 recovers, and added back to FP32 in that order until the budget holds."""
        has = {node.op_type for node in self.onnx_model.graph.node}
        candidates = [
            self._make("fp32", "fp32", self._transform("fp32")),
            self._make("fp16", "fp16", self._transform("fp16")),
        ]
        int8 = self._make("int8", "int8", self._transform("int8"))
        candidates.append(int8)
        if has & set(DYNAMIC_OPS):  # never for convolutions: DYNAMIC_OPS leaves them in FP32
            candidates += self._optional("int8-dynamic", self._transform("int8-dynamic-matmul"))
        if "MatMul" in has:
            candidates += self._optional("int4", self._transform("int4"))
        if int8.qualifies:
            return candidates
        layers = compute_layers(self.onnx_model)
        gains = {}
        for layer in layers:
            single = self._make(f"int8 except {layer}", "mixed", self._transform("int8", [layer]))
            gains[layer] = single.score - int8.score
            candidates.append(single)
            if single.qualifies:
                return candidates  # one layer in FP32 suffices; more would only be slower
        ranked = sorted(layers, key=lambda name: gains[name], reverse=True)
        for count in range(2, len(ranked)):
            kept = ranked[:count]
            mixed = self._make(f"int8, {count} layers fp32", "mixed", self._transform("int8", kept))
            candidates.append(mixed)
            if mixed.qualifies:
                break
        return candidates


def _spread(original: Model, candidate: Model, batches: Sequence[Arrays]) -> float:
    """The largest difference between the two models' float outputs, relative to the original's largest magnitude
    (inf where the candidate gives NaN). Class indices or names beside the scores are left out: a near-tie that flips
    moves them by a whole class, which the score shows."""
    worst = 0.0
    for batch in batches:
        want, got = original.forward(original.validate(batch)), candidate.forward(candidate.validate(batch))
        for name, expected in want.items():
            if not np.issubdtype(expected.dtype, np.floating) or not expected.size:
                continue
            scale = float(np.abs(expected).max()) or 1.0
            difference = np.abs(np.asarray(got[name], dtype=np.float64) - expected)
            worst = max(worst, float(np.nan_to_num(difference, nan=np.inf).max()) / scale)
    return worst


def _open(path: Path, threads: int, opened: list[Model]) -> Model:
    model = load(path, serve="native" if path.suffix == ".pt" else None, intra_op_threads=threads, warmup=1)
    opened.append(model)
    return model


def _copy_model_files(entry: ModelEntry, staging: Path) -> None:
    """The model folder's config and the files it names (labels, tokenizer): candidates load with them."""
    if entry.config_path is None:
        return
    for item in entry.directory.iterdir():
        # metrics.json holds the original's build-time figures; precision.json will hold the new model's
        wanted = item.is_file() and not item.name.startswith(".") and item.name != "metrics.json"
        if wanted and item != entry.artefact:
            shutil.copyfile(item, staging / item.name)


def _choose(candidates: list[Candidate], request: OptimizeRequest, metric: str) -> Candidate:
    qualified = [c for c in candidates if c.qualifies]
    if not qualified:
        best = max(candidates, key=lambda c: c.score)
        raise InputError(
            f"no candidate keeps the drop in {metric} within {request.max_accuracy_drop} points (the closest, "
            f"{best.label}, drops {best.drop:.2f}); nothing was written. Allow a larger --max-accuracy-drop"
        )
    return max(qualified, key=lambda c: c.throughput)


def _refuse_slower(chosen: Candidate, original: Candidate, request: OptimizeRequest) -> None:
    if request.allow_slower or chosen.precision in NOT_FOR_SPEED or chosen.throughput >= original.throughput:
        return
    ratio = chosen.throughput / original.throughput if original.throughput else 0.0
    threads = request.threads or "default"
    raise InputError(
        f"{chosen.label} runs at {ratio:.2f}x the throughput of the original ({chosen.throughput:,.1f} vs "
        f"{original.throughput:,.1f} items/s at batch {request.batch_size}, {threads} threads, measured in this run): "
        f"a variant slower than its source is written only when asked for by name (--allow-slower); nothing was "
        "written"
    )


def _publish(folder: Path, staging: Path, entry: ModelEntry, output: Path | None) -> tuple[Path, int | None]:
    """Rename the finished folder into place: the next version number, or `output` (a model folder with the
    config and the files it names, ready for `forwardpass predict OUTPUT`)."""
    if output is not None:
        for item in staging.iterdir():
            if item.is_file():
                shutil.copyfile(item, folder / item.name)
        os.rename(folder, output)
        return output, None
    while True:
        version = max(versions_in(entry.directory), default=0) + 1
        target = entry.directory / str(version)
        try:
            os.rename(folder, target)
        except OSError:
            if target.exists():
                continue  # another writer took this number meanwhile
            raise
        return target, version
