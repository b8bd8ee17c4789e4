"""Reports on disk: `<out>/<name>.json` (every figure), `<out>/<name>.md` (for people) and PNG plots beside them.

    eval   report.json  report.md  confusion_matrix.png  per_class.png  calibration.png
    bench  report.json  report.md  latency_distribution.png  throughput_vs_batch_size.png
           latency_vs_throughput.png  accuracy_vs_throughput.png (with --eval)  server_*.png (with --url)

A report's JSON carries `"kind": "eval" | "bench"`; `forwardpass compare` reads several and sets them side by side.

bench report.json (latencies in ms; throughput in items or requests per second):

    kind, model, settings{batch_sizes, threads, precisions, duration, warmup, ...}, plots[file names]
    machine{cpu, logical_cores, physical_cores, usable_cores, isa[], memory_gib, gpu[], os, python, numpy,
            onnxruntime, forwardpass, providers[]}
    results[{precision, version, threads, batch_size, ratio (forwardpass / onnxruntime throughput, paired rounds),
             forwardpass|onnxruntime{throughput, latency_ms{calls, mean, p50, p90, p99, max}, rounds[]}}]
    accuracy{metric, data, batch_size, by_precision{<precision>: {version, value, throughput, n, bad}}}  (--eval)
    server{url, model, runs[{mode: closed|open, load, protocol, encoding, processes, requests, errors, seconds,
           throughput (null when refused), measured_throughput, latency_ms{...}, client_cpu[], client_cpu_max,
           late, reported, refused}]}                                                                 (--url)
    mlperf[{system, scenario, mode, result, metric_name, metric, accuracy, samples, settings, folder, summary}]

eval report.json: kind, model, version, data, task, group_by, n, bad, errors[], seconds, and by task
top_k_accuracy{K: value}, accuracy, macro_f1, per_class{label: {precision, recall, f1, support}},
confusion_matrix{labels, matrix}, calibration{ece, bins[]}, positive_label | mae, rmse, r2 | recall_at_k, queries;
with a group-by column: groups{by_group{group: {metric: value, n}}, gaps{metric: {difference, lowest, highest}}}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from forwardpass.errors import InputError, NotFoundError
from forwardpass.measure import plots

__all__ = [
    "bench_markdown",
    "compare_reports",
    "configuration",
    "eval_markdown",
    "load_report",
    "mlperf_figure",
    "save_bench",
    "save_eval",
    "write_json",
]

REPORT = "report"


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    return path


def load_report(path: Path) -> dict[str, Any]:
    """A report written by `eval --out` or `bench --out`: its JSON file, or the folder holding report.json."""
    file = path / f"{REPORT}.json" if path.is_dir() else path
    if not file.is_file():
        raise NotFoundError(f"no report at '{path}'; give a report.json or the --output folder that holds one")
    try:
        data = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InputError(f"'{file}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") not in ("eval", "bench"):
        raise InputError(f'\'{file}\' is not a forwardpass eval or bench report (no "kind": "eval" | "bench")')
    return data


def _number(value: object, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine_markdown(machine: Mapping[str, Any]) -> str:
    isa = " ".join(machine.get("isa") or []) or "no AVX2"
    return (
        f"Machine: {machine.get('cpu')}, {machine.get('usable_cores')} of {machine.get('logical_cores')} cores usable,"
        f" {isa}; onnxruntime {machine.get('onnxruntime')}, numpy {machine.get('numpy')},"
        f" python {machine.get('python')}; providers {', '.join(machine.get('providers') or [])}"
        + (f"; GPU {', '.join(machine['gpu'])}" if machine.get("gpu") else "")
    )


# ---- eval ------------------------------------------------------------------------------------------------------


def save_eval(data: dict[str, Any], out: Path) -> list[Path]:
    """Write an eval report (`EvalReport.to_dict()`) with its plots; returns the files written."""
    name = f"{data['model']} on {Path(str(data['data'])).name}"
    files: list[str] = []
    written: list[Path] = []
    matrix = data.get("confusion_matrix")
    if matrix and matrix.get("matrix"):
        written.append(plots.confusion_matrix(out / "confusion_matrix.png", matrix["labels"], matrix["matrix"], name))
    if data.get("per_class"):
        written.append(plots.per_class_bars(out / "per_class.png", data["per_class"], name))
    calibration = data.get("calibration")
    if calibration and calibration.get("bins"):
        written.append(plots.calibration_curve(out / "calibration.png", calibration["bins"], calibration["ece"], name))
    files = [path.name for path in written]
    data = {**data, "plots": files}
    written.insert(0, write_json(out / f"{REPORT}.json", data))
    markdown = out / f"{REPORT}.md"
    markdown.write_text(eval_markdown(data), encoding="utf-8")
    written.insert(1, markdown)
    return written


def eval_markdown(data: Mapping[str, Any]) -> str:
    version = f" version {data['version']}" if data.get("version") is not None else ""
    parts = [f"# eval: {data['model']}{version} on {data['data']} ({data['task']})", ""]
    headline: list[tuple[str, object]] = []
    headline += [(f"top-{k} accuracy", v) for k, v in (data.get("top_k_accuracy") or {}).items()]
    headline += [(f"recall@{k}", v) for k, v in (data.get("recall_at_k") or {}).items()]
    for key, label in (("macro_f1", "macro F1"), ("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²")):
        if key in data:
            headline.append((label, data[key]))
    if data.get("calibration"):
        headline.append(("expected calibration error", data["calibration"]["ece"]))
    headline += [("items scored", data["n"]), ("bad items", data["bad"])]
    parts += [_table(["metric", "value"], headline), ""]
    if data.get("per_class"):
        rows = [[label, m["precision"], m["recall"], m["f1"], m["support"]] for label, m in data["per_class"].items()]
        parts += ["## Per class", "", _table(["class", "precision", "recall", "F1", "support"], rows), ""]
    groups = data.get("groups")
    if groups:
        columns = sorted({key for values in groups["by_group"].values() for key in values} - {"n"})
        rows = [[group, values["n"], *(values.get(c) for c in columns)] for group, values in groups["by_group"].items()]
        parts += [f"## Per group ({data.get('group_by')})", "", _table(["group", "n", *columns], rows), ""]
        gaps = [[metric, gap["difference"], gap["lowest"], gap["highest"]] for metric, gap in groups["gaps"].items()]
        parts += ["Largest gap between groups:", "", _table(["metric", "gap", "lowest", "highest"], gaps), ""]
    parts += [f"![{name}]({name})" for name in data.get("plots", [])]
    if data.get("errors"):
        parts += ["", "## Bad items", ""] + [f"- {e['item']}: {e['error']}" for e in data["errors"]]
    return "\n".join(parts) + "\n"


# ---- bench -----------------------------------------------------------------------------------------------------


def configuration(row: Mapping[str, Any], *, batch: bool = True) -> str:
    """A bench result's configuration: 'int8, 2 threads, batch 32' ('default threads': the model's own setting)."""
    threads = row["threads"]
    name = f"{row['precision']}, {threads or 'default'} thread{'' if threads == 1 else 's'}"
    return f"{name}, batch {row['batch_size']}" if batch else name


def mlperf_figure(run: Mapping[str, Any]) -> tuple[str, float | None]:
    """A LoadGen scenario's figure in the units of the rest of the report: latencies in ms (LoadGen logs ns),
    rates in samples per second; an accuracy run's figure is its top-1 accuracy."""
    if run["mode"] != "performance":
        return "top-1 accuracy", run.get("accuracy")
    name, value = str(run.get("metric_name") or "metric"), run.get("metric")
    if name.endswith("(ns)"):
        percentile = name.split("th percentile", 1)[0].removesuffix(".0")
        return f"p{percentile} latency (ms)", None if value is None else value / 1e6
    return name, value


