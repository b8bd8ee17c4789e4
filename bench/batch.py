"""Batch-job throughput against raw ONNX Runtime, same model, same process, alternating rounds.

Usage: python bench/batch.py [--items 256] [--jpegs 96] [--photos 300] [--rounds 5] [--batch-sizes 1,8,32]
                            [--out bench/results]

1. Raw ONNX Runtime (`InferenceSession.run`, default session options, like the model's engine config) on
   pre-decoded MobileNetV2 tensors at each batch size; the best batch size is kept.
2. `forwardpass.modes.batch.run_batch` over the same tensors as a .npy file (a copy of the model without image
   preprocessing, so the job reads tensors; top-5 postprocessing and Parquet parts included), at that batch size.
   Ratio = job records/s ÷ raw ORT items/s, median over alternating rounds (target >= 0.9).
3. The job over camera-size JPEG photos (1600x1200 to 2048x1536, `bench/photos.py --camera`) with the bundled
   mobilenet_v2 (decode, resize, crop, normalize in the job's decoding threads), as `forwardpass batch` loads it
   (ONNX Runtime's threads not spinning), decoding every pixel and with `jpeg_draft` 1 and 2 (Pillow's draft: DCT
   scaling): ratio to raw ORT on the same photos' tensors at the same batch size; one row with spinning threads.
4. Top-1 agreement of `jpeg_draft` 1, 2 and 4 with full decoding on `--photos` camera-size photos, and the decode +
   preprocess time per image on one thread.

Writes <out>/batch.json and <out>/batch.md with machine info and the load average during the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml

import forwardpass
from forwardpass.measure import machine_info
from forwardpass.modes.batch import BatchOptions, run_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.photos import make_photos

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "mobilenet_v2"


def raw_rate(session: ort.InferenceSession, tensors: np.ndarray, batch_size: int) -> float:
    """Items per second of plain session.run over all tensors, batch by batch."""
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    for start in range(0, len(tensors), batch_size):
        session.run(None, {name: tensors[start : start + batch_size]})
    return len(tensors) / (time.perf_counter() - started)


def job_rate(model: forwardpass.Model, source: Path, work: Path, batch_size: int) -> float:
    output = work / f"out-{time.monotonic_ns()}"
    summary = run_batch(model, source, output, BatchOptions(batch_size=batch_size, part_size=512, workers=2))
    shutil.rmtree(output)
    return summary.computed / summary.seconds


def tensor_model(work: Path, batch_size: int) -> Path:
    """mobilenet_v2 with no preprocessing (it reads tensors) and the same top-5 postprocessing."""
    folder = work / "repo" / "mobilenet_tensors"
    (folder / "1").mkdir(parents=True)
    shutil.copy2(MODEL_DIR / "1" / "model.onnx", folder / "1" / "model.onnx")
    shutil.copy2(MODEL_DIR / "labels.txt", folder / "labels.txt")
    config = yaml.safe_load((MODEL_DIR / "config.yaml").read_text(encoding="utf-8"))
    config.pop("preprocess")
    config["max_batch_size"] = batch_size
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder


def drafted(model_dir: Path, work: Path, factor: int, batch_size: int) -> Path:
    """A copy of the bundled mobilenet_v2 folder whose config decodes JPEGs with `jpeg_draft: factor`."""
    folder = work / "repo" / f"mobilenet_draft{factor}"
    shutil.copytree(model_dir, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    config["preprocess"]["jpeg_draft"] = factor
    config["max_batch_size"] = batch_size
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder


def top1_and_time(model: forwardpass.Model, files: list[Path]) -> tuple[np.ndarray, float]:
    """Each photo's top-1 class and the median decode + preprocess time per image (ms, one thread)."""
    seconds, tensors = [], []
    for path in files:
        started = time.perf_counter()
        tensors.append(model.preprocess(str(path))["input"])
        seconds.append(time.perf_counter() - started)
    stacked = np.stack(tensors)
    logits = [model.infer({"input": stacked[i : i + 32]}) for i in range(0, len(stacked), 32)]
    return np.concatenate([next(iter(out.values())) for out in logits]).argmax(1), 1000 * statistics.median(seconds)


