"""INT8 recipes for the bundled MobileNetV2 (depthwise convolutions) against FP32, on varied held-out photos.

    python bench/precision_mobilenet.py [--eval 300] [--calibration 200] [--seconds 4]

Photos come from `bench/photos.py`: calibration with seed 1, evaluation with seed 2 (different crops, flips and
colour changes of the same 19 source photos). Each recipe is scored by metrics named for what they are:

- top-1 agreement with FP32 (%): the share of photos whose top-1 class is FP32's;
- the same on the photos where FP32 itself is confident (top-1 probability >= 0.5);
- cosine similarity of the logits to FP32's (x 100), and the standard deviation of the logits' error.

Speed: throughput ratio to FP32 at 1 intra-op thread, batch 1 and batch 16, in the same interleaved rounds.

Why the recipes stop short of 99 %: the agreement is shown per band of FP32's own top-1 margin (logit of the first
class minus the second), beside what agreement independent noise of a given size on FP32's logits leaves. A
weight-only study separates the weights' rounding from the activations': the INT8 models' own weights and biases
put in the FP32 graph (activations in float), and every weight rounded to 10 and 12 bits.
Mixed precision: layers ranked by how much keeping each alone in FP32 lowers the logits' error (a continuous score;
top-1 agreement on near-ties moves by +-4 points for any change), then the first 3, 6 and 12 kept in FP32.

Writes bench/results/precision_mobilenet.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import forwardpass  # noqa: E402
from bench.photos import make_photos, source_photos  # noqa: E402
from forwardpass.measure import machine_info  # noqa: E402
from forwardpass.measure.timing import interleave  # noqa: E402
from forwardpass.precision.samples import read_samples  # noqa: E402
from forwardpass.precision.transforms import (  # noqa: E402
    Int8Settings,
    compute_layers,
    dequantized_initializers,
    to_fp16,
    to_int8_static,
)

WORK = ROOT / ".build" / "bench-precision-mobilenet"
RESULTS = ROOT / "bench" / "results"
SOURCE = ROOT / "models" / "mobilenet_v2" / "1" / "model.onnx"
CONFIDENT = 0.5
MARGIN_BANDS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, float("inf"))
NOISE_LEVELS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35)
BEST = Int8Settings(method="percentile", percentile=99.95)  # the best calibration found here (see the table)
SENSITIVITY_PHOTOS = 100  # the ranking's photos (the first of the held-out ones): 53 quantizations to score


def _logits(path: Path, tensors: np.ndarray) -> np.ndarray:
    model = forwardpass.load(path, intra_op_threads=0)
    try:
        chunks = [model.infer({"input": tensors[i : i + 50]}) for i in range(0, len(tensors), 50)]
    finally:
        model.close()
    return np.concatenate([next(iter(chunk.values())) for chunk in chunks])


def _scores(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    top = reference.argmax(1)
    shifted = np.exp(reference - reference.max(1, keepdims=True))
    confident = (shifted / shifted.sum(1, keepdims=True)).max(1) >= CONFIDENT
    agree = logits.argmax(1) == top
    norms = np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    return {
        "top1_agreement_pct": 100.0 * float(agree.mean()),
        "top1_agreement_confident_pct": 100.0 * float(agree[confident].mean()),
        "confident_photos": int(confident.sum()),
        "cosine_x100": 100.0 * float(np.mean(np.sum(logits * reference, axis=1) / norms)),
        "logit_error_std": float((logits - reference).std()),
    }


def _margins(reference: np.ndarray) -> np.ndarray:
    """FP32's own top-1 margin per photo: its first logit minus its second."""
    ordered = np.sort(reference, axis=1)
    return np.asarray(ordered[:, -1] - ordered[:, -2])


def _by_margin(logits: np.ndarray, reference: np.ndarray) -> dict[str, dict[str, float]]:
    margins, agree = _margins(reference), logits.argmax(1) == reference.argmax(1)
    bands = {}
    for low, high in itertools.pairwise(MARGIN_BANDS):
        inside = (margins >= low) & (margins < high)
        share = 100.0 * float(agree[inside].mean()) if inside.any() else 0.0
        bands[f"{low}-{high}"] = {"photos": int(inside.sum()), "agreement_pct": share}
    return bands