def save_bench(data: dict[str, Any], latencies_ms: Mapping[str, Sequence[float]], out: Path) -> list[Path]:
    """Write a bench report with its plots. `latencies_ms`: per-call latencies per curve, for the distribution."""
    model = data["model"]
    written: list[Path] = []
    results = data.get("results") or []
    if latencies_ms:
        written.append(plots.latency_distribution(out / "latency_distribution.png", latencies_ms, model))
    if results:
        by_batch: dict[str, list[tuple[float, float]]] = {}
        by_load: dict[str, list[tuple[float, float]]] = {}
        batch_labels: dict[str, list[str]] = {}
        for row in results:
            for engine in ("forwardpass", "onnxruntime"):
                label = f"{engine} {configuration(row, batch=False)}"
                by_batch.setdefault(label, []).append((row["batch_size"], row[engine]["throughput"]))
                by_load.setdefault(label, []).append((row[engine]["throughput"], row[engine]["latency_ms"]["p99"]))
                batch_labels.setdefault(label, []).append(f"batch {row['batch_size']}")
        written.append(plots.throughput_vs_batch_size(out / "throughput_vs_batch_size.png", by_batch, model))
        path = out / "latency_vs_throughput.png"
        written.append(plots.latency_vs_throughput(path, by_load, model, batch_labels))
    accuracy = data.get("accuracy")
    if accuracy:
        points = {name: (entry["throughput"], entry["value"]) for name, entry in accuracy["by_precision"].items()}
        path = out / "accuracy_vs_throughput.png"
        written.append(plots.accuracy_vs_throughput(path, points, accuracy["metric"], model))
    server = data.get("server")
    if server:
        curves: dict[str, list[tuple[float, float]]] = {}
        loads: dict[str, list[str]] = {}
        for run in server["runs"]:
            if run.get("reported"):
                name = f"{run['mode']} loop ({run['protocol']}, {run['encoding']})"
                curves.setdefault(name, []).append((run["throughput"], run["latency_ms"]["p99"]))
                load = f"{run['load']:g}/s" if run["mode"] == "open" else f"concurrency {run['load']:g}"
                loads.setdefault(name, []).append(load)
        if curves:
            path = out / "server_latency_vs_throughput.png"
            written.append(plots.latency_vs_throughput(path, curves, model, loads, unit="request"))
    data = {**data, "plots": [path.name for path in written]}
    written.insert(0, write_json(out / f"{REPORT}.json", data))
    markdown = out / f"{REPORT}.md"
    markdown.write_text(bench_markdown(data), encoding="utf-8")
    written.insert(1, markdown)
    return written


