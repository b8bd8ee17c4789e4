"""Hugging Face causal language models (a folder, or a GGUF file) → an ONNX decoder with its KV cache, as a model
folder forwardpass serves: `config.yaml` (with its `generation:` section), `tokenizer.json`, `1/model.onnx` with its
weights in `1/model.onnx.data`, `1/model.json` (how it was made, with the measured parity), and
`tokenizer_config.json` with the model's chat template and special tokens when it has a template (the GGUF
metadata's, or the Hugging Face tokenizer's).

Architectures ONNX Runtime GenAI's model builder knows are exported by it (forwardpass.generation.builder: fused
attention, past lengths from the attention mask, right padding) unless the model's attention sees a sliding window
shorter than its context, which that graph leaves out. The others, and those the builder fails on or gets wrong (its
parity check), go through torch.onnx: that graph takes
`input_ids`, `attention_mask` (past + new tokens), `position_ids` and `past_key_values.<i>.key|value` [batch, heads,
past, head_dim]; it gives `logits` of the last position only and `present.<i>.key|value` (past + new). Explicit
position ids and a full attention mask let one batch hold sequences of different lengths, left-padded.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import shutil
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import helper

from forwardpass.errors import ConfigError, ForwardpassError
from forwardpass.formats.base import descriptor_silenced, require
from forwardpass.formats.torch import import_torch
from forwardpass.generation import builder, tied
from forwardpass.generation.chat import CONFIG_FILE as CHAT_CONFIG_FILE
from forwardpass.generation.chat import ChatTemplate

__all__ = ["EXPORT_REVISION", "EXTRA", "WEIGHTS_FILE", "export_decoder", "is_causal_lm", "save_with_weights_apart"]

EXTRA = "huggingface"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
FIXED_INPUTS = ("input_ids", "attention_mask", "position_ids")
# Raised whenever the same model files would now export differently (a fix): `forwardpass generate` makes again the
# exports it cached with another (2: sliding windows, LongRoPE's context and repetition_penalty, which revision 1
# exported into wrong tokens)
EXPORT_REVISION = 2

log = logging.getLogger(__name__)


def is_causal_lm(path: Path) -> bool:
    """A GGUF file, or a Hugging Face folder whose architecture ends in ...ForCausalLM or ...LMHeadModel."""
    if path.is_file():
        return path.suffix == ".gguf"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    architectures = config.get("architectures") or [] if isinstance(config, dict) else []
    return any(str(name).endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)


def export_decoder(source: Path, destination: Path, *, opset: int = 17, tolerance: float = 1e-3) -> Path:
    """Export `source` (a Hugging Face folder or a .gguf file) into the model folder `destination`; returns it.
    Architectures ONNX Runtime GenAI's model builder knows (forwardpass.generation.builder) go through it, the
    others (and those it fails on) through torch.onnx; either graph is checked against transformers (prefill, then
    a decode step) before it is kept, and 1/model.json records which exporter made it."""
    torch = import_torch(EXTRA)
    transformers = require("transformers", EXTRA)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model, tokenizer_json, chat = _load(transformers, source)
    architecture = next(iter(getattr(model.config, "architectures", None) or []), type(model).__name__)
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination, prefix=".exporting-") as work:
        staged, made = _export_graph(torch, transformers, model, architecture, source, Path(work), opset, tolerance)
        version_folder = destination / "1"
        version_folder.mkdir(exist_ok=True)
        for name in (ONNX_FILE, WEIGHTS_FILE):
            shutil.move(staged.with_name(name), version_folder / name)
    (destination / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    if chat is not None:
        (destination / CHAT_CONFIG_FILE).write_text(json.dumps(chat.settings(), indent=2), encoding="utf-8")
    config = {
        "description": f"{type(model).__name__} decoder with its KV cache, exported by forwardpass from {source.name}",
        "max_batch_size": 0,  # /infer runs one request as given; generation batches sequences itself
        "engine": {"warmup": 0},
        "generation": {
            "tokenizer": "tokenizer.json",
            "eos_token_ids": _eos_token_ids(model),
            "context_length": _context_length(model.config),
            **_repetition_penalty(model),
        },
    }
    (destination / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    provenance = {
        "source": str(source),
        "architecture": architecture,
        "made": datetime.now(UTC).isoformat(timespec="seconds"),
        "export_revision": EXPORT_REVISION,
        "generation_config_not_applied": _not_applied(model, source),
        **made,
        "tool_versions": {**versions, **made.get("tool_versions", {})},
    }
    (destination / "1" / "model.json").write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    return destination


def _export_graph(
    torch: ModuleType,
    transformers: ModuleType,
    model: Any,
    architecture: str,
    source: Path,
    work: Path,
    opset: int,
    tolerance: float,
) -> tuple[Path, dict[str, Any]]:
    """The graph staged in `work` (its weights beside it) and how it was made: by the builder where it knows the
    architecture, else, or where it fails or its graph differs from transformers, by torch.onnx."""
    refused = None
    # the builder's graph attends to every cached token: it answered other tokens than transformers for a
    # Mistral with sliding_window 8 once a sequence passed 8 tokens (its config names no layer_types)
    if architecture in builder.ARCHITECTURES and _sliding_window(model.config) is None:
        staged = work / "builder" / ONNX_FILE
        staged.parent.mkdir()
        try:
            return staged, builder.build(torch, transformers, model, source, staged, tolerance)
        except ForwardpassError as exc:  # e.g. linear rope scaling, which its graph leaves out (parity off by 3.4)
            refused = str(exc)
            log.warning("%s; exporting with torch.onnx instead", refused)
    staged = work / "torch" / ONNX_FILE
    staged.parent.mkdir()
    made = _torch_onnx(torch, transformers, model, source, staged, opset, tolerance)
    return staged, made if refused is None else {**made, "builder_refused": refused}


def _torch_onnx(
    torch: ModuleType, transformers: ModuleType, model: Any, source: Path, staged: Path, opset: int, tolerance: float
) -> dict[str, Any]:
    """The graph traced by torch.onnx into `staged` (weights beside it), its tied embedding stored once; how it was
    made, with the measured parity."""
    decoder = _decoder_module(torch, transformers, model, source)
    names = decoder.names
    example = decoder.example(batch=2, past=3, new=4)
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"}}
    dynamic["attention_mask"] = {0: "batch", 1: "total"}
    dynamic["logits"] = {0: "batch"}
    dynamic.update({name: {0: "batch", 2: "past"} for name in names.past})
    dynamic.update({name: {0: "batch", 2: "total"} for name in names.present})
    # standard output sent nowhere: the TorchScript-based exporter turns its C++ log on whatever it is told (its
    # setup_onnx_logging tests the flag's getter, not its value) and writes the whole Torch IR graph to it, ~300
    # lines for a 2-layer model, before raising for an operator it cannot export; the one-line refusal is what the
    # user should read (and `--json` output must stay JSON)
    with warnings.catch_warnings(), torch.no_grad(), descriptor_silenced(1):
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated but honours the opset
        try:
            torch.onnx.export(
                decoder,
                tuple(example),
                str(staged),
                dynamo=False,
                opset_version=opset,
                input_names=[*FIXED_INPUTS, *names.past],
                output_names=["logits", *names.present],
                dynamic_axes=dynamic,
            )
        except Exception as exc:  # the exporter raises many kinds for unsupported operators
            raise ConfigError(f"{source}: torch.onnx cannot export this decoder: {exc}") from None
    graph = onnx.load(str(staged))
    _keep_fixed_inputs(graph, dynamic)
    shared = tied.share(graph)  # the tied embedding table stored once
    save_with_weights_apart(graph, staged)
    return {
        "exporter": "torch.onnx.export(dynamo=False)",
        "opset": opset,
        "parity": _parity(torch, decoder, staged, tolerance, source),
        "tied_embedding_stored_once": shared,
    }


def _keep_fixed_inputs(graph: onnx.ModelProto, dynamic: dict[str, dict[int, str]]) -> None:
    """Put back a fixed input that torch.onnx left out because the model never reads it (Bloom's ALiBi reads no
    position ids), unused, in its place: the decode loop tells a graph that concatenates its cache by its
    position_ids input, and a graph without it was taken for one that updates its cache in place."""
    present = {value.name for value in graph.graph.input}
    for index, name in enumerate(FIXED_INPUTS):
        if name not in present:
            axes = [dynamic[name][axis] for axis in sorted(dynamic[name])]
            graph.graph.input.insert(index, helper.make_tensor_value_info(name, onnx.TensorProto.INT64, axes))


def save_with_weights_apart(graph: onnx.ModelProto, path: Path) -> None:
    """The graph in `path`, its weights in WEIGHTS_FILE beside it: ONNX Runtime maps that file instead of copying
    the weights out of the parsed graph (SmolLM2 FP32: 0.70 GB resident after loading instead of 1.03 GB)."""
    onnx.save(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=WEIGHTS_FILE)


def _load(transformers: ModuleType, source: Path) -> tuple[Any, str, ChatTemplate | None]:
    """The model in FP32 with eager attention (the plainest graph), its tokenizer as tokenizer.json text, and its
    chat template if it has one."""
    if not source.exists():
        raise ConfigError(f"no Hugging Face folder or GGUF file at '{source}'")
    if not is_causal_lm(source):
        raise ConfigError(f"{source}: not a causal language model (a ...ForCausalLM folder or a .gguf file)")
    gguf = source.is_file()
    folder = source.parent if gguf else source
    # no code from the folder runs (its config's auto_map): left unsaid, transformers asked on the terminal whether to
    # run it, and ran it on a "y"
    options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if gguf:
        options["gguf_file"] = source.name
    try:
        # sizes that differ from the config are loaded (as random weights) only to be named below: transformers'
        # own refusal said 'look at the above report', a report its log level hides
        # transformers' GGUF reader draws its own tqdm bar, which disable_progress_bar leaves on: on stderr before
        # every GGUF export's output, and before the one line of a refusal
        with contextlib.redirect_stderr(io.StringIO()) if gguf else contextlib.nullcontext():
            model, loading = transformers.AutoModelForCausalLM.from_pretrained(
                str(folder),
                attn_implementation="eager",
                dtype="float32",
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                **options,
            )
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for files it cannot read
        raise ConfigError(f"{source}: transformers cannot load this model: {_one_line(exc)}") from None
    _refuse_unloaded(source, loading)
    tokenizer_file = folder / "tokenizer.json"
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **options)
    except Exception as exc:  # as above
        if gguf or not tokenizer_file.is_file():
            raise ConfigError(f"{source}: no fast tokenizer to save as tokenizer.json: {_one_line(exc)}") from None
        return model.eval(), tokenizer_file.read_text(encoding="utf-8"), None  # a tokenizer.json alone: no template
    tokenizer_json = tokenizer_file.read_text(encoding="utf-8") if not gguf and tokenizer_file.is_file() else None
    if tokenizer_json is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(f"{source}: no fast tokenizer to save as tokenizer.json")
        tokenizer_json = backend.to_str()
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    chat = ChatTemplate(template, tokenizer.special_tokens_map, str(source)) if isinstance(template, str) else None
    return model.eval(), tokenizer_json, chat


def _refuse_unloaded(source: Path, loading: dict[str, Any]) -> None:
    """Refuse a model with weights the files did not give: transformers fills a weight they lack, or one whose shape
    differs from the config's, with random values and goes on (a GGUF without blk.1.ffn_up.weight generated tokens
    of those random values, exit 0)."""
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConfigError(f"{source}: the file has no weight for {missing[0]}{more}, which the model needs")
    mismatched = sorted(loading.get("mismatched_keys") or ())
    if mismatched:
        name, held, wanted = mismatched[0]
        raise ConfigError(
            f"{source}: its weight for {name} is {list(held)} where its config (its metadata's sizes: vocab_size, "
            f"embedding length...) makes it {list(wanted)}"
        )


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


class _Names:
    def __init__(self, layers: int) -> None:
        self.past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
        self.present = [name.replace("past_key_values", "present") for name in self.past]


def _decoder_module(torch: ModuleType, transformers: ModuleType, model: Any, source: Path) -> Any:
    cache_class = transformers.DynamicCache
    accepted = inspect.signature(model.forward).parameters
    cache_argument = "cache" if "cache" in accepted else "past_key_values"
    try:
        with torch.no_grad():  # one probe pass: how many layers, and each layer's cache shape
            probe = model(input_ids=torch.zeros((1, 1), dtype=torch.long), use_cache=True)
    except Exception as exc:  # a config transformers loads but cannot run: a traceback from deep in its forward
        raise ConfigError(f"{source}: transformers cannot run this model: {_one_line(exc)}") from None
    probe_cache = getattr(probe, cache_argument, None) or probe.past_key_values
    # the decode loop carries attention keys and values: a state-space layer's state (Mamba, Jamba) ended the export
    # in an AttributeError traceback
    others = sorted({type(layer).__name__ for layer in probe_cache.layers if getattr(layer, "keys", None) is None})
    if others:
        raise ConfigError(
            f"{source}: its cache holds more than attention keys and values ({', '.join(others)}): forwardpass "
            "generates with a KV cache only"
        )
    shapes = [(layer.keys.shape[1], layer.keys.shape[3], layer.values.shape[3]) for layer in probe_cache.layers]

    class Decoder(torch.nn.Module):  # type: ignore[name-defined,misc]  # torch arrives as a ModuleType: Any
        """Flat tensors in and out: what the ONNX exporter and ONNX Runtime want."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.names = _Names(len(shapes))

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(shapes))]
            # no config: every layer keeps its whole past, as the decode loop's cache does, and the model's mask
            # applies its sliding window (a sliding layer of the config's cache drops the oldest keys itself, and the
            # graph's present then no longer matched the attention mask: every request past the window failed)
            cache = cache_class(ddp_cache_data=pairs)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
                **{cache_argument: cache},
            )
            present = getattr(out, cache_argument, None) or out.past_key_values
            return (out.logits, *[t for layer in present.layers for t in (layer.keys, layer.values)])

        def example(self, batch: int, past: int, new: int, seed: int = 0) -> list[Any]:
            """Inputs for `batch` sequences with `past` cached and `new` new tokens; the first row left-padded."""
            generator = torch.Generator().manual_seed(seed)
            vocab = int(self.model.config.vocab_size)
            ids = torch.randint(0, vocab, (batch, new), generator=generator)
            mask = torch.ones((batch, past + new), dtype=torch.long)
            mask[0, : min(2, past + new - 1)] = 0
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
            cache = []
            for heads, key_dim, value_dim in shapes:
                cache.append(torch.randn((batch, heads, past, key_dim), generator=generator))
                cache.append(torch.randn((batch, heads, past, value_dim), generator=generator))
            return [ids, mask, positions, *cache]

    return Decoder().eval()


