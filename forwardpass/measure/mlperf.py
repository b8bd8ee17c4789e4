"""MLPerf Inference scenarios through MLCommons' own LoadGen (`mlcommons-loadgen`), on a model in process or on
a KServe V2 server.

    SingleStream   one sample per query, the next when it is answered          metric: 90th percentile latency
    MultiStream    8 samples per query, the next when all are answered        metric: 99th percentile latency
    Server         queries arrive at a target rate (Poisson) under a latency bound  metric: samples per second
    Offline        every sample at once                                        metric: samples per second

LoadGen decides what to send and when, and judges the run; its own summary file (`mlperf_log_summary.txt`, with
"Result is : VALID" or the reasons it is not) is kept in each scenario's folder and copied into the report. Its
settings are sized from a short calibration of the system under test, because LoadGen calls a run INVALID when the
expected latency or rate is far from the real one (too cautious settings end a run early). Accuracy mode runs every
sample once, logs each answer (the top-1 class index of a classifier) and scores it against the labels.
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forwardpass.errors import InputError, MissingExtraError
from forwardpass.measure.payload import Target
from forwardpass.model import Model
from forwardpass.pipeline import Arrays
from forwardpass.tensor import DataType

__all__ = ["SCENARIOS", "InProcess", "OverHttp", "Sample", "ScenarioResult", "parse_summary", "run_scenarios"]

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
Mode = Literal["performance", "accuracy"]
MULTI_STREAM_SAMPLES = 8
# LoadGen's early stopping judges the Server scenario's 99th percentile only after ~460 queries (all in bound)
SERVER_MIN_QUERIES = 512
SUMMARY_FILE = "mlperf_log_summary.txt"
ACCURACY_FILE = "mlperf_log_accuracy.json"


@dataclass(frozen=True, slots=True)
class Sample:
    inputs: Arrays  # one item, no batch dimension
    label: int | None = None  # class index, for accuracy mode


class InProcess:
    """The system under test is `Model.forward` in this process; queued samples are batched up to the model's size."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.batch_size = model.batch_size
        self.name = f"{model.name} (in process)"

    def run(self, items: Sequence[Arrays]) -> list[np.ndarray]:
        outputs = self.model.forward(self.model.pipeline.feeds(self.model.pipeline.collate(items)))
        first = next(iter(outputs.values()))
        return [first[i] for i in range(len(items))]


class OverHttp:
    """The system under test is a V2 server: one binary-tensor request per sample, `connections` at a time."""

    def __init__(self, url: str, model: str, connections: int = 4) -> None:
        self.url, self.model = url.rstrip("/"), model
        self.address = Target(url, model).address
        self.batch_size = connections
        self.name = f"{model} at {url}"
        self.pool = ThreadPoolExecutor(connections)
        self.local = threading.local()
        self.connections: list[http.client.HTTPConnection] = []  # every thread's, so close() can reach them
        self.lock = threading.Lock()

    def __enter__(self) -> OverHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the pool's threads, then close their connections (else their sockets leak until GC)."""
        self.pool.shutdown(wait=True)
        with self.lock:
            connections, self.connections = self.connections, []
        for connection in connections:
            connection.close()

    def _one(self, item: Arrays) -> np.ndarray:
        import orjson

        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection(*self.address, timeout=30)
            with self.lock:
                self.connections.append(connection)
        tensors, chunks = [], []
        for name, array in item.items():
            raw = np.ascontiguousarray(array[None]).tobytes()
            datatype = DataType.from_numpy(array.dtype).name
            tensors.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": [1, *array.shape],
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
            chunks.append(raw)
        head = orjson.dumps({"inputs": tensors})
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
        connection.request("POST", f"/v2/models/{self.model}/infer", head + b"".join(chunks), headers)
        answer = connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise InputError(f"{self.url} answered {answer.status}: {body[:200].decode(errors='replace')}")
        output = orjson.loads(body)["outputs"][0]
        return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"][1:])

    def run(self, items: Sequence[Arrays]) -> list[np.ndarray]:
        return list(self.pool.map(self._one, items))


System = InProcess | OverHttp


