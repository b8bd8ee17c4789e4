"""`forwardpass generate`, the real command: the streamed text and the --json answer agree with transformers'
greedy ids; a Hugging Face folder is exported once and cached; a model that is not a decoder is one error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from forwardpass.generation import TextCodec

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FORWARDPASS, "generate", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_json_answer_equals_transformers(exported: Path, reference) -> None:
    done = run(exported, "The quick brown fox", "-n", "12", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    codec = TextCodec(exported / "tokenizer.json")
    assert answer["token_ids"] == reference(codec.encode("The quick brown fox"), 12)
    assert answer["text"] == codec.decode(answer["token_ids"])
    assert answer["prompt_tokens"] == len(codec.encode("The quick brown fox"))


def test_streamed_text_is_the_decoded_tokens(exported: Path) -> None:
    plain = json.loads(run(exported, "Where is", "-n", "10", "--json").stdout)
    done = run(exported, "Where is", "-n", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout == plain["text"] + "\n"
    assert f"{len(plain['token_ids'])} tokens in" in done.stderr and "first after" in done.stderr


def test_stop_text_ends_the_output_before_it(exported: Path) -> None:
    full = json.loads(run(exported, "Where is", "-n", "16", "--ignore-eos", "--json").stdout)["text"]
    stop = full[5:9]
    stopped = json.loads(run(exported, "Where is", "-n", "16", "--ignore-eos", "--stop", stop, "--json").stdout)
    assert (stopped["text"], stopped["finish_reason"]) == (full[: full.find(stop)], "stop")
    streamed = run(exported, "Where is", "-n", "16", "--ignore-eos", "--stop", "not there", "--stop", stop)
    assert streamed.stdout == full[: full.find(stop)] + "\n"
    assert "finish: stop" in streamed.stderr


def test_hugging_face_folder_is_exported_once(hf_folder: Path, tmp_path: Path, reference) -> None:
    import shutil

    folder = Path(shutil.copytree(hf_folder, tmp_path / "hf"))
    first = run(folder, "Hi", "-n", "5", "--json")
    assert first.returncode == 0, first.stderr
    onnx = folder / ".forwardpass" / "decoder" / "1" / "model.onnx"
    made = onnx.stat().st_mtime_ns
    again = run(folder, "Hi", "-n", "5", "--json")
    assert onnx.stat().st_mtime_ns == made
    assert json.loads(first.stdout)["token_ids"] == json.loads(again.stdout)["token_ids"]
    codec = TextCodec(folder / "tokenizer.json")
    assert json.loads(first.stdout)["token_ids"] == reference(codec.encode("Hi"), 5)
    exported = run(folder, "Hi", "-n", "5", "--json", "--export-to", tmp_path / "repository" / "gpt2")
    assert exported.returncode == 0, exported.stderr
    from_repository = run("gpt2", "Hi", "-n", "5", "--json", "-r", tmp_path / "repository")
    assert json.loads(from_repository.stdout)["token_ids"] == json.loads(first.stdout)["token_ids"]


def test_errors_are_one_line(tmp_path: Path, add_model) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    done = run(tmp_path / "add", "Hi")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not a decoder with a KV cache" in done.stderr
    bad = run(tmp_path / "add", "Hi", "--top-p", "1.5")
    assert bad.returncode == 2


def test_an_export_cached_before_a_fix_is_made_again(hf_folder: Path, tmp_path: Path) -> None:
    """An export cached by a forwardpass whose exports gave wrong tokens for some models (a sliding window,
    LongRoPE) was reused as long as the folder's files were older: its 1/model.json's export revision decides."""
    import shutil

    folder = Path(shutil.copytree(hf_folder, tmp_path / "hf"))
    assert run(folder, "Hi", "-n", "3").returncode == 0
    provenance_file = folder / ".forwardpass" / "decoder" / "1" / "model.json"
    provenance = json.loads(provenance_file.read_text())
    older = {key: value for key, value in provenance.items() if key != "export_revision"}
    provenance_file.write_text(json.dumps(older))
    again = run(folder, "Hi", "-n", "3")
    assert again.returncode == 0, again.stderr
    assert json.loads(provenance_file.read_text())["export_revision"] == provenance["export_revision"]


def test_a_refused_gguf_file_is_one_line(tmp_path: Path) -> None:
    """transformers' GGUF reader drew its progress bar on stderr before the refusal."""
    from tests.generation.test_export import write_tiny_llama_gguf

    source = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(source, leave_out="blk.0.attn_q.weight")
    done = run(source, "The quick")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {source}: the file has no weight for model.layers.0.self_attn.q_proj.weight, which the model needs"
    ]