def _noise_reference(reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (%) left by independent Gaussian noise of each size added to FP32's logits (20 draws)."""
    rng = np.random.default_rng(0)
    top = reference.argmax(1)
    return {
        str(level): 100.0
        * float(np.mean([(reference + rng.normal(0, level, reference.shape)).argmax(1) == top for _ in range(20)]))
        for level in NOISE_LEVELS
    }


def _weights_rounded(bits: int, out: Path) -> Path:
    """The FP32 model with every Conv/Gemm weight rounded per output channel to `bits` (symmetric), kept in float."""
    model = onnx.load(str(SOURCE))
    weights = {node.input[1] for node in model.graph.node if node.op_type in ("Conv", "Gemm")}
    top = 2 ** (bits - 1) - 1
    for index, init in enumerate(model.graph.initializer):
        if init.name in weights:
            w = numpy_helper.to_array(init)
            flat = w.reshape(w.shape[0], -1)
            scale = np.abs(flat).max(axis=1, keepdims=True) / top
            scale[scale == 0] = 1.0
            rounded = (np.clip(np.round(flat / scale), -top, top) * scale).reshape(w.shape).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(rounded, init.name))
    onnx.save(model, str(out))
    return out


def _int8_weights_in_float(int8: Path, out: Path) -> Path:
    """The FP32 model with each Conv/Gemm's weight and bias replaced by the INT8 model's own, dequantized: its
    weights' rounding (and bias correction) on float activations."""
    quantized = onnx.load(str(int8))
    values = dequantized_initializers(quantized)
    parameters = {node.name: node.input[1:3] for node in quantized.graph.node if node.op_type in ("Conv", "Gemm")}
    model = onnx.load(str(SOURCE))
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        for name, quantized_name in zip(node.input[1:3], parameters.get(node.name, ()), strict=False):
            if quantized_name in values:
                array = values[quantized_name].astype(np.float32)
                initializers[name].CopyFrom(numpy_helper.from_array(array.reshape(initializers[name].dims), name))
    onnx.save(model, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=int, default=300, help="held-out photos")
    parser.add_argument("--calibration", type=int, default=200, help="calibration photos")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per variant and batch size")
    args = parser.parse_args()
    load_before = os.getloadavg()
    WORK.mkdir(parents=True, exist_ok=True)
    fp32 = forwardpass.load("mobilenet_v2")
    calibration_dir, eval_dir = WORK / "calibration", WORK / "eval"
    make_photos(calibration_dir, args.calibration, seed=1)
    make_photos(eval_dir, args.eval, seed=2)
    batches = read_samples(fp32, calibration_dir, role="calibration", limit=args.calibration).batches(16, fp32)
    tensors = np.stack([item["input"] for item in read_samples(fp32, eval_dir, role="eval", limit=args.eval).items])
    reference = _logits(SOURCE, tensors)
    layers = compute_layers(onnx.load(str(SOURCE)))
    out = WORK / "variants"
    out.mkdir(exist_ok=True)

    def int8(name: str, settings: Int8Settings, exclude: tuple[str, ...] = ()) -> Path:
        cache = out / f"ranges-{settings.method}-{settings.percentile}.json"
        path = to_int8_static(SOURCE, out / f"{name}.onnx", batches, settings, exclude, cache).path
        print("made", name, flush=True)
        return path

    uncorrected = Int8Settings(bias_correction=False)
    variants: dict[str, Path] = {
        "fp32": SOURCE,
        "int8 minmax, no bias correction (the former default)": int8("minmax-raw", uncorrected),
        "int8 minmax": int8("minmax", Int8Settings()),
        "int8 entropy": int8("entropy", Int8Settings(method="entropy")),
        "int8 percentile 99.99": int8("p9999", Int8Settings(method="percentile", percentile=99.99)),
        "int8 percentile 99.95": int8("p9995", BEST),
        "int8 percentile 99.95, no bias correction": int8("p9995-raw", replace(BEST, bias_correction=False)),
        "int8 percentile 99.9": int8("p999", Int8Settings(method="percentile", percentile=99.9)),
        "int8 percentile 99.95, QOperator": int8("p9995-qop", replace(BEST, quant_format="qoperator")),
        "int8 percentile 99.95, S8 activations": int8("p9995-s8", replace(BEST, activations="s8")),
    }
    scores = {label: _scores(_logits(path, tensors), reference) for label, path in variants.items()}
    for label in variants:
        print(label, scores[label], flush=True)

    ranking_photos, ranking_reference = tensors[:SENSITIVITY_PHOTOS], reference[:SENSITIVITY_PHOTOS]
    fast = replace(BEST, bias_correction=False)  # the ranking's 53 quantizations: one pass each
    base = _scores(_logits(variants["int8 percentile 99.95, no bias correction"], ranking_photos), ranking_reference)
    gains = {}
    for layer in layers:  # each layer alone back in FP32: how much lower the logits' error is
        single = _scores(_logits(int8("single", fast, (layer,)), ranking_photos), ranking_reference)
        gains[layer] = base["logit_error_std"] - single["logit_error_std"]
    ranked = sorted(layers, key=lambda name: gains[name], reverse=True)
    print("most sensitive:", [(name, round(gains[name], 4)) for name in ranked[:12]], flush=True)
    for count in (3, 6, 12):
        label = f"int8 percentile 99.95, {count} most sensitive layers fp32"
        variants[label] = int8(f"top{count}", BEST, tuple(ranked[:count]))
        scores[label] = _scores(_logits(variants[label], tensors), reference)
        print(label, scores[label], flush=True)
    variants["fp16"] = to_fp16(SOURCE, out / "fp16.onnx").path
    scores["fp16"] = _scores(_logits(variants["fp16"], tensors), reference)

    weight_only = {
        "8 bits (INT8 model's weights), no bias correction": _int8_weights_in_float(
            variants["int8 minmax, no bias correction (the former default)"], out / "w8-raw.onnx"
        ),
        "8 bits (INT8 model's weights), bias corrected": _int8_weights_in_float(
            variants["int8 minmax"], out / "w8.onnx"
        ),
        "10 bits": _weights_rounded(10, out / "w10.onnx"),
        "12 bits": _weights_rounded(12, out / "w12.onnx"),
    }
    weight_scores = {label: _scores(_logits(path, tensors), reference) for label, path in weight_only.items()}
    print("weights only:", weight_scores, flush=True)
    best_label = min(  # by the logits' error: agreement on near-ties moves by points for any change
        (label for label in scores if label.startswith("int8") and "fp32" not in label),
        key=lambda label: scores[label]["logit_error_std"],
    )

    speed: dict[str, dict[str, float]] = {}
    models = {label: forwardpass.load(path, intra_op_threads=1) for label, path in variants.items()}
    for batch_size in (1, 16):
        feed = {"input": tensors[:batch_size]}
        calls = {label: _call(model, feed) for label, model in models.items()}
        timings = interleave(calls, batch_size, rounds=4, round_seconds=args.seconds / 4, warmup_seconds=0.3)
        speed[f"batch {batch_size}"] = {label: t.ratio_to(timings["fp32"]) for label, t in timings.items()}
        print(batch_size, {k: round(v, 2) for k, v in speed[f"batch {batch_size}"].items()}, flush=True)
    for model in models.values():
        model.close()
    result = {
        "model": "mobilenet_v2 (bundled, torchvision ImageNet weights)",
        "photos": {
            "sources": [p.name for p in source_photos()],
            "calibration": args.calibration,
            "eval": args.eval,
            "seeds": {"calibration": 1, "eval": 2},
        },
        "scores": scores,
        "speed_ratio_vs_fp32_1_thread": speed,
        "best_int8": best_label,
        "agreement_by_fp32_margin": {
            best_label: _by_margin(_logits(variants[best_label], tensors), reference),
            "weights only, 8 bits, bias corrected": _by_margin(
                _logits(weight_only["8 bits (INT8 model's weights), bias corrected"], tensors), reference
            ),
        },
        "agreement_under_logit_noise": _noise_reference(reference),
        "sensitivity_ranking": {"photos": SENSITIVITY_PHOTOS, "logit_error_std_lowered": {n: gains[n] for n in ranked}},
        "weight_only_rounding": weight_scores,
        "sizes_bytes": {label: path.stat().st_size for label, path in variants.items()},
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "target": "INT8 >= 2.0x FP32 at 1 thread with top-1 agreement >= 99 %",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "precision_mobilenet.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "precision_mobilenet.md").write_text(_markdown(result))
    print(_markdown(result))


def _call(model: forwardpass.Model, feed: dict[str, Any]) -> Any:
    batch = model.validate(feed)
    return lambda: model.forward(batch)


def _markdown(result: dict[str, Any]) -> str:
    scores, speed = result["scores"], result["speed_ratio_vs_fp32_1_thread"]
    photos = result["photos"]
    confident = next(iter(scores.values()))["confident_photos"]
    lines = [
        "# MobileNetV2 INT8 recipes vs FP32 (varied held-out photos)",
        "",
        f"{photos['eval']} held-out photos and {photos['calibration']} calibration photos from `bench/photos.py` "
        f"(seeds {photos['seeds']['eval']} and {photos['seeds']['calibration']}; crops, flips, rotations, colour "
        f"changes of {len(photos['sources'])} source photos). Load average before / after: "
        f"{_load(result['load_average_before'])} / {_load(result['load_average_after'])} on 2 shared vCPUs: ratios "
        "from the same interleaved rounds matter, not absolute rates. INT8 is static QDQ with per-channel symmetric "
        'S8 weights and U8 activations after `quant_pre_process` unless the row says otherwise; "bias correction" '
        "subtracts each layer's mean output shift caused by its weights' rounding from its bias. Rows that differ only "
        "in calibration or bias correction run the same graph: differences in their speed are this machine's noise.",
        "",
        f"| variant | top-1 agreement with FP32 (%) | same, on the {confident} photos FP32 is >= 50 % sure of | "
        "cosine of logits to FP32 (x100) | logit error (std) | speed vs FP32, 1 thread, batch 1 | batch 16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, score in scores.items():
        lines.append(
            f"| {label} | {score['top1_agreement_pct']:.2f} | {score['top1_agreement_confident_pct']:.2f} | "
            f"{score['cosine_x100']:.2f} | {score['logit_error_std']:.3f} | {speed['batch 1'][label]:.2f}x | "
            f"{speed['batch 16'][label]:.2f}x |"
        )
    lines += [
        "",
        "Weights alone rounded (activations in float; no INT8 kernel involved):",
        "",
        "| weights | top-1 agreement with FP32 (%) | on confident photos | cosine (x100) | logit error (std) |",
        "|---|---|---|---|---|",
    ]
    for label, score in result["weight_only_rounding"].items():
        lines.append(
            f"| {label} | {score['top1_agreement_pct']:.2f} | {score['top1_agreement_confident_pct']:.2f} | "
            f"{score['cosine_x100']:.2f} | {score['logit_error_std']:.3f} |"
        )
    noise = result["agreement_under_logit_noise"]
    lines += [
        "",
        "Why 99 % is out of reach on these photos: many are near-ties for FP32 itself. Top-1 agreement per band of "
        "FP32's top-1 margin (first logit minus second):",
        "",
    ]
    bands = result["agreement_by_fp32_margin"]
    names = list(bands)
    first = bands[names[0]]
    lines.append("| FP32 margin | photos | " + " | ".join(f"{name} (%)" for name in names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for band, row in first.items():
        cells = " | ".join(_percent(bands[name][band]) for name in names)
        lines.append(f"| {band} | {row['photos']} | {cells} |")
    lines += [
        "",
        "Top-1 agreement (%) that independent Gaussian noise on FP32's logits leaves, by its standard deviation "
        "(compare with each recipe's logit error above): "
        + ", ".join(f"{level}: {value:.2f}" for level, value in noise.items()),
        "",
        f"Most sensitive layers (each alone back in FP32, on the first {result['sensitivity_ranking']['photos']} "
        "photos; how much lower the logit error's std is): "
        + ", ".join(
            f"`{name}` {gain:.3f}"
            for name, gain in list(result["sensitivity_ranking"]["logit_error_std_lowered"].items())[:6]
        ),
        "",
        f"Target: {result['target']}. Best INT8 here (lowest logit error, every layer INT8): {result['best_int8']}.",
        "",
    ]
    return "\n".join(lines)


def _percent(band: dict[str, float]) -> str:
    return f"{band['agreement_pct']:.1f}" if band["photos"] else "-"


def _load(average: Any) -> str:
    return "/".join(f"{value:.1f}" for value in average)


if __name__ == "__main__":
    main()