def alternate(rounds: int, contenders: dict[str, Any]) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            rates[name].append(contenders[name]())
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--jpegs", type=int, default=96, help="camera-size photos the job decodes per round")
    parser.add_argument("--photos", type=int, default=300, help="camera-size photos for the top-1 agreement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="fp-bench-batch-"))
    try:
        image_model = forwardpass.load("mobilenet_v2", repository=ROOT / "models")
        camera = work / "camera"
        make_photos(camera, max(args.photos, args.jpegs), seed=5, camera=True)
        all_files = sorted(camera.iterdir())
        photos = work / "jpegs"
        photos.mkdir()
        for path in all_files[: args.jpegs]:
            shutil.copy2(path, photos / path.name)
        files = sorted(photos.iterdir())
        base = np.stack([image_model.preprocess(str(p))["input"] for p in files])
        tensors = np.concatenate([base] * (-(-args.items // len(base))))[: args.items]
        np.save(work / "tensors.npy", tensors)

        session = ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        raw_rate(session, tensors[:32], 32)  # warm-up
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        sweep = {size: statistics.median(raw_rate(session, tensors, size) for _ in range(2)) for size in sizes}
        best = max(sweep, key=lambda size: sweep[size])

        model = forwardpass.load(tensor_model(work, best))
        job_rate(model, work / "tensors.npy", work, best)  # warm-up (pyarrow import, first parts)
        decoded = alternate(
            args.rounds,
            {
                "raw": lambda: raw_rate(session, tensors, best),
                "job": lambda: job_rate(model, work / "tensors.npy", work, best),
            },
        )
        decoded_ratios = [j / r for j, r in zip(decoded["job"], decoded["raw"], strict=True)]

        reference, full_ms = top1_and_time(image_model, all_files[: args.photos])
        agreement = {}
        for factor in (1, 2, 4):
            draft_model = forwardpass.load(drafted(MODEL_DIR, work, factor, best))
            top1, ms = top1_and_time(draft_model, all_files[: args.photos])
            agreement[f"jpeg_draft {factor}"] = {
                "top1_agreement_pct": 100 * float(np.mean(top1 == reference)),
                "differ": int(np.sum(top1 != reference)),
                "decode_preprocess_ms": ms,
                "speedup_vs_full": full_ms / ms,
            }
            draft_model.close()
            print(factor, agreement[f"jpeg_draft {factor}"], flush=True)
        batch_job = {"allow_spinning": False}  # as `forwardpass batch` loads its model
        jobs = {
            "full decoding": forwardpass.load(drafted(MODEL_DIR, work, 0, best), **batch_job),
            "jpeg_draft 2": forwardpass.load(work / "repo" / "mobilenet_draft2", **batch_job),
            "jpeg_draft 1": forwardpass.load(work / "repo" / "mobilenet_draft1", **batch_job),
            "jpeg_draft 1, ORT threads spinning": forwardpass.load(work / "repo" / "mobilenet_draft1"),
        }
        contenders: dict[str, Any] = {"raw": lambda: raw_rate(session, tensors[: len(files)], best)}
        for label, job_model in jobs.items():
            contenders[label] = lambda job_model=job_model: job_rate(job_model, photos, work, best)
        jpeg = alternate(max(3, args.rounds // 2), contenders)
        jpeg_ratios = {label: [j / r for j, r in zip(jpeg[label], jpeg["raw"], strict=True)] for label in jobs}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for job_model in jobs.values():
        job_model.close()
    forward_ms = 1000 / statistics.median(jpeg["raw"])
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "model": "mobilenet_v2 (bundled), CPUExecutionProvider, default threads",
        "raw_ort_items_per_s_by_batch_size": sweep,
        "best_batch_size": best,
        "predecoded": {
            "items": args.items,
            "raw_items_per_s": decoded["raw"],
            "job_records_per_s": decoded["job"],
            "ratio_median": statistics.median(decoded_ratios),
            "ratios": decoded_ratios,
            "target": 0.9,
        },
        "jpeg": {
            "images": len(files),
            "size": "camera-size JPEG (1600x1200 to 2048x1536, quality 70-95), bench/photos.py --camera, seed 5",
            "raw_items_per_s": jpeg["raw"],
            "job_records_per_s": {label: jpeg[label] for label in jobs},
            "ratio_median": {label: statistics.median(ratios) for label, ratios in jpeg_ratios.items()},
            "ratios": jpeg_ratios,
            "target": 0.85,
            "forward_pass_raw_ort_ms_per_image": forward_ms,
        },
        "draft_agreement": {
            "photos": args.photos,
            "reference": "top-1 with every pixel decoded",
            "full_decode_preprocess_ms": full_ms,
            "by_setting": agreement,
            "target_pct": 99.5,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "batch.md").write_text(report(result), encoding="utf-8")
    print(report(result))


def report(result: dict[str, Any]) -> str:
    machine = result["machine"]
    pre, jpeg, draft = result["predecoded"], result["jpeg"], result["draft_agreement"]
    sweep = ", ".join(f"{size}: {rate:.1f}/s" for size, rate in result["raw_ort_items_per_s_by_batch_size"].items())
    lines = [
        "# Batch jobs vs raw ONNX Runtime",
        "",
        f"{result['date']} · {result['model']} · machine: {json.dumps(machine)}",
        f"load average before / after: {result['load_average_before']} / {result['load_average_after']} "
        "(the 2 cores are shared with other work: ratios matter, absolute rates do not)",
        "",
        f"Raw ORT by batch size: {sweep}; best: {result['best_batch_size']}.",
        "",
        "| case | raw ORT items/s (median) | job records/s (median) | ratio (median of rounds) | target |",
        "|---|---|---|---|---|",
        f"| pre-decoded tensors (.npy, {pre['items']}) | {statistics.median(pre['raw_items_per_s']):.1f} | "
        f"{statistics.median(pre['job_records_per_s']):.1f} | **{pre['ratio_median']:.3f}** | >= {pre['target']} |",
    ]
    for label, rates in jpeg["job_records_per_s"].items():
        lines.append(
            f"| {jpeg['images']} camera-size JPEGs, {label} | {statistics.median(jpeg['raw_items_per_s']):.1f} | "
            f"{statistics.median(rates):.1f} | **{jpeg['ratio_median'][label]:.3f}** | >= {jpeg['target']} |"
        )
    lines += [
        "",
        f"Photos: {jpeg['size']}. Raw ORT runs on the same photos' tensors, decoded beforehand, at the same batch "
        "size. The jobs load the model as `forwardpass batch` does (ONNX Runtime's threads sleep between operators "
        "instead of spinning) except the row that says otherwise; 2 decoding threads. Per-round ratios: "
        + "; ".join(f"{label}: {', '.join(f'{r:.2f}' for r in ratios)}" for label, ratios in jpeg["ratios"].items()),
        "",
        f"## `jpeg_draft`: top-1 agreement with full decoding ({draft['photos']} camera-size photos)",
        "",
        f"Decoding every pixel + preprocessing: {draft['full_decode_preprocess_ms']:.1f} ms per image (median, one "
        "thread, under the load above).",
        "",
        "| setting | top-1 agreement with full decoding (%) | photos whose top-1 changed | decode + preprocess "
        "ms/image | faster than full |",
        "|---|---|---|---|---|",
    ]
    for label, row in draft["by_setting"].items():
        lines.append(
            f"| {label} | {row['top1_agreement_pct']:.2f} | {row['differ']} | {row['decode_preprocess_ms']:.1f} | "
            f"{row['speedup_vs_full']:.2f}x |"
        )
    lines += ["", f"Target: agreement >= {draft['target_pct']} % for `jpeg_draft` to become the default.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