def _parity(torch: ModuleType, decoder: Any, onnx_path: Path, tolerance: float, source: Path) -> dict[str, Any]:
    """Prefill of a padded batch with an empty cache, then one decode step past the model's sliding window if it has
    one: the largest difference of any output."""
    import onnxruntime as ort

    input_names = [*FIXED_INPUTS, *decoder.names.past]  # the order of the example's tensors
    worst = 0.0
    past_length = max(5, (_sliding_window(decoder.model.config) or 0) + 1)
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        for batch, past, new in ((3, 0, 7), (2, past_length, 1)):
            example = decoder.example(batch, past, new, seed=1)
            with torch.no_grad():
                expected = [t.numpy() for t in decoder(*example)]
            got = session.run(None, {name: t.numpy() for name, t in zip(input_names, example, strict=True)})
            worst = max(worst, *(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True)))
    except Exception as exc:  # ONNX Runtime's own kinds (InvalidGraph, Fail...): e.g. Falcon's ALiBi as complex128
        problem = str(exc).replace(str(onnx_path), "the exported graph").splitlines()[0]
        raise ConfigError(f"{source}: ONNX Runtime cannot run the graph torch.onnx made: {problem}") from None
    if not worst <= tolerance:
        raise ConfigError(f"{source}: the ONNX decoder differs from transformers by {worst:.3g} (> {tolerance})")
    return {"max_abs_diff": worst, "tolerance": tolerance, "cases": f"prefill 3x7 (padded), decode 2x({past_length}+1)"}