@dataclass(slots=True)
class ScenarioResult:
    scenario: str
    mode: Mode
    result: str | None  # "VALID" / "INVALID" (performance mode)
    metric_name: str | None
    metric: float | None
    summary: str  # LoadGen's own summary file, verbatim
    folder: str
    settings: dict[str, float | int]
    accuracy: float | None = None  # accuracy mode: top-1 of the logged answers
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "mode": self.mode,
            "result": self.result,
            "metric_name": self.metric_name,
            "metric": self.metric,
            "accuracy": self.accuracy,
            "samples": self.samples,
            "settings": self.settings,
            "folder": self.folder,
            "summary": self.summary,
        }


def parse_summary(text: str) -> dict[str, str]:
    """`key : value` lines of a LoadGen summary, e.g. {"Result is": "VALID", "Samples per second": "123.4"}."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator and key.strip() and value.strip():
            fields.setdefault(key.strip(), value.strip())
    return fields


# The headline figure LoadGen prints for each scenario, by the key of its summary line.
METRICS = {
    "SingleStream": "90.0th percentile latency (ns)",
    "MultiStream": "99.0th percentile latency (ns)",
    "Server": "Completed samples per second",
    "Offline": "Samples per second",
}


class _Runner:
    """Feeds LoadGen's queries to the system on one worker thread, batching what has queued."""

    def __init__(self, system: System, samples: Sequence[Sample], classify: bool) -> None:
        self.system, self.samples, self.classify = system, samples, classify
        self.queue: queue.Queue[Any] = queue.Queue()
        self.failure: BaseException | None = None
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    def issue(self, query_samples: Sequence[Any]) -> None:
        for query_sample in query_samples:
            self.queue.put(query_sample)

    def _work(self) -> None:
        import mlperf_loadgen as lg

        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.system.batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                batch.remove(None)
                self.queue.put(None)
            try:
                outputs = self.system.run([self.samples[q.index].inputs for q in batch])
            except BaseException as exc:  # reported after the run; LoadGen must still get an answer
                self.failure = self.failure or exc
                outputs = [np.zeros(1, np.float32)] * len(batch)
            answers = [self._answer(output) for output in outputs]
            responses = [
                lg.QuerySampleResponse(q.id, answer.ctypes.data, answer.nbytes)
                for q, answer in zip(batch, answers, strict=True)
            ]
            lg.QuerySamplesComplete(responses)

    def _answer(self, output: np.ndarray) -> np.ndarray:
        """What the accuracy log records: a classifier's top-1 index, else the output's first values."""
        if self.classify:
            return np.array([int(np.argmax(output))], dtype=np.int64)
        return np.ascontiguousarray(output.reshape(-1)[:16], dtype=np.float32)

    def close(self) -> None:
        self.queue.put(None)
        self.worker.join(timeout=30)


def _calibrate(system: System, samples: Sequence[Sample]) -> tuple[float, float]:
    """(seconds per single sample, samples per second in full batches), from a few timed runs."""
    single = []
    for i in range(min(20, max(5, len(samples)))):
        start = time.perf_counter()
        system.run([samples[i % len(samples)].inputs])
        single.append(time.perf_counter() - start)
    batch = [samples[i % len(samples)].inputs for i in range(system.batch_size)]
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or time.perf_counter() - start < 0.2:
        system.run(batch)
        rounds += 1
    return float(np.median(single)), rounds * len(batch) / (time.perf_counter() - start)


def _settings(lg: Any, scenario: str, mode: Mode, latency: float, rate: float, seconds: float, count: int) -> Any:
    settings = lg.TestSettings()
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(seconds * 1000)
    settings.max_duration_ms = int(seconds * 1000 * 4)
    settings.performance_sample_count_override = count
    ns = max(int(latency * 1e9), 1000)
    if scenario == "SingleStream":
        settings.single_stream_expected_latency_ns = ns
        settings.min_query_count = 64
    elif scenario == "MultiStream":
        settings.multi_stream_expected_latency_ns = ns * MULTI_STREAM_SAMPLES
        settings.multi_stream_samples_per_query = MULTI_STREAM_SAMPLES
        settings.min_query_count = 64
    elif scenario == "Server":
        # a quarter of the batched capacity (each query also pays LoadGen's and Python's per-query cost), under a
        # generous bound: a valid run on a shared, noisy machine
        settings.server_target_qps = max(1.0, 0.25 * rate)
        settings.server_target_latency_ns = max(20 * ns, 50_000_000)
        settings.min_query_count = SERVER_MIN_QUERIES
    else:
        settings.offline_expected_qps = max(1.0, rate)
        settings.min_query_count = 1
    return settings


