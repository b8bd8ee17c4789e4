"""The decode loop against transformers' own generation on the same weights: greedy token ids equal, alone and
under continuous batching; seeded sampling reproducible whatever shares the batch; stop tokens, limits, cancel."""

from __future__ import annotations

import queue
import threading
from types import GeneratorType

import pytest

from forwardpass.errors import ForwardpassError, InputError, Overloaded
from forwardpass.generation import Generator, SamplingParams, TokenEvent, engine
from forwardpass.generation.engine import PREFILL_GROUP_TOKENS, prefill_groups
from tests.generation.conftest import tokens_by_stream

PROMPTS = [
    "A man is eating",
    "The quick brown fox jumps over the lazy dog near the riverbank",
    "Hi",
    "Where is the nearest train station?",
    "Rain is expected tomorrow afternoon. The library closes",
]
GREEDY = SamplingParams(max_new_tokens=24)


def ids_of(generator: Generator, prompt: str, params: SamplingParams = GREEDY) -> list[int]:
    return [event.token_id for event in generator.tokens(generator.encode(prompt), params)]


def test_greedy_alone_equals_transformers(generator: Generator, reference) -> None:
    for prompt in PROMPTS:
        prompt_ids = generator.encode(prompt)
        assert ids_of(generator, prompt) == reference(prompt_ids, 24), prompt
    assert generator.peak_rows == 1


def test_greedy_under_continuous_batching_equals_transformers(generator: Generator, reference) -> None:
    """A long generation runs; shorter ones of other prompt lengths join while it does, finish first and leave."""
    expected = {
        prompt: reference(generator.encode(prompt), 40 if i == 0 else 6 + 3 * i) for i, prompt in enumerate(PROMPTS)
    }
    events: queue.SimpleQueue[tuple[int, TokenEvent | ForwardpassError]] = queue.SimpleQueue()
    finish_order: list[int] = []
    got: dict[int, list[int]] = {i: [] for i in range(len(PROMPTS))}

    def submit(i: int) -> None:
        params = SamplingParams(max_new_tokens=len(expected[PROMPTS[i]]), ignore_eos=True)
        generator.submit(generator.encode(PROMPTS[i]), params, lambda event: events.put((i, event)))

    submit(0)
    joined = False
    while len(finish_order) < len(PROMPTS):
        i, event = events.get(timeout=30)
        assert isinstance(event, TokenEvent), event
        got[i].append(event.token_id)
        if i == 0 and len(got[0]) == 2 and not joined:  # the long one is running: the others arrive now
            joined = True
            for j in range(1, len(PROMPTS)):
                submit(j)
        if event.finish_reason is not None:
            finish_order.append(i)
    for i, prompt in enumerate(PROMPTS):
        assert got[i] == expected[prompt][: len(got[i])] and len(got[i]) == len(expected[prompt]), prompt
    assert finish_order[-1] == 0, "the long generation held up shorter ones"
    # Joined the running batch; not necessarily all at once: under load the engine may finish a short one before the
    # test thread has submitted the last.
    assert generator.peak_rows > 1
    assert generator.rows_decoded < generator.steps * len(PROMPTS), "finished sequences did not leave the batch"


def test_prompts_arriving_together_prefill_shortest_first_in_small_groups() -> None:
    # lengths 13, 7, 7, 8, 9, 10, 10, 7: two 7s fill 14 of the 16 tokens; a third 7 would pad to 21, two 9s to 18
    assert PREFILL_GROUP_TOKENS == 16
    assert prefill_groups([13, 7, 7, 8, 9, 10, 10, 7]) == [[1, 2], [7, 3], [4], [5], [6], [0]]
    assert prefill_groups([1] * 20) == [list(range(16)), list(range(16, 20))]
    assert prefill_groups([40]) == [[0]]
    assert prefill_groups([]) == []


