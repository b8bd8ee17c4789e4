"""`forwardpass optimize`: the fastest precision of a model that loses at most X points, written as a new version."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from forwardpass.cli.common import REPOSITORY, VERSION
from forwardpass.errors import ForwardpassError, InputError
from forwardpass.model import locate_configured
from forwardpass.precision import PRECISIONS, Int8Settings, OptimizeReport, OptimizeRequest, optimize
from forwardpass.repository import Repository

__all__ = ["register"]


def optimize_command(
    model: str = typer.Argument(..., help="Model name in the repository, model folder, or ONNX file."),
    precision: str = typer.Option(..., "--precision", "-p", help=f"One of: {', '.join(PRECISIONS)}."),
    calibration: Path | None = typer.Option(
        None,
        "--calibration",
        help="Samples for INT8 calibration: image folder, .txt, .csv/.jsonl or .npy.",
        show_default=False,
    ),
    eval_data: Path | None = typer.Option(
        None,
        "--eval",
        help="Held-out data scored (labelled: top-1 accuracy / R²; unlabelled: top-1 agreement with the original"
        " for classifiers, else cosine similarity).",
        show_default=False,
    ),
    max_accuracy_drop: float | None = typer.Option(
        None,
        "--max-accuracy-drop",
        help="Largest loss allowed, in points of the metric the report names (0.5 = half a point of top-1).",
        show_default=False,
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Write a model folder here instead of a new version in the repository.",
        show_default=False,
    ),
    method: str = typer.Option("minmax", "--calibration-method", help="INT8: minmax | entropy | percentile."),
    percentile: float = typer.Option(
        99.999, "--calibration-percentile", help="INT8 with --calibration-method percentile: the share kept."
    ),
    quant_format: str = typer.Option("qdq", "--quant-format", help="INT8: qdq | qoperator."),
    activations: str = typer.Option("u8", "--activations", help="INT8 activation type: u8 | s8 (weights are s8)."),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="INT8 weight scales."),
    block_size: int = typer.Option(16, "--block-size", help="INT4: weights per quantization block."),
    threads: int = typer.Option(0, "--threads", help="ONNX Runtime intra-op threads when timing (0: default)."),
    batch_size: int = typer.Option(
        0,
        "--batch-size",
        "-b",
        help="Batch size at which throughput is measured (0: 16, or the model's max_batch_size where smaller).",
    ),
    duration: float = typer.Option(1.0, "--duration", help="Seconds of timing per candidate and batch size."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Save precision.png (accuracy vs throughput)."),
    allow_slower: bool = typer.Option(
        False,
        "--allow-slower",
        help="Write the variant even if it measured slower than the original (refused otherwise, except fp16/fp64).",
    ),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
) -> None:
    """Make a lower-precision version of a model, measured beside the original in the same run.

    The new version (or -o folder) holds the model and precision.json: source, precision per layer, calibration
    data, tool versions, and accuracy, throughput, latency and size of the original and the new model.

    Examples:

      forwardpass optimize digits_cnn --precision int8 --calibration data/digits/train --eval data/digits/test

      forwardpass optimize digits_cnn -p auto --calibration data/digits/train --eval data/digits/test \\
        --max-accuracy-drop 0.5

      forwardpass optimize minilm --precision int4 --eval sentences.txt --block-size 16 -o /tmp/minilm_int4

      forwardpass optimize digits_cnn -p fp16 --eval data/digits/test

    Then: forwardpass.load("digits_cnn", precision="int8"), or `precision: int8` in the model's config.yaml.
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
    decoder = _decoder_folder(model, repository, version)
    if decoder is not None:  # judged by perplexity on held-out text, not by accuracy on labelled data
        _quantize_decoder(decoder, precision, eval_data, calibration, max_accuracy_drop, output, block_size, threads)
        return
    settings = _int8_settings(method, quant_format, activations, per_channel, percentile)
    request = OptimizeRequest(
        model=model,
        precision=precision,  # checked against PRECISIONS above
        repository=repository,
        version=version,
        calibration=calibration,
        eval_data=eval_data,
        max_accuracy_drop=max_accuracy_drop,
        output=output,
        int8=settings,
        block_size=block_size,
        threads=threads,
        batch_size=batch_size,
        seconds=duration,
        plot=plot,
        allow_slower=allow_slower,
    )
    console = Console(stderr=True)
    with console.status("optimizing") as status:
        report = optimize(request, progress=lambda step: status.update(step))
    _print(report)
    if report.version is not None:
        _say_the_default(report)


def _decoder_folder(model: str, repository: Path | None, version: int | None) -> Path | None:
    """The model folder of a decoder exported with its KV cache (a `generation:` section), else None."""
    from forwardpass.config import ModelConfig
    from forwardpass.model import locate

    try:
        entry = locate(model, repository, version)
    except ForwardpassError:
        return None  # optimize's own path says what is wrong with it
    if entry.config_path is None or ModelConfig.of(entry.config_path).generation is None:
        return None
    return entry.directory