def _headline(data: Mapping[str, Any]) -> list[str]:
    """The figures a reader wants first: the fastest configuration, the lowest latency, accuracy per precision."""
    lines = []
    results = data.get("results") or []
    if results:
        fastest = max(results, key=lambda row: row["forwardpass"]["throughput"])
        quickest = min(results, key=lambda row: row["forwardpass"]["latency_ms"]["p50"])
        lines += [
            f"- Highest throughput: **{_number(fastest['forwardpass']['throughput'])} items/s** "
            f"({configuration(fastest)}); raw ONNX Runtime {_number(fastest['onnxruntime']['throughput'])} items/s.",
            f"- Lowest latency: **p50 {_number(quickest['forwardpass']['latency_ms']['p50'])} ms**, "
            f"p99 {_number(quickest['forwardpass']['latency_ms']['p99'])} ms per call ({configuration(quickest)}).",
        ]
    accuracy = data.get("accuracy")
    if accuracy:
        lines += [
            f"- {accuracy['metric']} ({precision}): **{_number(entry['value'])}**"
            for precision, entry in accuracy["by_precision"].items()
        ]
    runs = (data.get("server") or {}).get("runs") or []
    reported = [run for run in runs if run.get("reported")]
    if reported:
        best = max(reported, key=lambda run: run["throughput"])
        lines.append(
            f"- Server: **{_number(best['throughput'])} requests/s** at {best['mode']} loop {best['load']:g}"
            f" ({best['encoding']}), p99 {_number(best['latency_ms']['p99'])} ms."
        )
    for run in data.get("mlperf") or []:
        name, value = mlperf_figure(run)
        result = run.get("result") if run["mode"] == "performance" else f"{run.get('samples')} samples logged"
        lines.append(f"- MLPerf {run['scenario']} ({run['mode']}): {name} **{_number(value)}**, {result}.")
    if data.get("interrupted"):
        lines.append(f"- Interrupted (Ctrl-C): {data['interrupted']} finished; only those are reported.")
    return lines


def bench_markdown(data: Mapping[str, Any]) -> str:
    """The bench report: headline, machine, then a section for each part the run measured, plots, appendix."""
    parts = [f"# bench: {data['model']}", "", *_headline(data), "", _machine_markdown(data.get("machine") or {}), ""]
    parts += [
        "Latencies are in milliseconds per call, throughput in items (or requests) per second. ours/raw is the median"
        " of round-by-round throughput ratios, forwardpass over raw ONNX Runtime in rounds run back to back (1.00:"
        " no overhead); being a median of ratios, it can differ from the ratio of the two throughputs beside it.",
        "",
    ]
    if data.get("results"):
        parts += _in_process_section(data["results"])
    if data.get("accuracy"):
        parts += _accuracy_section(data["accuracy"])
    if data.get("server"):
        parts += _server_section(data["server"])
    mlperf = data.get("mlperf")
    if mlperf:
        parts += _mlperf_section(mlperf)
    parts += [f"![{name}]({name})" for name in data.get("plots", [])]
    if mlperf:
        parts += ["", "## Appendix: LoadGen summaries", ""]
        for scenario in mlperf:
            parts += [f"### {scenario['scenario']} ({scenario['mode']})", "", "```", scenario["summary"], "```", ""]
    return "\n".join(parts) + "\n"