def test_a_short_prompt_gets_its_first_token_before_a_long_one_that_arrived_with_it(
    generator: Generator, reference
) -> None:
    """Both arrive while a generation runs (submitted from its listener, between two steps): the short prompt runs
    first, alone, and tells its first token before the long one has run; the tokens are still transformers'."""
    long, short = generator.encode(PROMPTS[1]), generator.encode(PROMPTS[2])
    assert len(prefill_groups([len(long), len(short)])) == 2
    expected_ids = {"long": reference(long, 8), "short": reference(short, 8)}
    events: queue.SimpleQueue[tuple[str, TokenEvent | ForwardpassError]] = queue.SimpleQueue()
    heard = []

    def submit(name: str, prompt_ids: list[int]) -> None:
        params = SamplingParams(max_new_tokens=len(expected_ids[name]), ignore_eos=True)
        generator.submit(prompt_ids, params, lambda event: events.put((name, event)))

    def running(event: TokenEvent | ForwardpassError) -> None:
        heard.append(event)
        events.put(("running", event))
        if len(heard) == 2:  # on the loop's thread, between two steps: both are waiting when the next step begins
            submit("long", long)
            submit("short", short)

    generator.submit(generator.encode(PROMPTS[0]), SamplingParams(max_new_tokens=20, ignore_eos=True), running)
    got, order = tokens_by_stream(events, ["running", "long", "short"])
    assert order.index("short") < order.index("long")
    assert got["long"] == expected_ids["long"] and got["short"] == expected_ids["short"]