def _quantize_decoder(
    folder: Path,
    precision: str,
    text: Path | None,
    calibration: Path | None,
    max_accuracy_drop: float | None,
    output: Path | None,
    block_size: int,
    threads: int,
) -> None:
    from forwardpass.precision.decoder import HELDOUT, quantize_decoder

    if precision not in ("int4", "int8"):
        raise InputError(f"--precision {precision}: a decoder quantizes to int4 or int8 (weight-only MatMulNBits)")
    refused = {"--calibration": calibration, "--max-accuracy-drop": max_accuracy_drop, "-o/--output": output}
    given = [option for option, value in refused.items() if value is not None]
    if given:
        raise InputError(f"{', '.join(given)}: not for decoders (judged by perplexity; --eval TEXT.txt picks the text)")
    with Console(stderr=True).status(f"quantizing {folder.name} to {precision}, measuring its perplexity"):
        made = quantize_decoder(
            folder,
            "int4" if precision == "int4" else "int8",
            block_size=block_size,
            threads=threads or 1,
            text=text or HELDOUT,
        )
    record = json.loads((made / "precision.json").read_text(encoding="utf-8"))
    measured = record["measured"]
    typer.echo(
        f"{folder.name} version {made.name} ({precision}): perplexity {measured['optimized']['perplexity']:.3f} "
        f"vs FP32 {measured['original']['perplexity']:.3f} ({measured['perplexity_ratio']:.3f}x, bound "
        f"{record['evaluation']['max_ratio']}), {measured['throughput_ratio']:.2f}x tokens/s, "
        f"{measured['size_ratio']:.2f}x size"
    )


def _int8_settings(
    method: str, quant_format: str, activations: str, per_channel: bool, percentile: float
) -> Int8Settings:
    choices = {
        "--calibration-method": (method, ("minmax", "entropy", "percentile")),
        "--quant-format": (quant_format, ("qdq", "qoperator")),
        "--activations": (activations, ("u8", "s8")),
    }
    for option, (value, allowed) in choices.items():
        if value not in allowed:
            raise InputError(f"{option}: '{value}' is not one of {', '.join(allowed)}")
    if not 50.0 < percentile <= 100.0:
        raise InputError(f"--calibration-percentile: {percentile} is not in (50, 100]")
    return Int8Settings(
        method=method,  # type: ignore[arg-type]
        quant_format=quant_format,  # type: ignore[arg-type]
        activations=activations,  # type: ignore[arg-type]
        per_channel=per_channel,
        percentile=percentile,
    )


def _print(report: OptimizeReport) -> None:
    console = Console()
    table = Table(title=f"{report.model}: {report.metric}", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ("candidate", "precision", "size MB", "items/s", "vs orig", "p50 ms (b1)", report.metric, "drop", "")
    for column in columns:
        table.add_column(column, justify="left" if column in ("candidate", "precision", "") else "right")
    base = report.original
    for candidate in [base, *report.candidates]:
        mark = "chosen" if candidate is report.chosen else candidate.refusal
        table.add_row(
            candidate.label,
            candidate.precision,
            f"{candidate.size_bytes / 1e6:.2f}",
            f"{candidate.throughput:,.0f}",
            f"{candidate.throughput / base.throughput:.2f}x" if base.throughput else "",
            f"{candidate.latency_ms:.3f}",
            f"{candidate.score:.2f}",
            f"{candidate.drop:+.2f}" if candidate is not base else "",
            mark,
        )
    console.print(table)
    where = f"version {report.version} of {report.model}" if report.version is not None else "folder"
    console.print(f"wrote {where}: {report.destination}", highlight=False)
    if report.plot is not None:
        console.print(f"plot: {report.plot}", highlight=False)


def _say_the_default(report: OptimizeReport) -> None:
    """Said every time: a new version changes what every command runs by default, unless the config pins one."""
    entry, config = locate_configured(report.destination.parent)  # the model folder the new version went into
    served = Repository(entry.directory.parent).served_versions(entry.name)
    if report.version not in served:
        typer.echo(
            f"version {report.version} of {report.model} is not served: its config.yaml's version_policy serves "
            f"{served}; name {report.version} there to run it (predict, batch and serve run version {entry.version})"
        )
    elif entry.version == report.version:
        typer.echo(
            f"version {report.version} is now the default of {report.model} (its highest version) for predict, batch,"
            " serve and forwardpass.load; to run another, pass --version N, or set `precision:` in its config.yaml"
        )
    else:
        typer.echo(
            f"the default of {report.model} stays version {entry.version} (config.yaml: precision: {config.precision})"
        )


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize_command)
