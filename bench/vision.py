"""Vision benchmark: the bundled `ocr` pipeline through `forwardpass serve` (dynamic batching per step) against
RapidOCR's own Python pipeline, and a YOLO-layout detector with batching against without.

Usage: python bench/vision.py [--seconds 20] [--concurrency 1,4] [--out bench/results]

- OCR: scikit-image's page photo (5 text lines) read again and again. RapidOCR 1.4.4 runs its pipeline in this
  process, one image at a time (its own ONNX Runtime sessions, default threads: every core). forwardpass serves
  ocr_det, ocr_cls and ocr_rec and the `ocr` pipeline from a temporary repository (`forwardpass serve`, all
  cores); clients post the image bytes to /v2/models/ocr/predict at each concurrency (closed loop, threads).
  Before timing, the server's text is checked against RapidOCR's.
- Detection: a YOLO-layout CNN (torch, random weights, 3x320x320, letterboxed) served in process by
  `Model.forward_each` on the same preprocessed images, one per forward pass vs 16 per forward pass.

Writes <out>/vision.json and <out>/vision.md (figures, machine info, date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

import forwardpass
from forwardpass.measure import machine_info

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "samples" / "text" / "page.png"
OCR_MODELS = ("ocr_det", "ocr_cls", "ocr_rec", "ocr")
DETECTOR_SIZE = 320


def rapidocr_rate(seconds: float) -> tuple[float, list[str]]:
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()
    texts = [text for _, text, _ in engine(str(PAGE))[0]]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        engine(str(PAGE))
        done += 1
    return done / (time.perf_counter() - started), texts


def pipeline_rate(seconds: float) -> tuple[float, list[str]]:
    ocr = forwardpass.load_pipeline("ocr")
    texts = [line["text"] for line in ocr.predict(str(PAGE))["regions"]]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        ocr.predict(str(PAGE))
        done += 1
    ocr.close()
    return done / (time.perf_counter() - started), texts


def start_server(repository: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = 18000 + os.getpid() % 1000
    command = [sys.executable, "-m", "forwardpass", "serve", "--repository", str(repository)]
    env = {**os.environ, "FORWARDPASS_REQUEST_TIMEOUT_S": "600"}  # a loaded 2-core machine: time, not refusals
    server = subprocess.Popen(
        [*command, "--http-port", str(port), "--grpc-port", "0"], stdout=subprocess.DEVNULL, env=env
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not become ready in 60 s")


def server_rate(url: str, body: bytes, concurrency: int, seconds: float) -> float:
    def client(deadline: float) -> int:
        done = 0
        with httpx.Client(timeout=120) as session:
            while time.perf_counter() < deadline:
                answer = session.post(
                    f"{url}/v2/models/ocr/predict", content=body, headers={"content-type": "image/png"}
                )
                if answer.status_code != 200:
                    raise SystemExit(f"the server refused an image: {answer.status_code} {answer.text}")
                done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        counts = list(pool.map(client, [started + seconds] * concurrency))
    return sum(counts) / (time.perf_counter() - started)


def bench_ocr(seconds: float, concurrencies: list[int]) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, texts = rapidocr_rate(seconds)
    in_process, in_process_texts = pipeline_rate(seconds)
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        for name in OCR_MODELS:
            shutil.copytree(ROOT / "models" / name, repository / name, ignore=shutil.ignore_patterns(".*"))
        server, url = start_server(repository)
        try:
            body = PAGE.read_bytes()
            found = httpx.post(
                f"{url}/v2/models/ocr/predict", content=body, headers={"content-type": "image/png"}, timeout=120
            )
            served_texts = [line["text"] for line in found.json()["regions"]]
            server_rate(url, body, max(concurrencies), 2.0)  # warm-up
            rates = {c: server_rate(url, body, c, seconds) for c in concurrencies}
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {
        "rapidocr_images_per_s": reference,
        "in_process_images_per_s": in_process,
        "in_process_text": in_process_texts,
        "server_images_per_s": {str(c): rate for c, rate in rates.items()},
        "speedup": {str(c): rate / reference for c, rate in rates.items()},
        "rapidocr_text": texts,
        "server_text": served_texts,
    }


def build_detector(folder: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(128, 4 + 80, 1), nn.Flatten(2), nn.Sigmoid(),
    ).eval()  # fmt: skip
    (folder / "1").mkdir(parents=True)
    torch.onnx.export(
        net, (torch.zeros(1, 3, DETECTOR_SIZE, DETECTOR_SIZE),), str(folder / "1" / "model.onnx"),
        input_names=["images"], output_names=["output0"], opset_version=17, dynamo=False,
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
    )  # fmt: skip
    config = {
        "max_batch_size": 16,
        "preprocess": {"kind": "image", "letterbox": [DETECTOR_SIZE, DETECTOR_SIZE], "pad_value": 114},
        "postprocess": {"kind": "detection", "layout": "yolo_columns", "normalized": True, "score_threshold": 0.6},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def bench_detection(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        model = forwardpass.load(build_detector(Path(folder) / "detector"))
        photos = sorted((ROOT / "samples" / "images").iterdir())
        items = [model.preprocess(str(photos[i % len(photos)])) for i in range(64)]
        rates = {}
        for batch in (1, 16):
            model.forward_each(items[:batch])  # warm-up
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                model.run_items(items, batch_size=batch)
                done += len(items)
            rates[str(batch)] = done / (time.perf_counter() - started)
    return {"images_per_s": rates, "speedup": rates["16"] / rates["1"]}


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    ocr, detection = results["ocr"], results["detection"]
    lines = [
        "# Vision benchmark",
        "",
        f"{results['date']}; {results['machine'].get('cpu', '')}, {results['machine'].get('usable_cores', '')} usable "
        f"cores; load average {results['load_average']:.1f} at the start (other work on the machine skews every "
        "figure: compare rows of one run only).",
        "",
        "## OCR: the `ocr` pipeline through `forwardpass serve` vs RapidOCR's own pipeline (scikit-image page.png)",
        "",
        "| pipeline | images/s | vs RapidOCR |",
        "|---|---|---|",
        f"| RapidOCR 1.4.4 in process, one image at a time | {ocr['rapidocr_images_per_s']:.2f} | 1.00x |",
        f"| forwardpass `load_pipeline('ocr')` in process, one image at a time | {ocr['in_process_images_per_s']:.2f} "
        f"| {ocr['in_process_images_per_s'] / ocr['rapidocr_images_per_s']:.2f}x |",
    ]
    for concurrency, rate in ocr["server_images_per_s"].items():
        speedup = ocr["speedup"][concurrency]
        lines.append(f"| forwardpass serve, {concurrency} concurrent client(s) | {rate:.2f} | {speedup:.2f}x |")
    lines += [
        "",
        f"Same text as RapidOCR in process: {ocr['rapidocr_text'] == ocr['in_process_text']}; through the server: "
        f"{ocr['rapidocr_text'] == ocr['server_text']} (the server pads each line only to its own width).",
        "",
        "## Detection: a YOLO-layout CNN (3x320x320), forward passes of 1 vs 16 images, in process",
        "",
        "| batch | images/s |",
        "|---|---|",
        *(f"| {batch} | {rate:.1f} |" for batch, rate in detection["images_per_s"].items()),
        "",
        f"Batching: {detection['speedup']:.2f}x.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    results = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": os.getloadavg()[0],
        "ocr": bench_ocr(args.seconds, [int(c) for c in args.concurrency.split(",")]),
        "detection": bench_detection(args.seconds / 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vision.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(args.out / "vision.md", results)
    print((args.out / "vision.md").read_text())


if __name__ == "__main__":
    main()
