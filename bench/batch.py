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
   (ONNX Runtime's threads not spinning), decoding every pixel and with `jpeg_draft` 1-4 (Pillow's draft: DCT
   scaling while the decoded image stays k times the resized size, then only the crop's region resampled): ratio
   to raw ORT on the same photos' tensors at the same batch size; one row with spinning threads.
4. Top-1 agreement of `jpeg_draft` 1-4 with full decoding on `--photos` camera-size photos (on all, and on those
   the model is not near a tie on), beside the noise floor (one pixel level on 10 % of the values), and each
   setting's decode + preprocess CPU time per image on one thread.
5. The physical limit: the forward pass's CPU per image c_f and each setting's c_d give the best ratio a job can
   reach on cores ORT alone keeps busy, c_f / (c_f + c_d).

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
from PIL import Image

import forwardpass
from forwardpass.measure import machine_info
from forwardpass.modes.batch import BatchOptions, run_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.photos import make_photos

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "mobilenet_v2"
IMAGENET_STD = (0.229, 0.224, 0.225)  # the bundled config's std: one pixel level in its input's units
DRAFTS = (1, 2, 3, 4)
NEAR_TIE = 0.1  # top-1 probability minus the runner-up's under this: the photo counts as one the model is unsure of
CONFIDENT = f"margin >= {NEAR_TIE}"


def raw_rate(session: ort.InferenceSession, tensors: np.ndarray, batch_size: int) -> float:
    """Items per second of plain session.run over all tensors, batch by batch."""
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    for start in range(0, len(tensors), batch_size):
        session.run(None, {name: tensors[start : start + batch_size]})
    return len(tensors) / (time.perf_counter() - started)


def job_rate(
    model: forwardpass.Model, source: Path, work: Path, batch_size: int, cpu_ms: list[float] | None = None
) -> float:
    """Records per second of a batch job; `cpu_ms` gets the CPU ms per record of every thread of the process."""
    output = work / f"out-{time.monotonic_ns()}"
    started = time.process_time()
    summary = run_batch(model, source, output, BatchOptions(batch_size=batch_size, part_size=512, workers=2))
    if cpu_ms is not None:
        cpu_ms.append(1000 * (time.process_time() - started) / summary.computed)
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


def decode_all(
    models: dict[str, forwardpass.Model], files: list[Path]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each setting's input tensors for every photo, and its median decode + preprocess CPU ms per image on one
    thread; the settings take turns photo by photo (in alternating order), so load on the machine hits them alike."""
    tensors: dict[str, list[np.ndarray]] = {label: [] for label in models}
    seconds: dict[str, list[float]] = {label: [] for label in models}
    labels = list(models)
    for index, path in enumerate(files):
        for label in labels if index % 2 == 0 else reversed(labels):
            started = time.thread_time()
            tensors[label].append(models[label].preprocess(str(path))["input"])
            seconds[label].append(time.thread_time() - started)
    stacked = {label: np.stack(arrays) for label, arrays in tensors.items()}
    return stacked, {label: 1000 * statistics.median(times) for label, times in seconds.items()}


def eighth_scale_decode_ms(files: list[Path]) -> float:
    """Median CPU ms on one thread to decode a JPEG at 1/8 scale, the least any decoding of it can do (every
    coefficient is still entropy-decoded), with no resize or normalization."""
    seconds = []
    for path in files:
        started = time.thread_time()
        with Image.open(path) as image:
            image.draft(None, (image.width // 8, image.height // 8))
            image.load()
        seconds.append(time.thread_time() - started)
    return 1000 * statistics.median(seconds)


def logits(session: ort.InferenceSession, tensors: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: tensors[i : i + 32]})[0] for i in range(0, len(tensors), 32)])


def top2_margin(scores: np.ndarray) -> np.ndarray:
    """Softmax probability of the top-1 class minus the runner-up's, per photo: how near a tie the top-1 is."""
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    top2 = np.sort(exp / exp.sum(axis=1, keepdims=True), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def one_level_noise(tensors: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """±1 pixel level (of 0-255) on `fraction` of the values: the smallest change any other decoding can make."""
    rng = np.random.default_rng(seed)
    step = (1 / 255 / np.asarray(IMAGENET_STD, dtype=np.float32)).reshape(1, 3, 1, 1)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), tensors.shape) * (rng.random(tensors.shape) < fraction)
    return tensors + signs * step


def ort_session(*, spinning: bool = True, threads: int = 0) -> ort.InferenceSession:
    """mobilenet_v2 in plain ONNX Runtime; default options unless told otherwise (0 threads: one per core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])


def cpu_per_image(session: ort.InferenceSession, tensors: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per image of plain session.run, batch by batch: CPU of every thread of the process."""
    cpu, wall = time.process_time(), time.perf_counter()
    raw_rate(session, tensors, batch_size)
    return 1000 * (time.process_time() - cpu) / len(tensors), 1000 * (time.perf_counter() - wall) / len(tensors)


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

        session = ort_session()
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

        settings = {"full decoding": image_model}
        settings |= {f"jpeg_draft {k}": forwardpass.load(drafted(MODEL_DIR, work, k, best)) for k in DRAFTS}
        draft_tensors, decode_ms = decode_all(settings, all_files[: args.photos])
        full = draft_tensors.pop("full decoding")
        reference = logits(session, full)
        margin = top2_margin(reference)
        confident = margin >= NEAR_TIE
        floor_label = "full decoding, ±1 level on 10 % of the values (not a setting: the model's noise floor)"
        draft_tensors[floor_label] = one_level_noise(full, 0.10)
        agreement = {}
        for label, inputs in draft_tensors.items():
            same = logits(session, inputs).argmax(1) == reference.argmax(1)
            diff = np.abs(inputs - full)
            agreement[label] = {
                "top1_agreement_pct": 100 * float(np.mean(same)),
                "differ": int(np.sum(~same)),
                "top1_agreement_confident_pct": 100 * float(np.mean(same[confident])),
                "differ_margins": sorted(round(float(m), 4) for m in margin[~same]),
                "input_max_abs_diff": float(diff.max()),
                "input_mean_abs_diff": float(diff.mean()),
                "decode_preprocess_cpu_ms": decode_ms.get(label),
            }
            print(label, agreement[label], flush=True)
        for label in settings:
            if label != "full decoding":
                settings[label].close()
        # the forward pass's CPU per image as the job runs it (threads sleeping), and raw ORT's as the baseline runs
        sessions = {"sleeping": ort_session(spinning=False), "spinning": session, "one thread": ort_session(threads=1)}
        forward = alternate(
            3,
            {label: lambda one=one: cpu_per_image(one, tensors[: len(files)], best) for label, one in sessions.items()},
        )
        eighth_ms = eighth_scale_decode_ms(all_files[: args.photos])
        batch_job = {"allow_spinning": False}  # as `forwardpass batch` loads its model
        jobs = {
            "full decoding": forwardpass.load(drafted(MODEL_DIR, work, 0, best), **batch_job),
            **{f"jpeg_draft {k}": forwardpass.load(work / "repo" / f"mobilenet_draft{k}", **batch_job) for k in DRAFTS},
            "jpeg_draft 1, ORT threads spinning": forwardpass.load(work / "repo" / "mobilenet_draft1"),
        }
        job_cpu: dict[str, list[float]] = {label: [] for label in jobs}
        contenders: dict[str, Any] = {"raw": lambda: raw_rate(session, tensors[: len(files)], best)}
        for label, job_model in jobs.items():
            contenders[label] = lambda job_model=job_model, cpu=job_cpu[label]: job_rate(
                job_model, photos, work, best, cpu
            )
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
            "near_tie_margin": NEAR_TIE,
            "confident_photos": int(np.sum(confident)),
            "full_decode_preprocess_cpu_ms": decode_ms["full decoding"],
            "by_setting": agreement,
            "target_pct": 99.5,
        },
        "cpu_limit": {
            "forward_cpu_ms_per_image_sleeping": [cpu for cpu, _ in forward["sleeping"]],
            "forward_cpu_ms_per_image_spinning": [cpu for cpu, _ in forward["spinning"]],
            "forward_wall_ms_per_image_spinning": [wall for _, wall in forward["spinning"]],
            "forward_cpu_ms_per_image_one_thread": [cpu for cpu, _ in forward["one thread"]],
            "c_f_ms": statistics.median(cpu for cpu, _ in forward["sleeping"]),
            "c_d_ms": decode_ms,
            "eighth_scale_decode_ms": eighth_ms,
            "job_cpu_ms_per_record": job_cpu,
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
    ]
    raw_jpeg, raw_predecoded = statistics.median(jpeg["raw_items_per_s"]), statistics.median(pre["raw_items_per_s"])
    if raw_jpeg < 0.8 * raw_predecoded:  # the same tensors at the same batch size: what else runs slowed it
        lines += [
            f"**Raw ORT ran at {raw_jpeg:.0f}/s beside the JPEG jobs against {raw_predecoded:.0f}/s on the same "
            "tensors beside the pre-decoded job: other work slowed its two spinning threads more than the jobs, "
            "so the JPEG ratios above overstate; the limits below, from CPU time, hold.**",
            "",
        ]
    lines += [
        f"## `jpeg_draft`: top-1 agreement with full decoding ({draft['photos']} camera-size photos)",
        "",
        f"MobileNetV2 is unsure of many of these photos: on {draft['photos'] - draft['confident_photos']} of them its "
        f"top-1 softmax probability leads the runner-up's by less than {draft['near_tie_margin']}; the last column "
        f"counts only the {draft['confident_photos']} others. The last row is no setting but the noise floor: full "
        "decoding with one pixel level (of 255) added or taken on 10 % of the input values. Decode + preprocess: CPU "
        "time on one thread, median per photo, the settings taking turns photo by photo.",
        "",
        "| setting | top-1 agreement (%) | photos changed (their top-2 margins) | input max / mean abs diff | "
        "decode + preprocess CPU ms | faster than full | agreement on confident photos (%) |",
        "|---|---|---|---|---|---|---|",
        f"| full decoding | 100 | 0 | 0 / 0 | {draft['full_decode_preprocess_cpu_ms']:.1f} | 1.00x | 100 |",
    ]
    for label, row in draft["by_setting"].items():
        cpu = row["decode_preprocess_cpu_ms"]
        speed = "-" if cpu is None else f"{draft['full_decode_preprocess_cpu_ms'] / cpu:.2f}x"
        margins = ", ".join(f"{m:.3f}" for m in row["differ_margins"])
        lines.append(
            f"| {label} | {row['top1_agreement_pct']:.2f} | {row['differ']} ({margins}) | "
            f"{row['input_max_abs_diff']:.3f} / {row['input_mean_abs_diff']:.4f} | "
            f"{'-' if cpu is None else f'{cpu:.1f}'} | {speed} | {row['top1_agreement_confident_pct']:.2f} |"
        )
    lines += [
        "",
        f"Target: agreement >= {draft['target_pct']} % on all photos for `jpeg_draft` to become the default.",
        "",
    ]
    limit = result["cpu_limit"]
    c_f = limit["c_f_ms"]
    one_thread = statistics.median(limit["forward_cpu_ms_per_image_one_thread"])
    lines += [
        "## The physical limit on these 2 cores",
        "",
        f"The forward pass costs c_f = {c_f:.1f} ms of CPU per image as the job runs it (ONNX Runtime's threads "
        "sleeping; rounds: "
        + ", ".join(f"{v:.1f}" for v in limit["forward_cpu_ms_per_image_sleeping"])
        + "); raw ORT with spinning threads, the baseline: "
        + ", ".join(f"{v:.1f}" for v in limit["forward_cpu_ms_per_image_spinning"])
        + " ms CPU at "
        + ", ".join(f"{v:.1f}" for v in limit["forward_wall_ms_per_image_spinning"])
        + " ms wall per image. Where ORT alone keeps the cores busy, a job that also decodes spends c_f + c_d per "
        "image on them: its ratio to raw ORT is at most c_f / (c_f + c_d). 0.85 needs c_d <= "
        f"{c_f * (1 / 0.85 - 1):.1f} ms. Even a job whose forward passes all ran at one thread's efficiency ("
        + ", ".join(f"{v:.1f}" for v in limit["forward_cpu_ms_per_image_one_thread"])
        + f" ms CPU per image) would need c_d <= {c_f / 0.85 - one_thread:.1f} ms; decoding these JPEGs at 1/8 "
        f"scale alone, too small for the resize and with no resize or normalization, costs "
        f"{limit['eighth_scale_decode_ms']:.1f} ms.",
        "",
        "| setting | c_d: decode + preprocess CPU ms | limit c_f / (c_f + c_d) | job's ratio measured above | "
        "job's CPU ms per photo (median; c_f + c_d) |",
        "|---|---|---|---|---|",
    ]
    for label, c_d in limit["c_d_ms"].items():
        measured = jpeg["ratio_median"].get(label)
        job_cpu = limit["job_cpu_ms_per_record"].get(label)
        lines.append(
            f"| {label} | {c_d:.1f} | {c_f / (c_f + c_d):.2f} | {'-' if measured is None else f'{measured:.3f}'} | "
            f"{'-' if not job_cpu else f'{statistics.median(job_cpu):.1f}'} ({c_f + c_d:.1f}) |"
        )
    lines += [
        "",
        "The job's CPU per photo against c_f + c_d says what decoding beside the forward pass costs on top (thread "
        "hand-offs, the GIL, Parquet parts); its ratio can exceed the limit only while other work holds part of the "
        "cores, which slows raw ORT's two threads more than the job's four.",
    ]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
