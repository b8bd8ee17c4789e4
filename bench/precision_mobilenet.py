"""INT8 recipes for the bundled MobileNetV2 (depthwise convolutions) against FP32, on varied held-out photos.

    python bench/precision_mobilenet.py [--eval 300] [--calibration 200] [--seconds 4]

Photos come from `bench/photos.py`: calibration with seed 1, evaluation with seed 2 (different crops, flips and
colour changes of the same 19 source photos). Each recipe is scored by metrics named for what they are:

- top-1 agreement with FP32 (%): the share of photos whose top-1 class is FP32's;
- the same on the photos where FP32 itself is confident (top-1 probability >= 0.5);
- cosine similarity of the logits to FP32's (x 100).

Speed: throughput ratio to FP32 at 1 intra-op thread, batch 1 and batch 16, in the same interleaved rounds. The
sensitivity ranking is the one `forwardpass optimize --precision auto` uses (each layer alone back in FP32, ranked by
the agreement it recovers). A weight-only study (per-channel symmetric weights rounded to 8, 10 and 12 bits,
activations in float) shows how much of the disagreement is the weights' rounding alone.

Writes bench/results/precision_mobilenet.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
from forwardpass.precision.transforms import Int8Settings, compute_layers, to_fp16, to_int8_static  # noqa: E402

WORK = ROOT / ".build" / "bench-precision-mobilenet"
RESULTS = ROOT / "bench" / "results"
SOURCE = ROOT / "models" / "mobilenet_v2" / "1" / "model.onnx"
CONFIDENT = 0.5


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
    batches = read_samples(fp32, calibration_dir, role="calibration").batches(16, fp32)
    tensors = np.stack([item["input"] for item in read_samples(fp32, eval_dir, role="eval").items])
    reference = _logits(SOURCE, tensors)
    layers = compute_layers(onnx.load(str(SOURCE)))
    graph = onnx.load(str(SOURCE)).graph
    depthwise = [n.name for n in graph.node if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    out = WORK / "variants"
    out.mkdir(exist_ok=True)

    def int8(name: str, settings: Int8Settings, exclude: tuple[str, ...] = ()) -> Path:
        cache = out / f"ranges-{settings.method}-{settings.percentile}.json"
        return to_int8_static(SOURCE, out / f"{name}.onnx", batches, settings, exclude, cache).path

    minmax = Int8Settings()
    variants: dict[str, Path] = {"fp32": SOURCE, "int8 minmax per-channel (default)": int8("minmax", minmax)}
    variants["int8 percentile 99.999"] = int8("p99999", Int8Settings(method="percentile"))
    variants["int8 percentile 99.99"] = int8("p9999", Int8Settings(method="percentile", percentile=99.99))
    variants["int8 entropy"] = int8("entropy", Int8Settings(method="entropy"))
    variants["int8 minmax, stem+head fp32"] = int8("edges", minmax, (layers[0], layers[-1]))
    variants["int8 minmax, depthwise fp32"] = int8("depthwise", minmax, tuple(depthwise))
    scores = {label: _scores(_logits(path, tensors), reference) for label, path in variants.items()}
    for label in variants:
        print(label, scores[label], flush=True)

    base = scores["int8 minmax per-channel (default)"]["top1_agreement_pct"]
    gains = {}
    for layer in layers:  # optimize's sensitivity ranking: each layer alone back in FP32
        single = int8("single", minmax, (layer,))
        gains[layer] = _scores(_logits(single, tensors), reference)["top1_agreement_pct"] - base
    ranked = sorted(layers, key=lambda name: gains[name], reverse=True)
    print("most sensitive:", [(name, round(gains[name], 2)) for name in ranked[:10]], flush=True)
    for count in (5, 10, 20):
        label = f"int8 minmax, {count} most sensitive layers fp32"
        variants[label] = int8(f"top{count}", minmax, tuple(ranked[:count]))
        scores[label] = _scores(_logits(variants[label], tensors), reference)
        print(label, scores[label], flush=True)
    variants["fp16"] = to_fp16(SOURCE, out / "fp16.onnx").path
    scores["fp16"] = _scores(_logits(variants["fp16"], tensors), reference)
    weight_only = {
        bits: _scores(_logits(_weights_rounded(bits, out / f"w{bits}.onnx"), tensors), reference)
        for bits in (8, 10, 12)
    }
    print("weights only:", weight_only, flush=True)

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
        "sensitivity_gain_pct": {name: gains[name] for name in ranked},
        "weight_only_rounding": {f"{bits} bits": s for bits, s in weight_only.items()},
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
        f"{result['load_average_before']} / {result['load_average_after']} on 2 shared vCPUs: ratios from the same "
        "interleaved rounds matter, not absolute rates.",
        "",
        f"| variant | top-1 agreement with FP32 (%) | same, on the {confident} photos FP32 is >= 50 % sure of | "
        "cosine of logits to FP32 (x100) | speed vs FP32, 1 thread, batch 1 | batch 16 |",
        "|---|---|---|---|---|---|",
    ]
    for label, score in scores.items():
        lines.append(
            f"| {label} | {score['top1_agreement_pct']:.2f} | {score['top1_agreement_confident_pct']:.2f} | "
            f"{score['cosine_x100']:.2f} | {speed['batch 1'][label]:.2f}x | {speed['batch 16'][label]:.2f}x |"
        )
    lines += [
        "",
        "Weights alone rounded per channel (activations kept in float; no INT8 kernel involved):",
        "",
        "| weight bits | top-1 agreement with FP32 (%) | on confident photos | cosine (x100) |",
        "|---|---|---|---|",
    ]
    for bits, score in result["weight_only_rounding"].items():
        lines.append(
            f"| {bits} | {score['top1_agreement_pct']:.2f} | {score['top1_agreement_confident_pct']:.2f} | "
            f"{score['cosine_x100']:.2f} |"
        )
    lines += ["", f"Target: {result['target']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
