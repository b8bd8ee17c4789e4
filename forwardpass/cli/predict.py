"""`forwardpass predict`: inputs in, one prediction (or one error) per input out."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import typer
from rich.console import Console
from rich.text import Text

from forwardpass.cli.common import REPOSITORY, SERVE, TRUST_PICKLE, VERSION, open_model
from forwardpass.cli.inputs import Item, decode_inputs
from forwardpass.ensemble import Ensemble, find_pipeline, load_pipeline
from forwardpass.errors import ForwardpassError, InputError
from forwardpass.model import Model
from forwardpass.modes.sources import utf8_text
from forwardpass.pipeline import Prediction

__all__ = ["register"]

Outcome = Prediction | ForwardpassError
PREVIEW = 5  # numbers shown per embedding or raw output in the human listing
EXPLAINED = 10  # columns shown per explanation in the human listing, largest attributions first
SIMILARITY_ITEMS = 5  # embeddings (the first ones) compared pairwise after the human listing
FOUND = ("detections", "boxes", "regions")  # what detection, text_detection and pipelines of models find


def predict(
    model: str = typer.Argument(
        ...,
        metavar="MODEL",
        help="A model file (.onnx), a model folder, or a model name in the repository.",
        show_default=False,
    ),
    inputs: list[str] = typer.Argument(
        ...,
        metavar="INPUT",
        help=(
            "Image files (image models); sound files, .wav / .flac / .ogg (audio models); text strings or .txt "
            "files, one input per file (text models); "
            ".csv / .json / .jsonl files of records or an inline JSON object (tabular models); "
            ".npy / .npz / .json arrays (models without preprocessing)."
        ),
        show_default=False,
    ),
    top_k: int | None = typer.Option(
        None,
        "--top-k",
        "-k",
        help="Classes to list per input, at least 1 (classification models; default: the config's top_k).",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input per line, for scripts."),
    draw: Path | None = typer.Option(
        None,
        "--draw",
        help=(
            "Draw what was found (boxes, labels, keypoints, text) on each image and write it as this PNG "
            "(several inputs: one file each, named PATH-STEM-INPUT-STEM.png)."
        ),
        show_default=False,
    ),
    explain: bool = typer.Option(
        False,
        "--explain",
        help=(
            "Explain each prediction: SHAP attributions per column (tabular models), or an occlusion saliency map "
            "written as INPUT-NAME.saliency.png in the current folder (image models)."
        ),
    ),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
    serve: str | None = SERVE,
    trust_pickle: bool = TRUST_PICKLE,
) -> None:
    """Predict with a model: each INPUT is decoded as the model's config says, and the results are listed.

    Inputs go through the model together, in batches. What an INPUT holds:
    image models: one image per file; audio models: one sound file (WAV,
    FLAC, OGG) per input, resampled to the model's rate; text models: a
    string, or a .txt file whose whole content is ONE input; tabular
    models: a CSV file (one record per row, named FILE.csv#row1, ...), a
    JSON object or list of objects, a JSONL file (one object per line),
    or an inline JSON object; models with
    no preprocessing: a .npy array that is a batch (one prediction per row)
    if it has the model's rank, one item if it has one dimension less.

    A bad input does not stop the others: it is reported on stderr as
    "error: INPUT: why", and the exit code is 2.

    Examples:

      forwardpass predict mobilenet_v2 samples/images/china.jpg --top-k 3

      forwardpass predict digits_cnn samples/digits/*.png --json

      forwardpass predict silero_vad speech.wav

      forwardpass predict breast_cancer samples/records/breast_cancer.csv

      forwardpass predict diabetes samples/records/diabetes.json --json

      forwardpass predict path/to/model.onnx batch.npy --json

      forwardpass predict my_model a.jpg -r /srv/models --version 2

      forwardpass predict pipeline.joblib records.csv --trust-pickle

      forwardpass predict cancer_triage samples/records/cancer_triage.csv --explain
    """
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    pipeline = find_pipeline(model, repository)
    if pipeline is not None and explain:
        raise InputError(f"--explain explains one model; '{model}' is a pipeline of models")
    loaded: Model | Ensemble
    if pipeline is not None:
        loaded = load_pipeline(pipeline)
    else:
        loaded = open_model(model, repository, version, serve=serve, trust_pickle=trust_pickle)
    try:
        items = decode_inputs(inputs, loaded.config, loaded.inputs, whole_items=loaded.whole_items)
        outcomes = run(loaded, items, top_k)
        if explain:
            assert isinstance(loaded, Model)  # a pipeline was refused above
            outcomes = _explained(loaded, items, outcomes)
        if draw is not None:
            outcomes = _drawn(items, outcomes, draw)
        failures = _report(items, outcomes, as_json)
    finally:
        loaded.close()
    if failures:
        raise typer.Exit(max(error.exit_code for error in failures))


def run(model: Model | Ensemble, items: Sequence[Item], top_k: int | None) -> Iterator[Outcome]:
    """One outcome per item, in order, a batch at a time (memory stays bounded and results show as they come)."""
    for start in range(0, len(items), model.batch_size):
        yield from _run_batch(model, items[start : start + model.batch_size], top_k)


def _run_batch(model: Model | Ensemble, items: Sequence[Item], top_k: int | None) -> list[Outcome]:
    """Items that failed to decode keep their error; the others get the model's per-item outcome."""
    good = [i for i, item in enumerate(items) if item.error is None]
    results = dict(zip(good, model.predict_each([items[i].raw for i in good], top_k=top_k), strict=True))
    return [results[i] if item.error is None else item.error for i, item in enumerate(items)]


def _drawn(items: Sequence[Item], outcomes: Iterable[Outcome], target: Path) -> Iterator[Outcome]:
    """Each outcome as it was, its findings drawn on its image and written as a PNG (named in `drawing`)."""
    from PIL import Image

    from forwardpass.pipeline.draw import draw

    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, ForwardpassError) or not isinstance(item.raw, str | Path):
            yield outcome
            continue
        path = target if len(items) == 1 else target.with_name(f"{target.stem}-{Path(item.name).stem}.png")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            draw(Image.open(item.raw), outcome).save(path, format="PNG")
        except ForwardpassError as exc:
            yield exc
            continue
        except OSError as exc:
            yield InputError(f"--draw: cannot write {path} ({exc.strerror or exc})")
            continue
        yield {**outcome, "drawing": str(path)}


def _explained(model: Model, items: Sequence[Item], outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
    """Each prediction with its `explanation`; an image's saliency map goes to a PNG file, named in its place."""
    from forwardpass.explain import explain
    from forwardpass.measure.plots import saliency_overlay

    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, ForwardpassError):
            yield outcome
            continue
        try:
            explanation = explain(model, item.raw, outcome)
        except ForwardpassError as exc:
            yield exc
            continue
        saliency = explanation.pop("saliency", None)
        if saliency is not None:
            png = Path(Path(item.name).name).with_suffix(".saliency.png")
            title = f"{model.name}: {Path(item.name).name} → {outcome.get('label', explanation['output'])}"
            saliency_overlay(png, _as_seen(model, item.raw), saliency, explanation["output"], title)
            explanation["saliency_png"] = str(png)
        yield {**outcome, "explanation": explanation}


def _as_seen(model: Model, raw: object) -> np.ndarray:
    """An image item after the model's preprocessing, as H x W (one channel) or H x W x C, for drawing."""
    config = model.config.preprocess
    name = getattr(config, "input", None) or model.inputs[0].name
    array = np.asarray(model.preprocess(raw)[name])
    if getattr(config, "layout", "NCHW") == "NCHW":
        array = np.moveaxis(array, 0, -1)
    return array[..., 0] if array.shape[-1] == 1 else array


def _report(items: Sequence[Item], outcomes: Iterable[Outcome], as_json: bool) -> list[ForwardpassError]:
    console = Console(soft_wrap=True, highlight=False)
    failures = []
    embedded: list[tuple[str, list[float]]] = []
    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, ForwardpassError):
            failures.append(outcome)
            typer.secho(f"error: {_located(item.name, outcome)}", fg=typer.colors.RED, err=True)
        elif as_json:
            line = orjson.dumps({"input": utf8_text(item.name), **outcome}, option=orjson.OPT_SERIALIZE_NUMPY)
            sys.stdout.buffer.write(line + b"\n")
            sys.stdout.buffer.flush()
        else:
            console.print(Text(item.name, style="bold"))
            for row in describe(outcome):
                console.print(Text("  " + row))
            if "embedding" in outcome and len(embedded) < SIMILARITY_ITEMS:
                embedded.append((item.name, outcome["embedding"]))
    for row in _similarities(embedded):
        console.print(Text(row))
    return failures


def _similarities(embedded: list[tuple[str, list[float]]]) -> list[str]:
    """With several embeddings listed, how alike each pair is says more than their numbers (the first
    SIMILARITY_ITEMS only: the pairs grow with the square)."""
    pairs = list(itertools.combinations(embedded, 2))
    if not pairs:
        return []
    rows = ["cosine similarity:"]
    for (first, a), (second, b) in pairs:
        u, v = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        cosine = float(u @ v) / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-12)
        rows.append(f"  {cosine:+.4f}  {first}  ~  {second}")
    return rows


def _located(name: str, error: ForwardpassError) -> str:
    # The image decoder's messages already quote the file as typed: naming it twice would read badly.
    message = str(error)
    return message if f"'{name}'" in message else f"{name}: {message}"


# --- the human listing ---------------------------------------------------------------------------------------------


def describe(prediction: Prediction) -> list[str]:
    """Lines for one prediction: ranked classes, a value, an embedding summary, an anomaly score, a cluster,
    recommended items or raw outputs; then the decision's action and the explanation, where there are."""
    return [*_result(prediction), *_decision(prediction), *_explanation(prediction.get("explanation"))]


def _result(prediction: Prediction) -> list[str]:
    if "top_k" in prediction:
        return _ranked(prediction["top_k"])
    if "value" in prediction:
        return [f"value: {_numbers(prediction['value'])}"]
    if "embedding" in prediction:
        return [_embedding(prediction["embedding"])]
    if "anomaly_score" in prediction:
        return [f"anomaly: {'yes' if prediction['anomaly'] else 'no'}  (score {_number(prediction['anomaly_score'])})"]
    if "cluster" in prediction:
        return [f"cluster: {prediction['label']}  (distance {_number(prediction['distance'])})"]
    if "items" in prediction:
        return [
            f"{rank:>3}  {entry['item']}  {entry['score']:.4f}" for rank, entry in enumerate(prediction["items"], 1)
        ]
    if "segments" in prediction:
        return _speech(prediction["segments"], prediction["duration"])
    if "outputs" in prediction:
        return [_raw(name, value) for name, value in prediction["outputs"].items()]
    if any(key in prediction for key in FOUND):
        return _found(prediction)
    return [f"{key}: {value}" for key, value in prediction.items()]


def _speech(segments: list[dict[str, float]], duration: float) -> list[str]:
    """One line per speech segment, in seconds to the millisecond (--json gives them exactly)."""
    lines = [f"speech {segment['start']:.3f} s to {segment['end']:.3f} s" for segment in segments]
    return [*(lines or ["no speech"]), f"({duration:.3f} s of audio)"]


def _found(prediction: Prediction) -> list[str]:
    """One line per detection, text box or pipeline region: what it is, its score, where."""
    shapes: list[dict[str, Any]] = next(prediction[key] for key in FOUND if key in prediction)
    lines = []
    for shape in shapes:
        where = shape.get("box", shape.get("points"))
        what = shape.get("text", shape.get("label", "text"))
        score = shape.get("score", shape.get("box_score", 0.0))
        lines.append(f"{what!s}  {score:.4f}  at {np.round(np.asarray(where, dtype=np.float64), 1).tolist()}")
    drawing = [f"drawn: {prediction['drawing']}"] if "drawing" in prediction else []
    return (lines or ["nothing found"]) + drawing


def _decision(prediction: Prediction) -> list[str]:
    return [f"action: {prediction['action']}  (rule: {prediction['rule']})"] if "action" in prediction else []


def _explanation(explanation: dict[str, Any] | None) -> list[str]:
    if explanation is None:
        return []
    if "saliency_png" in explanation:
        return [f"saliency of {explanation['output']}: {explanation['saliency_png']}"]
    lines = [f"why {explanation['output']}: base value {explanation['base_value']:.6g} ({explanation['method']})"]
    ranked = sorted(explanation["attributions"].items(), key=lambda pair: -abs(pair[1]))
    shown = ranked[:EXPLAINED]
    width = max(len(name) for name, _ in shown)
    lines += [f"  {name:<{width}}  {value:+.4g}" for name, value in shown]
    if len(ranked) > len(shown):
        rest = sum(value for _, value in ranked[len(shown) :])
        lines.append(f"  ({len(ranked) - len(shown)} more columns: {rest:+.4g} together; --json lists them all)")
    return lines


def _ranked(ranked: list[dict[str, Any]]) -> list[str]:
    width = max(len(str(entry["label"])) for entry in ranked)
    return [f"{rank:>3}  {entry['label']!s:<{width}}  {entry['score']:.4f}" for rank, entry in enumerate(ranked, 1)]


def _embedding(vector: list[float]) -> str:
    norm = float(np.linalg.norm(np.asarray(vector, dtype=np.float64)))
    return f"embedding: {len(vector)} dims  {_preview(vector)}  L2 norm {norm:.4f}"


def _raw(name: str, value: object) -> str:
    array = np.asarray(value)
    return f"{name}: shape {list(array.shape)}  {_preview(array.reshape(-1).tolist())}"


def _preview(values: list[Any]) -> str:
    shown = ", ".join(_number(v) for v in values[:PREVIEW])
    return f"[{shown}{', ...' if len(values) > PREVIEW else ''}]"


def _numbers(value: object) -> str:
    return ", ".join(_number(v) for v in value) if isinstance(value, list) else _number(value)


def _number(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def register(app: typer.Typer) -> None:
    app.command()(predict)