def _eos_token_ids(model: Any) -> list[int]:
    vocab = int(model.config.vocab_size)
    found: list[int] = []
    for holder in (getattr(model, "generation_config", None), model.config):
        value = getattr(holder, "eos_token_id", None)
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and 0 <= token < vocab and token not in found:
                found.append(token)
    return found


# generation_config.json settings with which transformers' generate() chooses other tokens, greedy or not, that the
# decode loop does not apply, each with its value that changes nothing (None: any other value changes something)
_NOT_APPLIED = {
    "num_beams": 1,
    "no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "penalty_alpha": None,
    "dola_layers": None,
    "guidance_scale": 1.0,
}


def _not_applied(model: Any, source: Path) -> dict[str, Any]:
    """The model's generation_config.json settings the decode loop leaves out, said on the log and kept in
    1/model.json: they were left out without a word, and its tokens then differed from generate()'s."""
    settings = getattr(model, "generation_config", None)
    found = {
        name: getattr(settings, name)
        for name, neutral in _NOT_APPLIED.items()
        if getattr(settings, name, None) is not None and getattr(settings, name) != neutral
    }
    if found:
        named = ", ".join(f"{name}={value}" for name, value in found.items())
        log.warning("%s: generation_config.json sets %s, which forwardpass does not apply", source, named)
    kept: dict[str, Any] = json.loads(json.dumps(found, default=str))  # as model.json can hold them
    return kept


