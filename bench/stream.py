"""Online inference benchmark: record streams (`forwardpass stream`'s engine) and stateful sequences (Silero VAD over
gRPC `ModelStreamInfer`), each against what it replaces, in the same run.

Usage: python bench/stream.py [--records 3000] [--texts 128] [--rounds 3] [--chunks 150] [--sequences 16]
                              [--out bench/results]

- Records (bundled `diabetes`: a JSON record → value; bundled `minilm`: a line of text → embedding): all records at
  once through `run_stream` (micro-batches form from what is waiting) vs `Model.predict` one record at a time; and a
  trickle (each record sent only after the previous answer) whose per-record latency is compared with one
  `Model.predict` call. Rounds alternate the contenders; ratios are medians of round-by-round ratios.
- Sequences (bundled `silero_vad`): `forwardpass serve` in a process of its own, the stock
  tritonclient on one stream. One sequence alone vs N interleaved sequences (aggregate chunks/s, mean batch), and
  both against raw ONNX Runtime running the same graph chunk by chunk (one sequence; N sequences batched by hand).

Writes <out>/stream.json and <out>/stream.md with machine info.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

import forwardpass
from forwardpass.measure import machine_info
from forwardpass.measure.stats import LatencySummary, paired_ratio
from forwardpass.modes.stream import RecordFormat, run_stream
from forwardpass.repository import default_repository

CHUNK = 512
FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Stateful models keep a recurrent state across the chunks of a sequence.",
    "Records arrive one by one and each answer must come back at once.",
    "A server batches the requests that queued while the previous forward pass ran.",
]


def diabetes_records(count: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    columns = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    low = np.array([20, 1, 18, 60, 100, 50, 25, 2, 3.5, 60])
    high = np.array([80, 2, 40, 130, 300, 240, 100, 9, 6.5, 130])
    rows = rng.uniform(low, high, size=(count, len(columns)))
    return [dict(zip(columns, map(float, row), strict=True)) for row in rows]


def bench_records(name: str, records: list[Any], record_format: RecordFormat, rounds: int) -> dict[str, Any]:
    """Each round measures every contender back to back; figures are medians over rounds, ratios medians of
    round-by-round ratios (the machine is shared: its speed drifts)."""
    model = forwardpass.load(name)
    count = len(records)
    lines = [(record if record_format == "text" else orjson.dumps(record).decode()) + "\n" for record in records]
    trickle = min(count, 200)

    def predict_loop() -> float:
        started = time.perf_counter()
        for record in records:
            model.predict(record)
        return count / (time.perf_counter() - started)

    def burst() -> tuple[float, float]:
        sink: list[bytes] = []
        stats = run_stream(model, lines, sink.append, record_format=record_format)
        assert stats.errors == 0 and len(sink) == count
        return stats.records / ((stats.finished or 0) - stats.started), stats.batched_records / stats.batches

    def trickled() -> tuple[float, float]:
        answered: queue.Queue[None] = queue.Queue()

        def paced() -> Iterator[str]:
            for line in lines[:trickle]:
                yield line
                answered.get(timeout=30)

        stats = run_stream(model, paced(), lambda line: answered.put(None), record_format=record_format)
        return LatencySummary.of(stats.latencies_s).p50_ms, stats.batched_records / stats.batches

    def alone() -> float:
        latencies = []
        for record in records[:trickle]:
            started = time.perf_counter()
            model.predict(record)
            latencies.append(time.perf_counter() - started)
        return LatencySummary.of(latencies).p50_ms

    loops, bursts, trickles, alones = [], [], [], []
    for _ in range(rounds):
        loops.append(predict_loop())
        bursts.append(burst())
        trickles.append(trickled())
        alones.append(alone())
    model.close()
    burst_rates = [rate for rate, _ in bursts]
    trickle_p50s = [p50 for p50, _ in trickles]
    return {
        "model": name,
        "records": count,
        "rounds": rounds,
        "burst_records_per_s": statistics.median(burst_rates),
        "predict_loop_records_per_s": statistics.median(loops),
        "burst_ratio_vs_predict_loop": paired_ratio(burst_rates, loops),
        "burst_mean_batch": statistics.median(batch for _, batch in bursts),
        "trickle_latency_p50_ms": statistics.median(trickle_p50s),
        "predict_alone_latency_p50_ms": statistics.median(alones),
        "trickle_latency_ratio_vs_predict_alone": paired_ratio(trickle_p50s, alones),
        "trickle_mean_batch": statistics.median(batch for _, batch in trickles),
    }


class Server:
    """`forwardpass serve` in a process of its own (the client must not share its interpreter), serving a repository
    of silero_vad alone."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.folder = tempfile.TemporaryDirectory()
        shutil.copytree(default_repository() / "silero_vad", Path(self.folder.name) / "silero_vad")
        command = [FORWARDPASS, "serve", "--repository", self.folder.name, "--http-port", "0", "--grpc-port", str(port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        with triton.InferenceServerClient(f"127.0.0.1:{self.port}") as client:
            while time.monotonic() < deadline:
                try:
                    if client.is_model_ready("silero_vad"):
                        return self
                except InferenceServerException:
                    pass
                time.sleep(0.1)  # polling a process that is starting: it has no event to await
        raise RuntimeError("forwardpass serve did not become ready within 120 s")

    def __exit__(self, *exc_info: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.folder.cleanup()


def stream_sequences(client: triton.InferenceServerClient, audio: np.ndarray, sequences: int, base: int) -> float:
    """Every sequence streams `audio` chunk by chunk, interleaved on one gRPC stream; returns chunks/s."""
    chunks = audio.reshape(-1, 1, CHUNK)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error))
    started = time.perf_counter()
    for index, chunk in enumerate(chunks):
        for sequence in range(sequences):
            tensor = triton.InferInput("audio", [1, CHUNK], "FP32")
            tensor.set_data_from_numpy(chunk)
            end = index == len(chunks) - 1
            client.async_stream_infer(
                "silero_vad", [tensor], sequence_id=base + sequence, sequence_start=index == 0, sequence_end=end
            )
    errors = [answers.get(timeout=120) for _ in range(len(chunks) * sequences)]
    elapsed = time.perf_counter() - started
    client.stop_stream()
    assert not any(errors), errors[:3]
    return len(chunks) * sequences / elapsed


def raw_ort(audio: np.ndarray, sequences: int) -> float:
    """The same graph in plain ONNX Runtime, states kept by hand; N sequences stacked into one batch per step."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path = default_repository() / "silero_vad" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    state = np.zeros((2, sequences, 128), np.float32)
    context = np.zeros((sequences, 64), np.float32)
    chunks = audio.reshape(-1, 1, CHUNK)
    started = time.perf_counter()
    for chunk in chunks:
        batch = np.repeat(chunk, sequences, axis=0)
        _, state, context = session.run(None, {"audio": batch, "state": state, "context": context})
    return len(chunks) * sequences / (time.perf_counter() - started)


def bench_sequences(chunks: int, sequences: int, rounds: int) -> dict[str, Any]:
    audio = (np.random.default_rng(1).standard_normal(chunks * CHUNK) * 0.1).astype(np.float32)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ones, manys, raw_ones, raw_manys = [], [], [], []
    with Server(port), triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        stream_sequences(client, audio[: 10 * CHUNK], 1, 900_000)  # warm-up
        for index in range(rounds):
            ones.append(stream_sequences(client, audio, 1, 1_000 + index))
            manys.append(stream_sequences(client, audio, sequences, 2_000 + 100 * index))
            raw_ones.append(raw_ort(audio, 1))
            raw_manys.append(raw_ort(audio, sequences))
        batches = client.get_inference_statistics("silero_vad", as_json=True)["model_stats"][0]["batch_stats"]
    passes = sum(int(b["compute_infer"]["count"]) for b in batches)
    rows = sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in batches)
    return {
        "model": "silero_vad",
        "chunks_per_sequence": chunks,
        "sequences": sequences,
        "rounds": rounds,
        "server_one_sequence_chunks_per_s": statistics.median(ones),
        "server_many_sequences_chunks_per_s": statistics.median(manys),
        "server_many_vs_one_ratio": paired_ratio(manys, ones),
        "server_mean_batch": rows / passes,
        "raw_ort_one_sequence_chunks_per_s": statistics.median(raw_ones),
        "raw_ort_many_sequences_chunks_per_s": statistics.median(raw_manys),
        "server_vs_raw_ort_one_sequence_ratio": paired_ratio(ones, raw_ones),
        "server_vs_raw_ort_many_sequences_ratio": paired_ratio(manys, raw_manys),
    }


def markdown(result: dict[str, Any]) -> str:
    sequences = result["sequences"]
    lines = [
        "# Online inference: record streams and stateful sequences",
        "",
        f"{result['date']}, {result['machine'].get('cpu', '?')}, {result['machine'].get('logical_cores', '?')} "
        "logical cores, shared with other work (noisy): ratios matter more than absolute figures.",
        "",
    ]
    for records in result["records"]:
        lines += [
            f"## Record stream (`{records['model']}`, {records['records']} records)",
            "",
            "| figure | value |",
            "|---|---|",
            f"| all at once, `run_stream` | {records['burst_records_per_s']:.0f} records/s "
            f"(mean batch {records['burst_mean_batch']:.1f}) |",
            f"| one `Model.predict` per record | {records['predict_loop_records_per_s']:.0f} records/s |",
            f"| **ratio** (median of rounds) | **{records['burst_ratio_vs_predict_loop']:.2f}x** |",
            f"| trickle (next record after each answer): latency p50 | {records['trickle_latency_p50_ms']:.3f} ms "
            f"(mean batch {records['trickle_mean_batch']:.2f}) |",
            f"| one `Model.predict` alone: latency p50 | {records['predict_alone_latency_p50_ms']:.3f} ms |",
            f"| **ratio** (median of rounds) | **{records['trickle_latency_ratio_vs_predict_alone']:.2f}x** |",
            "",
        ]
    lines += [
        f"## Stateful sequences (`{sequences['model']}` over gRPC ModelStreamInfer, "
        f"{sequences['chunks_per_sequence']} chunks of 512 samples per sequence)",
        "",
        "| figure | chunks/s |",
        "|---|---|",
        f"| server, 1 sequence | {sequences['server_one_sequence_chunks_per_s']:.0f} |",
        f"| server, {sequences['sequences']} interleaved sequences (one client process, one stream) | "
        f"{sequences['server_many_sequences_chunks_per_s']:.0f} (mean batch {sequences['server_mean_batch']:.1f}) |",
        f"| **ratio many / one** | **{sequences['server_many_vs_one_ratio']:.2f}x** |",
        f"| raw ONNX Runtime, 1 sequence | {sequences['raw_ort_one_sequence_chunks_per_s']:.0f} |",
        f"| raw ONNX Runtime, {sequences['sequences']} sequences batched | "
        f"{sequences['raw_ort_many_sequences_chunks_per_s']:.0f} |",
        f"| server / raw, 1 sequence | {sequences['server_vs_raw_ort_one_sequence_ratio']:.3f}x |",
        f"| server / raw, {sequences['sequences']} sequences | "
        f"{sequences['server_vs_raw_ort_many_sequences_ratio']:.3f}x |",
        "",
        "A step of a sequence waits for its previous step, so one sequence runs step after step; interleaved",
        "sequences share forward passes. With one Python tritonclient encoding every request, the client sets the pace",
        "of the many-sequence run on this 2-core machine (the mean batch shows how full the server's passes were).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=150)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "records": [
            bench_records("diabetes", diabetes_records(args.records), "jsonl", args.rounds),
            bench_records(
                "minilm", [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(args.texts)], "text", args.rounds
            ),
        ],
        "sequences": bench_sequences(args.chunks, args.sequences, args.rounds),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stream.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "stream.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
