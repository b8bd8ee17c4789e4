"""`forwardpass generate`: a decoder language model writes its continuation of a prompt, token by token, as it goes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from forwardpass.cli.common import REPOSITORY, TRUST_PICKLE, VERSION, open_model
from forwardpass.errors import ConfigError, InputError

__all__ = ["register"]

CACHE = ".forwardpass"  # beside the source, as conversions are cached


def generate(
    model: str = typer.Argument(
        ...,
        metavar="MODEL",
        help="An exported decoder (a name in the repository, or its folder), or a Hugging Face causal-LM folder or "
        ".gguf file, exported to ONNX with its KV cache on first use (cached in .forwardpass/ beside it).",
        show_default=False,
    ),
    prompt: str = typer.Argument(..., metavar="PROMPT", help="The text to continue.", show_default=False),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", "-n", min=1, help="Tokens to write at most (default: the model's config)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, help="0: greedy; above 0: sampling."),
    top_k: int = typer.Option(0, "--top-k", "-k", min=0, help="Sample from the k most likely tokens only (0: all)."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Sample from the smallest set reaching p."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Makes sampling reproducible.", show_default=False),
    stop_token_ids: list[int] = typer.Option(
        [], "--stop-token-id", help="A token id that ends the text (besides the model's end tokens); repeatable."
    ),
    stop: list[str] = typer.Option(
        [], "--stop", help="Text that ends the generation, left out of the output; repeatable.", show_default=False
    ),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Go on past the model's end-of-text tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end instead of streaming."),
    threads: int = typer.Option(0, "--threads", min=0, help="ONNX Runtime intra-op threads (0: one per core)."),
    export_to: Path | None = typer.Option(
        None,
        "--export-to",
        help="Export the Hugging Face folder or .gguf file into this model folder (e.g. models/smollm2, to serve it "
        "from a repository) instead of the cache, then generate with it.",
        show_default=False,
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        "-p",
        help="fp32, int4 or int8 (weight-only, block-wise MatMulNBits): the version of that precision, made first "
        "(with its perplexity against FP32 in precision.json) when the exported folder has none.",
        show_default=False,
    ),
    block_size: int = typer.Option(32, "--block-size", help="INT4/INT8: weights per quantization block."),
    repository: Path | None = REPOSITORY,
    version: int | None = VERSION,
    trust_pickle: bool = TRUST_PICKLE,
) -> None:
    """Continue PROMPT with the model, printing each piece of text as soon as its token is chosen; the count,
    speed and time to first token go to stderr.

    Examples:

      forwardpass generate path/to/SmolLM2-135M-Instruct.Q4_1.gguf "The capital of France is" -n 32

      forwardpass generate my-decoder "Once upon a time" -t 0.8 --top-p 0.9 --seed 7 -r models/

      forwardpass generate gpt2-folder/ "Hello" --json

      forwardpass generate SmolLM2-135M-Instruct.Q4_1.gguf "Hi" --export-to models/smollm2   # then: serve it

      forwardpass generate smollm2 "Hi" -r models/ --precision int4   # makes models/smollm2/<next version> once
    """
    from forwardpass.generation import SamplingParams, StopStrings, open_generator  # on use: numpy-heavy loop code

    params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop_token_ids), ignore_eos)
    if precision not in (None, "fp32", "int4", "int8"):
        raise InputError(f"--precision: '{precision}' is not fp32, int4 or int8")
    source = _exported(model, export_to) if repository is None else model
    if precision in ("int4", "int8") and version is None:
        _with_variant(Path(source) if repository is None else repository / model, precision, block_size, threads)
    loaded = open_model(
        str(source),
        repository,
        version,
        trust_pickle=trust_pickle,
        intra_op_threads=threads,
        warmup=0,
        precision=precision,
    )
    generator = open_generator(loaded)
    try:
        prompt_ids = generator.encode(prompt)
        text, stops = generator.codec.incremental(), StopStrings(tuple(stop))
        ids: list[int] = []
        pieces: list[str] = []
        reason = None
        started = time.perf_counter()
        first_token_s = 0.0
        for event in generator.tokens(prompt_ids, params):  # leaving the loop early cancels the generation
            if not ids:
                first_token_s = time.perf_counter() - started
            ids.append(event.token_id)
            reason = event.finish_reason
            piece = stops.feed(text.push(event.token_id) + (text.flush() if reason else ""), final=bool(reason))
            pieces.append(piece)
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
            if stops.stopped:
                reason = "stop"
                break
        elapsed = time.perf_counter() - started
    finally:
        generator.close()
        loaded.close()
    if as_json:
        answer = {
            "text": "".join(pieces),
            "token_ids": ids,
            "prompt_tokens": len(prompt_ids),
            "finish_reason": reason,
            "first_token_ms": round(first_token_s * 1000, 3),
            "tokens_per_s": round(len(ids) / elapsed, 2),
        }
        typer.echo(json.dumps(answer, ensure_ascii=False))
        return
    sys.stdout.write("\n")
    sys.stdout.flush()  # the text ends before the figures on stderr begin
    rate = len(ids) / elapsed if elapsed else 0.0
    typer.echo(
        f"{len(ids)} tokens in {elapsed:.2f} s ({rate:.1f} tokens/s), first after {first_token_s * 1000:.0f} ms, "
        f"finish: {reason}",
        err=True,
    )


def _exported(model: str, export_to: Path | None) -> str | Path:
    """A Hugging Face causal LM or GGUF file → its exported decoder folder (made once, or into `export_to`);
    anything else as given."""
    from forwardpass.generation.export import EXPORT_REVISION, export_decoder, is_causal_lm

    path = Path(model).expanduser()
    if not path.exists() or not is_causal_lm(path):
        if export_to is not None:
            raise ConfigError(f"--export-to: '{model}' is not a Hugging Face causal-LM folder or a .gguf file")
        return model
    cache = path.parent / CACHE / f"{path.stem}-decoder" if path.is_file() else path / CACHE / "decoder"
    fresh = (
        (cache / "1" / "model.onnx").is_file()
        and (cache / "1" / "model.onnx").stat().st_mtime >= _newest(path)
        and _export_revision(cache) == EXPORT_REVISION
    )
    if export_to is None and fresh:
        return cache
    with Console(stderr=True).status(f"exporting {path.name} to ONNX with its KV cache ..."):
        return export_decoder(path, export_to or cache)


def _with_variant(folder: Path, precision: str, block_size: int, threads: int) -> None:
    """Make the `precision` version of the exported decoder `folder` unless it has one."""
    from forwardpass.precision.decoder import quantize_decoder
    from forwardpass.repository import read_variant, versions_in

    if not folder.is_dir() or not versions_in(folder):
        raise ConfigError(f"--precision {precision}: '{folder}' is not an exported decoder folder")
    if any(read_variant(folder / str(v)).get("precision") == precision for v in versions_in(folder)):
        return
    with Console(stderr=True).status(f"quantizing {folder.name} to {precision}, measuring its perplexity ..."):
        made = quantize_decoder(folder, precision, block_size=block_size, threads=threads or 1)  # type: ignore[arg-type]
    typer.echo(f"made {made} ({precision})", err=True)


def _export_revision(folder: Path) -> int | None:
    """The export revision the folder's 1/model.json records (None: an export from before revisions were kept)."""
    try:
        revision = json.loads((folder / "1" / "model.json").read_text(encoding="utf-8")).get("export_revision")
    except (OSError, ValueError, AttributeError):
        return None
    return revision if isinstance(revision, int) else None


def _newest(path: Path) -> float:
    files = [path] if path.is_file() else [file for file in path.iterdir() if file.is_file()]
    return max(file.stat().st_mtime for file in files)


def register(app: typer.Typer) -> None:
    app.command()(generate)