def _repetition_penalty(model: Any) -> dict[str, float]:
    """The generation_config.json's repetition_penalty where it has one (Qwen2.5 instruct: 1.05): transformers'
    generate() applies it, greedy or not, and without it the greedy tokens were others."""
    penalty = getattr(getattr(model, "generation_config", None), "repetition_penalty", None)
    if isinstance(penalty, (int, float)) and penalty > 0 and penalty != 1:
        return {"repetition_penalty": float(penalty)}
    return {}


def _sliding_window(config: Any) -> int | None:
    """The window of past tokens the model's attention sees when it is shorter than its context (Mistral, Phi-3,
    Qwen2 with use_sliding_window, Gemma 2/3...), else None."""
    window = getattr(config, "sliding_window", None)
    if isinstance(window, int) and 0 < window < _context_length(config):
        return window
    return None


def _context_length(config: Any) -> int:
    longrope = _longrope_switch(config)
    if longrope is not None:
        return longrope
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    return 2048


def _longrope_switch(config: Any) -> int | None:
    """The length past which LongRoPE (Phi-3 128k, Phi-3.5) rotates by its long factors: transformers' generate()
    then recomputes the whole cache with them, where the decode loop keeps the keys it cached and answered other
    tokens from there on (measured: from the 17th of a Phi-3 whose switch is at 16). The context ends there."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kinds = [rope, *(value for value in rope.values() if isinstance(value, dict))] if isinstance(rope, dict) else []
    if not any(kind.get("rope_type", kind.get("type")) == "longrope" for kind in kinds):
        return None
    original = rope.get("original_max_position_embeddings") or getattr(config, "original_max_position_embeddings", 0)
    return int(original) if isinstance(original, int) and original > 1 else None