def _recorded(settings: Any) -> dict[str, float | int]:
    names = (
        "min_duration_ms",
        "min_query_count",
        "single_stream_expected_latency_ns",
        "server_target_qps",
        "server_target_latency_ns",
        "multi_stream_expected_latency_ns",
        "multi_stream_samples_per_query",
        "offline_expected_qps",
    )
    return {name: getattr(settings, name) for name in names}


def _accuracy(folder: Path, samples: Sequence[Sample]) -> tuple[float | None, int]:
    """Top-1 accuracy of the logged answers (each an int64 class index), and how many answers were logged."""
    entries = json.loads((folder / ACCURACY_FILE).read_text(encoding="utf-8") or "[]")
    hits = [
        int(np.frombuffer(bytes.fromhex(entry["data"]), np.int64)[0]) == samples[entry["qsl_idx"]].label
        for entry in entries
        if samples[entry["qsl_idx"]].label is not None
    ]
    return (float(np.mean(hits)) if hits else None), len(entries)


def run_scenarios(
    system: System,
    samples: Sequence[Sample],
    out: Path,
    *,
    scenarios: Sequence[str] = SCENARIOS,
    modes: Sequence[Mode] = ("performance",),
    seconds: float = 1.0,
    classify: bool = False,
    on_done: Callable[[ScenarioResult], None] | None = None,
) -> list[ScenarioResult]:
    """Run each scenario in each mode through LoadGen; each run writes its logs to `out/<scenario>-<mode>/`."""
    try:
        import mlperf_loadgen as lg
    except ImportError:
        raise MissingExtraError("mlcommons-loadgen", "measure") from None
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise InputError(f"unknown MLPerf scenario(s) {unknown}; use {', '.join(SCENARIOS)}")
    if not samples:
        raise InputError("MLPerf needs at least one sample")
    if "accuracy" in modes and classify and all(sample.label is None for sample in samples):
        raise InputError("accuracy mode needs labelled samples: give --eval DATA")
    latency, rate = _calibrate(system, samples)
    results = []
    for scenario in scenarios:
        for mode in modes:
            folder = out / f"{scenario}-{mode}"
            folder.mkdir(parents=True, exist_ok=True)
            settings = _settings(lg, scenario, mode, latency, rate, seconds, len(samples))
            log = lg.LogSettings()
            log.log_output.outdir = str(folder)
            log.log_output.copy_summary_to_stdout = False
            runner = _Runner(system, samples, classify)
            sut = lg.ConstructSUT(runner.issue, lambda: None)
            qsl = lg.ConstructQSL(len(samples), len(samples), lambda indices: None, lambda indices: None)
            try:
                lg.StartTestWithLogSettings(sut, qsl, settings, log)
            finally:
                runner.close()
                lg.DestroyQSL(qsl)
                lg.DestroySUT(sut)
            if runner.failure is not None:
                raise InputError(f"MLPerf {scenario}: {system.name} failed: {runner.failure}") from None
            summary = (folder / SUMMARY_FILE).read_text(encoding="utf-8") if mode == "performance" else ""
            fields = parse_summary(summary)
            metric_name = METRICS[scenario] if mode == "performance" else None
            metric = _float(fields.get(metric_name or ""))
            accuracy, logged = _accuracy(folder, samples) if mode == "accuracy" else (None, 0)
            result = ScenarioResult(
                scenario,
                mode,
                fields.get("Result is"),
                metric_name,
                metric,
                summary,
                str(folder),
                _recorded(settings),
                accuracy,
                logged,
            )
            results.append(result)
            if on_done:
                on_done(result)
    return results


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
