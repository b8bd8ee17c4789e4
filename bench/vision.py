"""Vision benchmark: the bundled `ocr` pipeline through `forwardpass serve` (dynamic batching per step) against
RapidOCR's own Python pipeline, and a YOLO-layout detector with batching against without.

Usage: python bench/vision.py [--seconds 10] [--rounds 3] [--concurrency 1,4] [--out bench/results]

- OCR: scikit-image's page photo (5 text lines) read again and again. RapidOCR 1.4.4 runs its pipeline in this
  process, one image at a time (its own ONNX Runtime sessions and settings: every core, spinning threads), and
  again with one setting changed, its threads sleeping between operators as the bundled ocr models' do.
  forwardpass reads it in process (`load_pipeline`) and through `forwardpass serve` (ocr_det, ocr_cls, ocr_rec and
  the `ocr` pipeline from a temporary repository, the bundled configs' engine settings); clients post the image
  bytes to /v2/models/ocr/predict at each concurrency (closed loop, threads). The contenders take turns, round
  after round (A, B, C, ... A, B, C), so that other work on the machine falls on all of them; each is measured in
  images/s and in CPU seconds per image of the process doing the work (less noisy on a shared machine). The text
  each reads is recorded against RapidOCR's.
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
from collections.abc import Callable
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


class Contender:
    """One way of reading the page: `read(deadline)` reads it until the deadline and says how many times;
    `cpu_s()` is the CPU time, in seconds, of the process doing the work."""

    def __init__(self, name: str, read: Callable[[float], int], cpu_s: Callable[[], float]) -> None:
        self.name = name
        self.read = read
        self.cpu_s = cpu_s
        self.images = 0
        self.wall_s = 0.0
        self.cpu_total_s = 0.0

    def run(self, seconds: float) -> None:
        cpu, started = self.cpu_s(), time.perf_counter()
        self.images += self.read(started + seconds)
        self.wall_s += time.perf_counter() - started
        self.cpu_total_s += self.cpu_s() - cpu


def in_process(read_once: Callable[[], object]) -> Callable[[float], int]:
    def read(deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            read_once()
            done += 1
        return done

    return read


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def post_page(session: httpx.Client, url: str, body: bytes) -> list[str]:
    answer = session.post(f"{url}/v2/models/ocr/predict", content=body, headers={"content-type": "image/png"})
    if answer.status_code != 200:
        raise SystemExit(f"the server refused an image: {answer.status_code} {answer.text}")
    return [line["text"] for line in answer.json()["regions"]]


def through_server(url: str, body: bytes, concurrency: int) -> Callable[[float], int]:
    def client(deadline: float) -> int:
        done = 0
        with httpx.Client(timeout=600) as session:
            while time.perf_counter() < deadline:
                post_page(session, url, body)
                done += 1
        return done

    def read(deadline: float) -> int:
        with ThreadPoolExecutor(concurrency) as pool:
            return sum(pool.map(client, [deadline] * concurrency))

    return read


def rapidocr_without_spinning() -> Any:
    """RapidOCR with one setting changed: its ONNX Runtime threads sleep between operators, as the bundled ocr
    models' do (`engine: allow_spinning: false`), to tell that setting's share of the speed-up from the rest."""
    from rapidocr_onnxruntime import RapidOCR
    from rapidocr_onnxruntime.utils import infer_engine

    own = infer_engine.OrtInferSession._init_sess_opts

    def sleeping(config: dict[str, Any]) -> Any:
        options = own(config)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    infer_engine.OrtInferSession._init_sess_opts = staticmethod(sleeping)
    try:
        return RapidOCR()
    finally:
        infer_engine.OrtInferSession._init_sess_opts = staticmethod(own)


def bench_ocr(seconds: float, rounds: int, concurrencies: list[int]) -> dict[str, Any]:
    """Rounds of every contender in turn (RapidOCR, forwardpass in process, the server at each concurrency), so
    that load from other work falls on all of them alike."""
    from rapidocr_onnxruntime import RapidOCR

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = RapidOCR()
        texts = {"rapidocr": [text for _, text, _ in engine(str(PAGE))[0]]}
        sleeping = rapidocr_without_spinning()
    pipeline = forwardpass.load_pipeline("ocr")
    texts["in_process"] = [line["text"] for line in pipeline.predict(str(PAGE))["regions"]]
    body = PAGE.read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        for name in OCR_MODELS:
            shutil.copytree(ROOT / "models" / name, repository / name, ignore=shutil.ignore_patterns(".*"))
        server, url = start_server(repository)
        try:
            with httpx.Client(timeout=600) as session:
                texts["server"] = post_page(session, url, body)
            contenders = [
                Contender("rapidocr", in_process(lambda: engine(str(PAGE))), time.process_time),
                Contender("rapidocr_sleeping", in_process(lambda: sleeping(str(PAGE))), time.process_time),
                Contender("in_process", in_process(lambda: pipeline.predict(str(PAGE))), time.process_time),
                *(
                    Contender(f"server_c{c}", through_server(url, body, c), lambda: process_cpu_s(server.pid))
                    for c in concurrencies
                ),
            ]
            for contender in contenders:
                contender.run(2.0)  # warm-up: every session has seen the page's sizes
                contender.images, contender.wall_s, contender.cpu_total_s = 0, 0.0, 0.0
            for _ in range(rounds):
                for contender in contenders:
                    contender.run(seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
            pipeline.close()
    figures = {
        contender.name: {
            "images": contender.images,
            "images_per_s": contender.images / contender.wall_s,
            "cpu_s_per_image": contender.cpu_total_s / contender.images,
        }
        for contender in contenders
    }
    reference = figures["rapidocr"]
    for figure in figures.values():
        figure["speedup"] = figure["images_per_s"] / reference["images_per_s"]
        figure["cpu_ratio"] = reference["cpu_s_per_image"] / figure["cpu_s_per_image"]
    return {"rounds": rounds, "seconds_per_round": seconds, "figures": figures, "text": texts}


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


LABELS = {
    "rapidocr": "RapidOCR 1.4.4 in process, one image at a time",
    "rapidocr_sleeping": "RapidOCR 1.4.4, its ONNX Runtime threads sleeping instead of spinning (not its default)",
    "in_process": "forwardpass `load_pipeline('ocr')` in process, one image at a time",
}


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
        f"{ocr['rounds']} rounds of {ocr['seconds_per_round']:.0f} s, each contender in turn within a round. CPU per "
        "image: the CPU seconds (all threads) of the process doing the work, the server's own for the server rows "
        "(the load generator's HTTP client not counted).",
        "",
        "| pipeline | images/s | vs RapidOCR | CPU s per image | CPU vs RapidOCR |",
        "|---|---|---|---|---|",
    ]
    for name, figure in ocr["figures"].items():
        label = LABELS.get(name, f"forwardpass serve, {name.removeprefix('server_c')} concurrent client(s)")
        lines.append(
            f"| {label} | {figure['images_per_s']:.2f} | {figure['speedup']:.2f}x | {figure['cpu_s_per_image']:.3f} "
            f"| {figure['cpu_ratio']:.2f}x |"
        )
    texts = ocr["text"]
    lines += [
        "",
        f"Same text as RapidOCR in process: {texts['rapidocr'] == texts['in_process']}; through the server: "
        f"{texts['rapidocr'] == texts['server']} (the server reads each line alone, padded only to its own width; "
        "RapidOCR and the in-process pipeline pad each line to the widest of its batch of 6).",
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
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each contender in each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    results = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": os.getloadavg()[0],
        "ocr": bench_ocr(args.seconds, args.rounds, [int(c) for c in args.concurrency.split(",")]),
        "detection": bench_detection(args.seconds),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vision.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(args.out / "vision.md", results)
    print((args.out / "vision.md").read_text())


if __name__ == "__main__":
    main()
