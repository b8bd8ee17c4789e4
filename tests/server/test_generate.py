"""Token generation through the real server: Triton's generate / generate_stream (SSE) and OpenAI's completions
(plain and streamed) give the same tokens; greedy ids equal transformers' own; errors are 4xx in each API's shape."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from forwardpass.generation.export import export_decoder
from forwardpass.generation.seeded import build_seeded_gpt2

PROMPTS = ["A man is eating", "The quick brown fox jumps over the lazy dog near the riverbank", "Hi", "Where is"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_seeded_gpt2(tmp_path_factory.mktemp("hf") / "gpt2-seeded")


@pytest.fixture(scope="module")
def server(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("repository")
    export_decoder(hf_folder, root / "gpt2")
    kit.save(kit.add_graph(1.0), root / "add" / "1", {"max_batch_size": 8})
    running = kit.serve(root)
    yield running
    running.stop()


def events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"].startswith("text/event-stream")
    found = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            found.append(orjson.loads(line[len("data: ") :]))
    return found


def generate(server: Any, body: dict[str, Any], model: str = "gpt2") -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/generate", json=body, timeout=60)


def stream(server: Any, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200
        return events(response)


def test_generate_equals_transformers_greedy(server: Any, hf_folder: Path) -> None:
    from forwardpass.formats.torch import import_torch

    torch = import_torch("huggingface")
    import transformers

    hf_model = transformers.GPT2LMHeadModel.from_pretrained(str(hf_folder)).eval()
    for prompt in PROMPTS[:2]:
        response = generate(server, {"text_input": prompt, "parameters": {"max_tokens": 20}})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model_name"] == "gpt2" and answer["model_version"] == "1"
        prompt_ids = torch.tensor([_encode(hf_folder, prompt)])
        with torch.no_grad():
            expected = hf_model.generate(
                prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                do_sample=False,
                max_new_tokens=20,
                pad_token_id=0,
            )[0, prompt_ids.shape[1] :].tolist()
        assert answer["output_ids"] == expected
        assert answer["finish_reason"] == ("stop" if 0 in expected else "length")


def test_streams_deliver_the_same_tokens_as_the_plain_call(server: Any) -> None:
    for prompt in PROMPTS:
        plain = generate(server, {"text_input": prompt, "max_tokens": 16}).json()
        triton = stream(server, "/v2/models/gpt2/generate_stream", {"text_input": prompt, "max_tokens": 16})
        assert [token for event in triton for token in event["output_ids"]] == plain["output_ids"]
        assert "".join(event["text_output"] for event in triton) == plain["text_output"]
        assert [event["finish_reason"] for event in triton][-1] == plain["finish_reason"]
        assert all(event["finish_reason"] is None for event in triton[:-1])
        body = {"model": "gpt2", "prompt": prompt, "max_tokens": 16, "temperature": 0, "return_token_ids": True}
        completion = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
        assert completion["object"] == "text_completion"
        assert completion["choices"][0]["text"] == plain["text_output"]
        assert completion["choices"][0]["token_ids"] == plain["output_ids"]
        assert completion["usage"]["completion_tokens"] == len(plain["output_ids"])
        chunks = stream(server, "/v1/completions", {**body, "stream": True})
        assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == plain["text_output"]
        assert [chunk["choices"][0]["token_ids"][0] for chunk in chunks] == plain["output_ids"]
        assert chunks[-1]["choices"][0]["finish_reason"] == completion["choices"][0]["finish_reason"]
        assert len({chunk["id"] for chunk in chunks}) == 1


def test_openai_stop_strings_end_the_text_before_them(server: Any) -> None:
    url = f"{server.url}/v1/completions"
    body = {"model": "gpt2", "prompt": PROMPTS[1], "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    full = httpx.post(url, json=body, timeout=60).json()["choices"][0]["text"]
    assert len(full) > 12
    stop = full[6:10]  # inside the text, most likely across a token boundary
    cut = full.find(stop)
    for stops in (stop, ["never in the text", stop]):
        plain = httpx.post(url, json={**body, "stop": stops}, timeout=60).json()
        assert plain["choices"][0]["text"] == full[:cut]
        assert plain["choices"][0]["finish_reason"] == "stop"
        assert plain["usage"]["completion_tokens"] < 24
        chunks = stream(server, "/v1/completions", {**body, "stop": stops, "stream": True})
        assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == full[:cut]
        assert [chunk["choices"][0]["finish_reason"] for chunk in chunks][-1] == "stop"
    unmatched = httpx.post(url, json={**body, "stop": "never in the text"}, timeout=60).json()["choices"][0]
    assert (unmatched["text"], unmatched["finish_reason"]) == (full, "length")
    for bad in (["a", "b", "c", "d", "e"], [1], {"x": 1}):
        refused = httpx.post(url, json={**body, "stop": bad}, timeout=60)
        assert refused.status_code == 400 and "stop" in refused.json()["error"]["message"]


def test_openai_stream_ends_with_done(server: Any) -> None:
    body = {"model": "gpt2", "prompt": "Hi", "max_tokens": 3, "stream": True, "seed": 1}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) == 4


def test_concurrent_streams_equal_their_plain_answers(server: Any) -> None:
    """Requests of different lengths at once: they share the running batch and still get their own tokens."""
    plain = {p: generate(server, {"text_input": p, "max_tokens": 8 + 6 * i}).json() for i, p in enumerate(PROMPTS)}
    got: dict[str, list[int]] = {}

    def run(i: int, prompt: str) -> None:
        found = stream(server, "/v2/models/gpt2/generate_stream", {"text_input": prompt, "max_tokens": 8 + 6 * i})
        got[prompt] = [token for event in found for token in event["output_ids"]]

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(PROMPTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert got == {p: answer["output_ids"] for p, answer in plain.items()}


def test_seeded_sampling_is_reproducible_over_http(server: Any) -> None:
    body = {"model": "gpt2", "prompt": "A man", "max_tokens": 12, "temperature": 1.2, "top_p": 0.9, "seed": 5}
    first = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    again = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    other = httpx.post(f"{server.url}/v1/completions", json={**body, "seed": 6}, timeout=60).json()
    assert first == again
    assert other["choices"][0]["text"] != first


def test_errors_are_4xx_in_each_apis_shape(server: Any) -> None:
    missing = generate(server, {"text_input": "Hi"}, model="nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    not_decoder = generate(server, {"text_input": "Hi"}, model="add")
    assert not_decoder.status_code == 400 and "KV cache" in not_decoder.json()["error"]
    typo = generate(server, {"text_input": "Hi", "max_tokenz": 3})
    assert typo.status_code == 400 and "max_tokenz" in typo.json()["error"]
    wrong_type = generate(server, {"text_input": "Hi", "parameters": {"temperature": "hot"}})
    assert wrong_type.status_code == 400 and "temperature" in wrong_type.json()["error"]
    too_long = generate(server, {"input_ids": [5] * 200})
    assert too_long.status_code == 400
    with httpx.stream("POST", f"{server.url}/v2/models/gpt2/generate_stream", json={"text_input": ""}) as response:
        assert response.status_code == 400
    for body in (
        {"model": "gpt2", "prompt": "Hi", "echo": True},
        {"model": "gpt2", "prompt": "Hi", "top_p": 2},
        {"prompt": "x"},
    ):
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
    unknown = httpx.post(f"{server.url}/v1/completions", json={"model": "nope", "prompt": "Hi"}, timeout=60)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == 404


def figures(server: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_generations_are_counted_in_the_metrics(server: Any) -> None:
    gpt2 = (("model", "gpt2"), ("version", "1"))
    before = figures(server)
    body = {"input_ids": [5, 6, 7], "max_tokens": 4, "ignore_eos": True}
    assert len(generate(server, body).json()["output_ids"]) == 4
    assert len(stream(server, "/v2/models/gpt2/generate_stream", body)) == 4
    assert generate(server, {"input_ids": [5] * 200}).status_code == 400  # too long for the model: its failure
    assert generate(server, {"text_input": "Hi", "max_tokenz": 3}).status_code == 400  # no model reached yet
    after = figures(server)

    def added(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    length = tuple(sorted((*gpt2, ("finish_reason", "length"))))
    assert added("forwardpass_generation_requests_total", length) == 2
    assert added("forwardpass_generated_tokens_total", gpt2) == 8
    assert added("forwardpass_prompt_tokens_total", gpt2) == 6
    assert added("forwardpass_time_to_first_token_seconds_count", gpt2) == 2
    assert added("forwardpass_generation_duration_seconds_count", gpt2) == 2
    assert added("forwardpass_request_failures_total", (("code", "400"), ("model", "gpt2"))) == 1
    assert added("forwardpass_request_failures_total", (("code", "400"), ("model", ""))) == 1


class GatedSession:
    """The real session, but every decode step after the prompt's waits for `gate`: while it is closed, the
    generation cannot end, so an event that arrives then was streamed, not buffered."""

    def __init__(self, session: Any, gate: threading.Event) -> None:
        self.session = session
        self.gate = gate

    def run(self, feed: dict[str, Any]) -> dict[str, Any]:
        if feed["input_ids"].shape[1] == 1:  # a decode step (prompts here are longer than one token)
            assert self.gate.wait(timeout=60)
        return self.session.run(feed)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/models/gpt2/generate_stream", {"text_input": "A man is eating"}),
        ("/v1/completions", {"model": "gpt2", "prompt": "A man is eating", "stream": True, "temperature": 0}),
    ],
)
def test_tokens_are_sent_as_they_come(server: Any, path: str, body: dict[str, Any]) -> None:
    _, generator = server.server.generators.get("gpt2", None)
    gate = threading.Event()
    real = generator.session
    generator.session = GatedSession(real, gate)
    try:
        request = {**body, "max_tokens": 5, "ignore_eos": True}
        with httpx.stream("POST", f"{server.url}{path}", json=request, timeout=30) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            first = orjson.loads(next(lines)[len("data: ") :])  # arrives while the next step waits at the gate
            assert not gate.is_set()
            gate.set()
            rest = [line for line in lines if line != "data: [DONE]"]
    finally:
        generator.session = real
        gate.set()
    reason = first["finish_reason"] if "finish_reason" in first else first["choices"][0]["finish_reason"]
    assert reason is None and len(rest) == 4


def test_a_client_that_leaves_mid_stream_frees_its_place(server: Any) -> None:
    body = {"text_input": "A man", "max_tokens": 100, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v2/models/gpt2/generate_stream", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    # the server goes on answering others at once
    answer = generate(server, {"text_input": "Hi", "max_tokens": 4, "ignore_eos": True}).json()
    assert len(answer["output_ids"]) == 4


def _encode(hf_folder: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(hf_folder / "tokenizer.json")).encode(text).ids


@pytest.mark.parametrize("parameters", [{"max_tokenz": 3}, {"stop": ["an"]}])
def test_an_unknown_generate_parameter_is_refused_as_an_unknown_field_is(
    server: Any, parameters: dict[str, Any]
) -> None:
    """A misspelt field at the top level was refused, the same inside 'parameters' silently ignored: the generation
    ran to its default length, or on past the stop string asked for."""
    response = generate(server, {"text_input": "Hi", "parameters": {"temperature": 0, "stream": False, **parameters}})
    assert response.status_code == 400, response.text
    assert f"unknown generate parameter(s) {list(parameters)}" in response.json()["error"]