def test_prompts_prefilled_in_chunks_equal_transformers(
    generator: Generator, reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph with position_ids (its cache concatenated) continues a prompt from its own cache chunk by chunk:
    alone, and beside a stream that runs while the chunks do (chunks of 4 tokens: this model holds 128)."""
    monkeypatch.setattr(engine, "PREFILL_CHUNK_TOKENS", 4)
    long = generator.encode(PROMPTS[1] + " " + PROMPTS[4])
    assert len(long) > 3 * 4
    assert [event.token_id for event in generator.tokens(long, SamplingParams(max_new_tokens=16, ignore_eos=True))] == (
        reference(long, 16, eos_token_id=-1)
    )
    results: dict[str, list[int]] = {}

    def run(name: str, prompt_ids: list[int]) -> None:
        params = SamplingParams(max_new_tokens=16, ignore_eos=True)
        results[name] = [event.token_id for event in generator.tokens(prompt_ids, params)]

    short = generator.encode(PROMPTS[2])
    threads = [threading.Thread(target=run, args=(name, ids)) for name, ids in (("short", short), ("long", long))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {"short": reference(short, 16, eos_token_id=-1), "long": reference(long, 16, eos_token_id=-1)}


def test_concurrent_threads_equal_transformers(generator: Generator, reference) -> None:
    results: dict[str, list[int]] = {}

    def run(prompt: str) -> None:
        results[prompt] = ids_of(generator, prompt, SamplingParams(max_new_tokens=16))

    threads = [threading.Thread(target=run, args=(prompt,)) for prompt in PROMPTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for prompt in PROMPTS:
        assert results[prompt] == reference(generator.encode(prompt), 16), prompt


def test_seeded_sampling_is_reproducible_alone_and_batched(generator: Generator) -> None:
    params = SamplingParams(max_new_tokens=20, temperature=1.5, top_k=50, top_p=0.95, seed=7, ignore_eos=True)
    alone = ids_of(generator, PROMPTS[0], params)
    assert ids_of(generator, PROMPTS[0], params) == alone
    other_seed = ids_of(generator, PROMPTS[0], SamplingParams(**{**params.__dict__, "seed": 8}))
    assert other_seed != alone
    greedy = ids_of(generator, PROMPTS[0], SamplingParams(max_new_tokens=20, ignore_eos=True))
    assert alone != greedy, "temperature 1.5 sampled exactly the greedy sequence: sampling is not happening"
    # the same seeded request while others share the batch
    results: dict[int, list[int]] = {}

    def run(i: int) -> None:
        prompt_params = params if i == 0 else SamplingParams(max_new_tokens=30, temperature=1.0, seed=i)
        results[i] = ids_of(generator, PROMPTS[i], prompt_params)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results[0] == alone


def test_stop_token_ends_the_generation(generator: Generator, reference) -> None:
    prompt_ids = generator.encode(PROMPTS[1])
    full = reference(prompt_ids, 24)
    stop = full[5]
    events = list(generator.tokens(prompt_ids, SamplingParams(max_new_tokens=24, stop_token_ids=(stop,))))
    assert [event.token_id for event in events] == full[: full.index(stop) + 1]
    assert events[-1].finish_reason == "stop"
    assert all(event.finish_reason is None for event in events[:-1])


def test_end_of_text_token_stops_unless_ignored(exported, reference) -> None:
    """An end token as transformers treats it: included, and the end; ignore_eos goes on past it. The seeded model
    seldom writes its own (0), so the model's config names a token it does write."""
    import forwardpass
    from forwardpass.generation import TextCodec

    model = forwardpass.load(exported)
    codec = TextCodec(exported / "tokenizer.json")
    prompt_ids = codec.encode(PROMPTS[3])
    end = reference(prompt_ids, 24)[6]
    expected = reference(prompt_ids, 24, eos_token_id=end)
    assert model.config.generation is not None
    config = model.config.generation.model_copy(update={"eos_token_ids": [end]})
    generator = Generator(model.session, config, codec, "gpt2")
    try:
        events = list(generator.tokens(prompt_ids, SamplingParams(max_new_tokens=24)))
        assert [event.token_id for event in events] == expected and expected[-1] == end
        assert events[-1].finish_reason == "stop"
        ignoring = list(generator.tokens(prompt_ids, SamplingParams(max_new_tokens=24, ignore_eos=True)))
        assert len(ignoring) == 24 and ignoring[-1].finish_reason == "length"
    finally:
        generator.close()


def test_limits(generator: Generator) -> None:
    events = list(generator.tokens(generator.encode("Hi"), SamplingParams(max_new_tokens=3, ignore_eos=True)))
    assert [event.finish_reason for event in events] == [None, None, "length"]
    context = generator.config.context_length
    near_full = [5] * (context - 2)
    events = list(generator.tokens(near_full, SamplingParams(max_new_tokens=50, ignore_eos=True)))
    assert len(events) == 2 and events[-1].finish_reason == "length"
    with pytest.raises(InputError, match="holds"):
        generator.submit([5] * context, GREEDY, lambda event: None)
    with pytest.raises(InputError, match="vocabulary"):
        generator.encode([1, 2, 100_000])
    with pytest.raises(InputError, match="empty"):
        generator.encode("")
    with pytest.raises(InputError, match="top_p"):
        SamplingParams(top_p=0)


def test_cancel_leaves_the_batch(generator: Generator) -> None:
    long_params = SamplingParams(max_new_tokens=100, ignore_eos=True)
    stream = generator.tokens(generator.encode(PROMPTS[0]), long_params)
    assert isinstance(stream, GeneratorType)  # a generator: closing it is how a consumer leaves
    first = next(stream)
    assert first.finish_reason is None
    stream.close()  # the consumer leaves: its ticket is cancelled
    after = ids_of(generator, PROMPTS[2], SamplingParams(max_new_tokens=10, ignore_eos=True))
    assert len(after) == 10
    assert generator.rows_decoded < 100, "the cancelled generation went on decoding"


def one_waiting_place(exported) -> Generator:
    """A generator that decodes one sequence at a time and queues one more."""
    import forwardpass
    from forwardpass.config import GenerationConfig
    from forwardpass.generation import TextCodec

    model = forwardpass.load(exported)
    config = GenerationConfig(max_queue_size=1, max_batch_size=1, eos_token_ids=[0], context_length=128)
    return Generator(model.session, config, TextCodec(exported / "tokenizer.json"), "gpt2")


def test_queue_limit_and_close(exported) -> None:
    generator = one_waiting_place(exported)
    received: queue.SimpleQueue[TokenEvent | ForwardpassError] = queue.SimpleQueue()
    long_params = SamplingParams(max_new_tokens=120, ignore_eos=True)
    generator.submit([5, 6], long_params, received.put)
    assert isinstance(received.get(timeout=30), TokenEvent)  # running: the queue is empty again
    generator.submit([5, 6], long_params, received.put)  # waits: the batch holds one sequence
    with pytest.raises(Overloaded):
        generator.submit([5, 6], long_params, received.put)
    generator.close()
    outcomes = []
    while not received.empty():
        outcomes.append(received.get())
    assert any(isinstance(outcome, Overloaded) for outcome in outcomes), "a request left unanswered at close"
    with pytest.raises(Overloaded):
        generator.submit([5, 6], long_params, received.put)


def test_a_cancelled_request_leaves_the_queue_to_the_next(exported) -> None:
    """Clients that gave up while their requests waited behind a full batch must not fill the queue for as long as
    the batch stays full (minutes of long generations): a request that finds the queue full takes their place."""
    generator = one_waiting_place(exported)
    received: queue.SimpleQueue[TokenEvent | ForwardpassError] = queue.SimpleQueue()
    long_params = SamplingParams(max_new_tokens=120, ignore_eos=True)
    try:
        generator.submit([5, 6], long_params, received.put)
        assert isinstance(received.get(timeout=30), TokenEvent)  # running: the queue is empty again
        generator.submit([5, 6], long_params, received.put).cancel()  # waited, then its client went away
        generator.submit([5, 6], long_params, received.put)  # the queue's one place is free again
        with pytest.raises(Overloaded):
            generator.submit([5, 6], long_params, received.put)
    finally:
        generator.close()
