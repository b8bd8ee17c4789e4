"""`forwardpass convert`: any supported model to ONNX, with a parity check and the provenance written beside it."""

from __future__ import annotations

from pathlib import Path

import typer

from forwardpass.cli.common import TRUST_PICKLE, output_option
from forwardpass.errors import ConfigError
from forwardpass.formats import ConvertOptions, LoadOptions, convert_model

__all__ = ["register"]


def convert(
    source: Path = typer.Argument(
        ...,
        metavar="SRC",
        help="A model file or folder: TorchScript, torch.export (.pt2), SavedModel, Keras, frozen GraphDef, MXNet, "
        "scikit-learn, XGBoost, LightGBM, Hugging Face folder, or ONNX (to change its opset).",
        show_default=False,
    ),
    output: Path = output_option(
        "OUT.onnx to write (.onnx is added if missing); OUT.json goes beside it.", required=True
    ),
    opset: int = typer.Option(17, "--opset", min=7, help="ONNX opset (torch.export programs need 18 or later)."),
    tolerance: float = typer.Option(
        1e-4, "--tolerance", min=0.0, help="Largest difference the parity check accepts (relative above 1)."
    ),
    samples: int = typer.Option(32, "--samples", min=1, help="Inputs the parity check runs through both engines."),
    trust_pickle: bool = TRUST_PICKLE,
    inputs: list[str] = typer.Option(
        [],
        "--input",
        help="NAME=D0,D1,... for an input whose shape the format does not record (-1: dynamic), e.g. "
        "input=-1,3,224,224. Repeat for several inputs.",
        show_default=False,
    ),
    dtypes: list[str] = typer.Option(
        [],
        "--input-dtype",
        help="NAME=DTYPE (FP32, INT64, ...) for an input whose type is not recorded.",
        show_default=False,
    ),
    outputs: list[str] = typer.Option(
        [],
        "--output-name",
        help="An output's name where it cannot be inferred (frozen graphs); repeatable.",
        show_default=False,
    ),
    signature: str | None = typer.Option(
        None, "--signature", help="SavedModel signature (default: serving_default).", show_default=False
    ),
) -> None:
    """Convert a model to ONNX with the field's converter, then prove it: both engines run the same inputs.

    The parity figures (max abs / rel diff, top-1 agreement), the source format, tool versions and opset go to
    OUT.json beside OUT.onnx. A conversion that misses the tolerance is refused with its figures (exit code 2)
    and writes nothing.

    Examples:

      forwardpass convert model.pt -o build/model --input input=-1,3,224,224

      forwardpass convert saved_model/ -o build/classifier --signature serving_default

      forwardpass convert all-MiniLM-L6-v2/ -o build/minilm --opset 17

      forwardpass convert pipeline.joblib -o build/pipeline --trust-pickle
    """
    shapes = {name: _dims(name, text) for name, text in (_pair("--input", item) for item in inputs)}
    types = dict(_pair("--input-dtype", item) for item in dtypes)
    options = LoadOptions(
        trust_pickle=trust_pickle,
        signature=signature,
        input_names=list(shapes) or None,
        output_names=outputs or None,
        input_shapes=shapes,
        input_dtypes=types,
    )
    target = output if output.suffix == ".onnx" else output.with_name(output.name + ".onnx")
    provenance = convert_model(source, target, options, ConvertOptions(opset, tolerance, samples))
    parity = provenance["parity"]
    top1 = parity.get("top1_agreement")
    agreement = "" if top1 is None else f", top-1 agreement {top1:.2%}"
    typer.echo(
        f"{source} ({provenance['source']['format']}) → {target} (opset {provenance['opset']}), "
        f"provenance in {target.with_suffix('.json')}\n"
        f"parity on {parity['samples']} inputs: max abs diff {parity['max_abs_diff']:.3g}, "
        f"max rel diff {parity['max_rel_diff']:.3g}{agreement} (tolerance {tolerance:g})"
    )


def _pair(option: str, item: str) -> tuple[str, str]:
    name, separator, value = item.partition("=")
    if not separator or not name or not value:
        raise ConfigError(f"{option} '{item}': expected NAME=VALUE")
    return name, value


def _dims(name: str, text: str) -> list[int]:
    try:
        dims = [int(part) for part in text.replace("x", ",").split(",")]
    except ValueError:
        raise ConfigError(f"--input {name}={text}: dimensions must be integers (-1 for dynamic)") from None
    if any(dim < -1 or dim == 0 for dim in dims):
        raise ConfigError(f"--input {name}={text}: dimensions must be positive, or -1 for dynamic")
    return dims


def register(app: typer.Typer) -> None:
    app.command()(convert)