def _in_process_section(results: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for row in results:
        ours, raw = row["forwardpass"], row["onnxruntime"]
        latency = ours["latency_ms"]
        rows.append(
            [
                row["precision"],
                row["threads"] or "default",
                row["batch_size"],
                ours["throughput"],
                raw["throughput"],
                row["ratio"],
                latency["p50"],
                latency["p90"],
                latency["p99"],
                latency["max"],
            ]
        )
    header = ["precision", "threads", "batch", "items/s", "raw ORT items/s", "ours/raw"]
    header += ["p50 ms", "p90 ms", "p99 ms", "max ms"]
    return ["## In process (forwardpass vs raw ONNX Runtime, same run)", "", _table(header, rows), ""]


def _accuracy_section(accuracy: Mapping[str, Any]) -> list[str]:
    rows = [[p, e["version"], e["value"], e["throughput"]] for p, e in accuracy["by_precision"].items()]
    header = ["precision", "version", accuracy["metric"], f"items/s (batch {accuracy['batch_size']})"]
    return [f"## Accuracy beside speed ({accuracy['data']})", "", _table(header, rows), ""]


def _server_section(server: Mapping[str, Any]) -> list[str]:
    rows = [
        [
            r["mode"],
            r["load"],
            r["protocol"],
            r["encoding"],
            r["throughput"] if r["reported"] else None,
            r["latency_ms"]["p50"],
            r["latency_ms"]["p99"],
            r["errors"],
            r["client_cpu_max"],
            "yes" if r["reported"] else f"no: {r['refused']}",
        ]
        for r in server["runs"]
    ]
    header = ["mode", "load", "protocol", "encoding", "req/s", "p50 ms", "p99 ms", "errors", "client CPU", "reported"]
    return [f"## Server {server['url']}", "", _table(header, rows), ""]


def _mlperf_section(mlperf: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [[s["scenario"], s["mode"], s.get("result"), *mlperf_figure(s)] for s in mlperf]
    return [
        "## MLPerf LoadGen",
        "",
        _table(["scenario", "mode", "result", "figure", "value"], rows),
        "",
        "LoadGen's own summary of each run is in the appendix below.",
        "",
    ]


# ---- compare ---------------------------------------------------------------------------------------------------


def _bench_figures(data: Mapping[str, Any]) -> dict[str, float]:
    figures = {}
    for row in data.get("results") or []:
        figures[configuration(row)] = row["forwardpass"]["throughput"]
    for run in (data.get("server") or {}).get("runs", []):
        if run.get("reported"):
            figures[f"server {run['mode']} {run['load']}"] = run["throughput"]
    return figures


def _eval_figures(data: Mapping[str, Any]) -> dict[str, float]:
    figures = {f"top-{k}": v for k, v in (data.get("top_k_accuracy") or {}).items()}
    figures.update({f"recall@{k}": v for k, v in (data.get("recall_at_k") or {}).items()})
    for key in ("macro_f1", "mae", "rmse", "r2"):
        if key in data:
            figures[key] = data[key]
    return figures


def compare_reports(reports: Sequence[tuple[str, dict[str, Any]]], out: Path | None) -> tuple[str, list[Path]]:
    """Several reports of one kind side by side: a Markdown table (rows: figures, columns: reports) and a plot."""
    kinds = {data["kind"] for _, data in reports}
    if len(kinds) != 1:
        raise InputError("compare needs reports of one kind: all from eval, or all from bench")
    kind = kinds.pop()
    figures = {name: (_bench_figures if kind == "bench" else _eval_figures)(data) for name, data in reports}
    keys = list(dict.fromkeys(key for per_report in figures.values() for key in per_report))
    rows = [[key, *(figures[name].get(key) for name in figures)] for key in keys]
    title = "throughput (items/s)" if kind == "bench" else "accuracy and errors"
    markdown = f"# compare: {title}\n\n" + _table(["figure", *figures], rows) + "\n"
    written: list[Path] = []
    if out is not None:
        unit = "items per second" if kind == "bench" else "value"
        plot = plots.compare_bars(out / "compare.png", figures, unit, title)
        markdown += f"\n![compare]({plot.name})\n"
        path = out / "compare.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown, encoding="utf-8")
        written = [
            write_json(out / "compare.json", {"kind": kind, "reports": list(figures), "figures": figures}),
            path,
            plot,
        ]
    return markdown, written
