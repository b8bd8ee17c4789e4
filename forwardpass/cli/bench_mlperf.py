"""`forwardpass bench --mlperf SCENARIOS`: MLPerf LoadGen's scenarios, on the model in this process or on a server
over HTTP; LoadGen's logs go to the output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forwardpass.cli.reporting import progress
from forwardpass.errors import InputError
from forwardpass.measure import mlperf
from forwardpass.measure.datasets import Dataset
from forwardpass.measure.evaluate import label_set
from forwardpass.measure.payload import Target
from forwardpass.measure.speed import random_inputs
from forwardpass.model import Model
from forwardpass.tensor import TensorSpec

__all__ = ["MLPERF_SAMPLES", "mlperf_in_process", "mlperf_over_http"]

MLPERF_SAMPLES = 256


def mlperf_in_process(
    model: Model, dataset: Dataset | None, scenarios: list[str], duration: float, out: Path
) -> list[dict[str, Any]]:
    """LoadGen's scenarios on `model` in this process, on --eval items (accuracy mode too) or random inputs."""
    labels = label_set(model)
    samples: list[mlperf.Sample] = []
    if dataset is not None:
        for example in dataset.examples[:MLPERF_SAMPLES]:
            try:
                inputs = model.preprocess(example.raw)
            except InputError:
                continue  # eval reports such items; LoadGen needs valid samples only
            label = labels.index(example.label) if labels and example.label in labels else None
            samples.append(mlperf.Sample(inputs, label))
    else:
        batch = random_inputs(model.inputs, 64)
        samples = [mlperf.Sample({k: v[i] for k, v in batch.items()}) for i in range(64)]
    modes: tuple[mlperf.Mode, ...] = ("performance", "accuracy") if dataset is not None else ("performance",)
    with progress() as bar:
        task = bar.add_task(f"MLPerf {model.name}", total=len(scenarios) * len(modes))
        results = mlperf.run_scenarios(
            mlperf.InProcess(model),
            samples,
            out,
            scenarios=scenarios,
            modes=modes,
            seconds=min(duration, 10.0),
            classify=labels is not None,
            on_done=lambda result: bar.update(task, advance=1, description=f"MLPerf {result.scenario}"),
        )
    return [{"system": "in process", **result.to_dict()} for result in results]


def mlperf_over_http(
    target: Target,
    specs: list[TensorSpec],
    clients: int,
    scenarios: list[str],
    duration: float,
    out: Path,
) -> list[dict[str, Any]]:
    """LoadGen's scenarios against a V2 server over HTTP, on random inputs of the model's shapes."""
    if target.protocol != "http":
        raise InputError("--mlperf against a server speaks HTTP: give an http:// --url")
    batch = random_inputs(specs, 64)
    samples = [mlperf.Sample({k: v[i] for k, v in batch.items()}) for i in range(64)]
    with mlperf.OverHttp(target.url, target.model, connections=max(1, clients * 2)) as system:
        results = mlperf.run_scenarios(system, samples, out, scenarios=scenarios, seconds=min(duration, 10.0))
    return [{"system": target.url, **result.to_dict()} for result in results]
