"""`forwardpass bench`: throughput and latency in process (beside raw ONNX Runtime), against a server, and in
MLPerf LoadGen's scenarios; with accuracy beside speed for each precision, and a report on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from forwardpass.cli.common import AS_JSON, REPOSITORY, TRUST_PICKLE, VERSION, open_model, output_option
from forwardpass.cli.reporting import float_list, int_list, ms, print_json, progress, text_list
from forwardpass.errors import InputError
from forwardpass.measure import (
    RawSession,
    RoundDone,
    SpeedPoint,
    bench,
    evaluate,
    loadgen,
    machine_info,
    mlperf,
    open_dataset,
)
from forwardpass.measure.datasets import Dataset
from forwardpass.measure.evaluate import label_set
from forwardpass.measure.report import configuration, mlperf_figure, save_bench
from forwardpass.measure.speed import random_inputs
from forwardpass.measure.variants import DEFAULT_PRECISION, precision_of, variants
from forwardpass.model import Model

__all__ = ["bench_command", "register"]

ENGINES = (("forwardpass", "ours"), ("onnxruntime", "raw ORT"))
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)
MLPERF_SAMPLES = 256


def bench_command(
    model: str | None = typer.Argument(
        None,
        metavar="MODEL",
        help="A model name in the repository, a model folder, or a model file.",
        show_default=False,
    ),
    model_option: str | None = typer.Option(
        None, "--model", "-m", help="The model (the same as MODEL; reads better with --url).", show_default=False
    ),
    batch_sizes: str = typer.Option(
        "1,8,32", "--batch-size", "-b", metavar="LIST", help="Batch sizes to time, comma-separated."
    ),
    threads: str | None = typer.Option(
        None,
        "--threads",
        metavar="LIST",
        help="ONNX Runtime intra-op thread counts to time, comma-separated (default: the model's config).",
        show_default=False,
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        "-p",
        metavar="LIST",
        help="Comma-separated precisions (fp32,int8,...): the model's versions whose"
        " precision.json says so (fp32: a version without one).",
        show_default=False,
    ),
    duration: float = typer.Option(3.0, "--duration", help="Seconds of timed load per configuration (per engine)."),
    warmup: float = typer.Option(0.5, "--warmup", help="Seconds of untimed calls first, per batch size and engine."),
    eval_data: Path | None = typer.Option(
        None,
        "--eval",
        help="Labelled data (as for `forwardpass eval`): accuracy beside speed, per precision.",
        show_default=False,
    ),
    label_column: str | None = typer.Option(
        None, "--label-column", help="Label column of --eval data.", show_default=False
    ),
    url: str | None = typer.Option(
        None,
        "--url",
        help="Load a running V2 server instead: http://HOST:PORT or grpc://HOST:PORT.",
        show_default=False,
    ),
    concurrency: str = typer.Option("1,4,16", "--concurrency", help="With --url: closed-loop concurrencies."),
    rate: str | None = typer.Option(
        None, "--rate", help="With --url: open-loop request rates per second (Poisson arrivals).", show_default=False
    ),
    encoding: str = typer.Option("binary", "--encoding", help="With --url: json, binary, or both (json,binary)."),
    clients: int = typer.Option(2, "--clients", help="With --url: load generator processes."),
    mlperf_scenarios: str | None = typer.Option(
        None,
        "--mlperf",
        help="MLPerf LoadGen scenarios: all, or some of SingleStream,MultiStream,Server,Offline"
        " (accuracy mode too with --eval).",
        show_default=False,
    ),
    out: Path | None = output_option("Folder for report.json, report.md, PNG plots and LoadGen's logs."),
    as_json: bool = AS_JSON,
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
    trust_pickle: bool = TRUST_PICKLE,
) -> None:
    """Throughput and latency (p50/p90/p99/max) per batch size, thread count and precision, beside raw ONNX
    Runtime on the same file in the same run (alternating rounds, so both share the machine's noise).

    ours/raw is the median of round-by-round throughput ratios (forwardpass over raw ONNX Runtime in rounds run
    back to back): 1.00 means no overhead, 0.95 that forwardpass reached 95 % of raw's throughput. Being a median of
    ratios, it can differ from the ratio of the two medians shown beside it.

    Ctrl-C stops the run: the configurations already finished are printed and, with --output, saved.

    With --url, a running server is loaded by several client processes (closed loop at each --concurrency, open
    loop at each --rate); a figure is refused when the client itself was saturated.

    Examples:

      forwardpass bench mobilenet_v2 --batch-size 1,8 --duration 2

      forwardpass bench digits_cnn --threads 1,2 --precision fp32,int8 --eval data/digits/test -o reports/b

      forwardpass bench --url http://127.0.0.1:8000 --model digits_cnn --concurrency 1,8 --rate 200

      forwardpass bench digits_cnn --mlperf all --eval data/digits/test --duration 1 -o reports/mlperf
    """
    name = model or model_option
    if model and model_option and model != model_option:
        raise InputError(f"two models given: '{model}' and --model '{model_option}'; give one")
    if name is None:
        raise InputError("name the model: forwardpass bench MODEL, or --url URL --model MODEL")
    if duration <= 0 or warmup < 0:
        raise InputError("--duration must be positive and --warmup not negative")
    scenarios = _scenarios(mlperf_scenarios)
    if scenarios and out is None:
        raise InputError("--mlperf keeps LoadGen's logs: give --output DIR")
    machine = machine_info()
    console = Console()
    if not as_json:
        console.print(_machine_line(machine), highlight=False)
    if url is not None:
        data = _bench_server(name, url, concurrency, rate, encoding, clients, duration, scenarios, out, machine)
        latencies: dict[str, list[float]] = {}
    else:
        data, latencies = _bench_local(
            name,
            batch_sizes,
            threads,
            precision,
            duration,
            warmup,
            eval_data,
            label_column,
            scenarios,
            out,
            repository,
            version,
            machine,
            trust_pickle,
        )
    written = save_bench(data, latencies, out) if out is not None else []
    if as_json:
        print_json(data)
    else:
        for table in _tables(data):
            console.print(table)
        if data.get("results"):
            console.print(
                "ours: Model.infer; raw ORT: InferenceSession.run; latencies in ms per call; ours/raw: median of"
                " round-by-round throughput ratios",
                style="dim",
            )
        if written:
            console.print(f"report: {', '.join(str(path) for path in written[:2])} and {len(written) - 2} plot(s)")
    if data.get("interrupted"):
        saved = f"; saved in {out}" if out is not None else "; give --output DIR to keep them"
        typer.echo(f"interrupted: {data['interrupted']} finished before Ctrl-C{saved}", err=True)
        raise typer.Exit(INTERRUPTED)


def _scenarios(text: str | None) -> list[str]:
    if text is None:
        return []
    if text.strip().lower() == "all":
        return list(mlperf.SCENARIOS)
    chosen = text_list(text, "--mlperf")
    unknown = [s for s in chosen if s not in mlperf.SCENARIOS]
    if unknown:
        raise InputError(f"--mlperf: unknown scenario(s) {', '.join(unknown)}; use all or {','.join(mlperf.SCENARIOS)}")
    return chosen


def _bench_local(
    name: str,
    batch_sizes: str,
    threads: str | None,
    precision: str | None,
    duration: float,
    warmup: float,
    eval_data: Path | None,
    label_column: str | None,
    scenarios: list[str],
    out: Path | None,
    repository: Path | None,
    version: int | None,
    machine: dict[str, object],
    trust_pickle: bool,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    sizes = int_list(batch_sizes, "--batch-size")
    thread_counts: list[int | None] = list(int_list(threads, "--threads")) if threads is not None else [None]
    if precision is not None and version is not None:
        raise InputError("--precision picks versions by their precision.json; do not give --version with it")
    chosen = variants(name, text_list(precision, "--precision"), repository) if precision else {"": version}
    dataset = open_dataset(eval_data, label_column) if eval_data is not None else None
    results: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {}
    accuracy: dict[str, Any] = {}
    mlperf_runs: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    interrupted = None
    try:
        for asked, chosen_version in chosen.items():
            for count in thread_counts:
                overrides: dict[str, Any] = {} if count is None else {"intra_op_threads": count}
                loaded = open_model(name, repository, chosen_version, trust_pickle=trust_pickle, **overrides)
                try:
                    label = asked or _precision_label(loaded)
                    points: list[SpeedPoint] = []

                    def record(
                        point: SpeedPoint, model: Model = loaded, label: str = label, points: list[SpeedPoint] = points
                    ) -> dict[str, Any]:
                        row = {
                            "precision": label,
                            "version": model.version,
                            "threads": model.engine.intra_op_threads,
                            **point.to_dict(),
                        }
                        for engine, timing in (("forwardpass", point.ours), ("onnxruntime", point.raw)):
                            latencies[f"{engine} {configuration(row)}"] = [s * 1e3 for s in timing.latencies]
                        points.append(point)
                        results.append(row)  # last: a row in `results` is complete, whenever Ctrl-C comes
                        return row

                    _time(loaded, sizes, duration, warmup, label, record)
                    engine_settings = loaded.engine
                    settings = {
                        "graph_optimization": engine_settings.graph_optimization,
                        "providers": loaded.session.providers,
                    }
                    if count == thread_counts[0]:
                        if dataset is not None:
                            accuracy[label] = _accuracy(loaded, dataset, points)
                        if scenarios and out is not None:
                            mlperf_runs += _mlperf(loaded, dataset, scenarios, duration, out / "mlperf" / label)
                finally:
                    loaded.close()
    except KeyboardInterrupt:
        planned = len(chosen) * len(thread_counts) * len(sizes)
        interrupted = f"{len(results)} of {planned} configurations"
    data: dict[str, Any] = {
        "kind": "bench",
        "model": name,
        "settings": {
            "batch_sizes": sizes,
            "threads": [c for c in thread_counts if c is not None] or "config",
            "precisions": list(dict.fromkeys(r["precision"] for r in results)),
            "duration": duration,
            "warmup": warmup,
            **settings,
        },
        "machine": machine,
        "results": results,
    }
    if accuracy:
        first = next(iter(accuracy.values()))
        data["accuracy"] = {
            "metric": first["metric"],
            "data": str(eval_data),
            "batch_size": max(sizes),
            "by_precision": accuracy,
        }
    if mlperf_runs:
        data["mlperf"] = mlperf_runs
    if interrupted:
        data["interrupted"] = interrupted
    return data, latencies


def _precision_label(model: Model) -> str:
    return precision_of(model.entry.artefact.parent) if model.version is not None else DEFAULT_PRECISION


def _time(
    model: Model,
    sizes: list[int],
    duration: float,
    warmup: float,
    label: str,
    record: Callable[[SpeedPoint], dict[str, Any]],
) -> None:
    """Each batch size timed and `record`ed as soon as it is measured (so that Ctrl-C keeps the finished ones)."""
    raw = RawSession(model)
    threads = model.engine.intra_op_threads or "default"
    with progress() as bar:
        for size in sizes:
            task = bar.add_task(f"{label} t{threads} batch {size}", total=2 * (warmup + duration))

            def show(done: RoundDone, task: Any = task, size: int = size) -> None:
                step = "warm-up" if done.phase == "warmup" else f"round {done.index + 1}/{done.rounds}"
                speed = f"{done.items_per_second:,.0f} items/s"
                description = f"{label} t{threads} batch {size} {done.name} {step}: {speed}"
                bar.update(task, advance=done.seconds, description=description)

            for point in bench(model, [size], seconds=duration, warmup_seconds=warmup, on_round=show, raw=raw):
                row = record(point)
                # one line per finished configuration, above the bar (and in logs, where no bar is drawn)
                ours, theirs = point.ours.throughput, point.raw.throughput
                bar.console.print(f"measured {configuration(row)}: {ours:,.0f} items/s (raw ORT {theirs:,.0f})")


def _accuracy(model: Model, dataset: Dataset, points: list[SpeedPoint]) -> dict[str, Any]:
    report = evaluate(model, dataset)
    metric, value = report.rows[0]
    fastest = max(points, key=lambda point: point.batch_size)
    return {
        "version": model.version,
        "metric": metric,
        "value": value,
        "throughput": fastest.ours.throughput,
        "n": report.n,
        "bad": report.bad,
    }


def _mlperf(
    model: Model, dataset: Dataset | None, scenarios: list[str], duration: float, out: Path
) -> list[dict[str, Any]]:
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


def _bench_server(
    name: str,
    url: str,
    concurrency: str,
    rate: str | None,
    encoding: str,
    clients: int,
    duration: float,
    scenarios: list[str],
    out: Path | None,
    machine: dict[str, object],
) -> dict[str, Any]:
    target = loadgen.Target(url, name)
    encodings = text_list(encoding, "--encoding")
    bad = [e for e in encodings if e not in ("json", "binary")]
    if bad:
        raise InputError(f"--encoding: {', '.join(bad)}? use json, binary or json,binary")
    loads: list[tuple[loadgen.Mode, float]] = [("closed", c) for c in int_list(concurrency, "--concurrency")]
    loads += [("open", r) for r in float_list(rate, "--rate")] if rate else []
    specs = loadgen.model_inputs(target)
    runs: list[dict[str, Any]] = []
    interrupted = None
    try:
        with progress() as bar:
            task = bar.add_task(f"{name} at {url}", total=len(encodings) * len(loads))
            for chosen in encodings:
                payload = loadgen.build_payload(target, specs, chosen)  # type: ignore[arg-type]
                for mode, load in loads:
                    bar.update(task, description=f"{mode} loop {load:g} ({chosen})")
                    if mode == "closed":
                        result = loadgen.run_closed_loop(target, payload, int(load), duration, clients)
                    else:
                        result = loadgen.run_open_loop(target, payload, load, duration, clients)
                    runs.append(result.to_dict())
                    bar.advance(task)
    except KeyboardInterrupt:
        interrupted = f"{len(runs)} of {len(encodings) * len(loads)} loads"
    data: dict[str, Any] = {
        "kind": "bench",
        "model": name,
        "settings": {"url": url, "duration": duration, "clients": clients, "encodings": encodings},
        "machine": machine,
        "server": {"url": url, "model": name, "runs": runs},
    }
    if interrupted:
        data["interrupted"] = interrupted
        return data
    if scenarios and out is not None:
        if target.protocol != "http":
            raise InputError("--mlperf against a server speaks HTTP: give an http:// --url")
        batch = random_inputs(specs, 64)
        samples = [mlperf.Sample({k: v[i] for k, v in batch.items()}) for i in range(64)]
        system = mlperf.OverHttp(url, name, connections=max(1, clients * 2))
        results = mlperf.run_scenarios(
            system, samples, out / "mlperf" / "server", scenarios=scenarios, seconds=min(duration, 10.0)
        )
        data["mlperf"] = [{"system": url, **result.to_dict()} for result in results]
    return data


def _machine_line(machine: dict[str, object]) -> str:
    isa = " ".join(map(str, machine["isa"])) if isinstance(machine["isa"], list) else ""
    providers = machine["providers"] if isinstance(machine["providers"], list) else []
    gpus = machine.get("gpu")
    return (
        f"machine: {machine['cpu']}, {machine['usable_cores']} of {machine['logical_cores']} cores usable,"
        f" {isa or 'no AVX2'}"
        + (f", GPU {', '.join(map(str, gpus))}" if isinstance(gpus, list) and gpus else "")
        + "\n"
        f"software: onnxruntime {machine['onnxruntime']}, numpy {machine['numpy']}, python {machine['python']};"
        f" providers {', '.join(str(p).removesuffix('ExecutionProvider') for p in providers)}"
    )


def _table(title: str, columns: list[str], left: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right", no_wrap=True)
    return table


def _tables(data: dict[str, Any]) -> list[Table]:
    tables = []
    results = data.get("results") or []
    if results:
        columns = ["config", "engine", "items/s", "p50", "p90", "p99", "max", "ours/raw"]
        table = _table(data["model"], columns, left=("config", "engine"))
        for row in results:
            config = configuration(row)
            for engine, shown in ENGINES:
                latency = row[engine]["latency_ms"]
                first = engine == "forwardpass"
                throughput = row[engine]["throughput"]
                table.add_row(
                    config if first else "",
                    shown,
                    f"{throughput:,.0f}" if throughput >= 100 else f"{throughput:.2f}",
                    *map(ms, (latency["p50"], latency["p90"], latency["p99"], latency["max"])),
                    f"{row['ratio']:.3f}" if first else "",
                    end_section=not first,
                )
        tables.append(table)
    accuracy = data.get("accuracy")
    if accuracy:
        columns = ["precision", "version", accuracy["metric"], f"items/s (batch {accuracy['batch_size']})"]
        table = _table(f"accuracy beside speed ({accuracy['data']})", columns, left=("precision",))
        for label, entry in accuracy["by_precision"].items():
            table.add_row(label, str(entry["version"]), f"{entry['value']:.4f}", f"{entry['throughput']:,.0f}")
        tables.append(table)
    server = data.get("server")
    if server:
        columns = ["mode", "load", "encoding", "req/s", "p50", "p99", "errors", "client CPU"]
        table = _table(f"{server['model']} at {server['url']}", columns, left=("mode", "encoding"))
        table.caption = "\n".join(
            f"refused ({run['mode']} {run['load']:g}, {run['encoding']}): {run['refused']}"
            for run in server["runs"]
            if run["refused"]
        )
        for run in server["runs"]:
            latency = run["latency_ms"] or {}
            table.add_row(
                run["mode"],
                f"{run['load']:g}" + ("/s" if run["mode"] == "open" else ""),
                run["encoding"],
                f"{run['throughput']:,.0f}" if run["reported"] else "refused",
                *(ms(latency[k]) if k in latency else "-" for k in ("p50", "p99")),
                str(run["errors"]),
                f"{run['client_cpu_max']:.0%}",
            )
        tables.append(table)
    runs = data.get("mlperf") or []
    if runs:
        columns = ["scenario", "mode", "result", "figure", "value"]
        table = _table(f"MLPerf LoadGen ({runs[0]['system']})", columns, left=("scenario", "mode", "result", "figure"))
        for run in runs:
            name, value = mlperf_figure(run)
            if value is None:
                shown = "-"
            elif "(ms)" in name:
                shown = ms(value)
            else:
                shown = f"{value:.4f}" if name.endswith("accuracy") else f"{value:,.0f}"
            result = str(run["result"]) if run["mode"] == "performance" else f"{run['samples']} logged"
            table.add_row(run["scenario"], run["mode"], result, name, shown)
        tables.append(table)
    return tables


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
