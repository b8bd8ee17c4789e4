"""`forwardpass bench`: throughput and latency in process (beside raw ONNX Runtime), against a server, and in
MLPerf LoadGen's scenarios; with accuracy beside speed for each precision, and a report on disk.

This module is the command: its options, the choice between its three runs, and what it prints and saves. The runs
live beside it: `bench_local` (in process), `bench_server` (--url) and `bench_mlperf` (--mlperf, either way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from forwardpass.cli.bench_local import bench_local
from forwardpass.cli.bench_server import bench_server
from forwardpass.cli.common import AS_JSON, REPOSITORY, TRUST_PICKLE, VERSION, make_output_folder, output_option
from forwardpass.cli.reporting import ms, print_json, text_list
from forwardpass.errors import InputError
from forwardpass.measure import machine_info, mlperf
from forwardpass.measure.report import configuration, mlperf_figure, save_bench

__all__ = ["bench_command", "register"]

ENGINES = (("forwardpass", "ours"), ("onnxruntime", "raw ORT"))
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


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
    if out is not None:
        make_output_folder(out)
    machine = machine_info()
    console = Console()
    if not as_json:
        console.print(_machine_line(machine), highlight=False)
    if url is not None:
        data = bench_server(name, url, concurrency, rate, encoding, clients, duration, scenarios, out, machine)
        latencies: dict[str, list[float]] = {}
    else:
        data, latencies = bench_local(
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
