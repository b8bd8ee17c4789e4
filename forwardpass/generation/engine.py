"""Continuous batching: one thread runs the decode loop of a model; requests join the running batch at the next
step and leave it as soon as they finish, so a long generation never holds up a short one.

Each step: admit waiting requests (their prompts run shortest first, in small groups padded as the graph needs;
each group's first tokens are sampled as soon as it has run, then its caches join the batch), run one chunk of the
oldest long prompt (longer than PREFILL_CHUNK_TOKENS: it joins the batch after its last chunk), run one decode step
for the whole batch (one new token per sequence), choose each sequence's token, tell its listener, and drop the
sequences that finished or were cancelled. Listeners are called on the loop's thread; `tokens` (blocking) and
`stream` (asyncio) turn them into iterators.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from forwardpass.backends.base import Session
from forwardpass.config import GenerationConfig
from forwardpass.errors import ForwardpassError, InputError, Overloaded
from forwardpass.generation.chat import ChatTemplate
from forwardpass.generation.decoder import BatchCache, DecoderLayout, InPlaceCache, PromptInChunks, fewest_moves
from forwardpass.generation.sampling import SamplingParams, log_probabilities, penalize_repetition, sample
from forwardpass.generation.text import TextCodec

if TYPE_CHECKING:
    from forwardpass.generation.constraint import JsonSchema, SchemaCompiler

__all__ = [
    "PREFILL_CHUNK_TOKENS",
    "PREFILL_GROUP_TOKENS",
    "Generator",
    "Listener",
    "Ticket",
    "TokenEvent",
    "TokenStream",
    "prefill_groups",
]

log = logging.getLogger(__name__)

# A prefill run is a rectangle, every prompt padded to the group's longest, and its cost grows with the padded tokens
# (measured on SmolLM2-135M INT4, 1 thread: 8 prompts of 7-13 tokens cost the same run together as one by one), while
# every prompt of a group waits for the whole group before its first token. Grouping only saves each run's fixed cost
# (the weights read once, about what a few prompt tokens cost): prompts are grouped while the padded tokens stay
# within this.
PREFILL_GROUP_TOKENS = 16
# A longer prompt is prefilled this many tokens per step, between the running batch's decode steps: one 7,000-token
# prompt held every stream for its whole prefill (tens of seconds at 1 thread); now each stream waits at most a
# chunk (~0.25 s on SmolLM2-135M INT4, 1 thread). Measured there on a 1,024-token prompt, chunks of 128 cost 0.94x
# the CPU of one run (512: 0.98x, 64: 0.96x).
PREFILL_CHUNK_TOKENS = 128


@dataclass(frozen=True, slots=True)
class TokenEvent:
    token_id: int
    finish_reason: str | None  # None while the sequence goes on; "stop" (an end token) or "length" (the limit)
    logprob: float | None = None  # with SamplingParams.logprobs: the token's log-probability
    top_logprobs: tuple[tuple[int, float], ...] = ()  # ... and the most likely tokens' (id, log-probability)


Listener = Callable[[TokenEvent | ForwardpassError], object]


class Ticket:
    """A submitted request. `cancel()` takes it out of the batch at the next step (a client that went away)."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Sequence:
    __slots__ = (
        "last",
        "limit",
        "listener",
        "matcher",
        "params",
        "produced",
        "prompt",
        "rng",
        "seen",
        "stops",
        "ticket",
    )

    def __init__(self, prompt: list[int], params: SamplingParams, listener: Listener, limit: int, stops: set[int]):
        self.prompt = prompt
        self.params = params
        self.listener = listener
        self.limit = limit
        self.stops = stops
        self.ticket = Ticket()
        self.rng = np.random.default_rng(params.seed)
        self.produced = 0
        self.last = -1
        self.matcher = params.schema.matcher() if params.schema is not None else None
        self.seen = set(prompt)  # the tokens a repetition penalty applies to: the prompt's and those generated


class TokenStream:
    """One request's tokens on the asyncio loop that submitted it: `async for event in stream`. `close()` (or
    `aclose()`, as `contextlib.aclosing` calls it) takes the request out of the batch at the next step, whether or
    not the iteration ever began."""

    def __init__(self, generator: Generator, prompt_ids: list[int], params: SamplingParams) -> None:
        loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[TokenEvent | ForwardpassError] = asyncio.Queue()
        self._ticket = generator.submit(
            prompt_ids, params, lambda event: loop.call_soon_threadsafe(self._events.put_nowait, event)
        )
        self._done = False

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._events.get()
        if isinstance(event, ForwardpassError):
            self.close()
            raise event
        if event.finish_reason is not None:
            self._done = True
        return event

    def close(self) -> None:
        self._done = True
        self._ticket.cancel()

    async def aclose(self) -> None:
        self.close()


class Generator:
    """Token generation for one decoder session, with continuous batching."""

    def __init__(
        self, session: Session, config: GenerationConfig, codec: TextCodec, name: str, chat: ChatTemplate | None = None
    ) -> None:
        self.session = session
        self.config = config
        self.codec = codec
        self.name = name
        self.chat = chat  # the model's chat template, if it has one
        self.layout = DecoderLayout.of(session, name)
        # the token ids a prompt may hold: the tokenizer's that the model's embedding reads too (-1: the graph's
        # logits do not say how many it reads)
        self.vocab = min(codec.vocab_size, self.layout.vocab) if self.layout.vocab > 0 else codec.vocab_size
        self._pending: deque[_Sequence] = deque()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._schemas: SchemaCompiler | None = None  # made on the first request with a JSON schema
        # what the loop did, for tests and benchmarks: decode steps, rows they decoded, the largest batch
        self.steps = 0
        self.rows_decoded = 0
        self.peak_rows = 0

    def encode(self, prompt: str | list[int]) -> list[int]:
        """A prompt as token ids: text is tokenized; ids are checked against the vocabulary."""
        if isinstance(prompt, str):
            return self.codec.encode(prompt, most_tokens=self.config.context_length)
        if not prompt:
            raise InputError("the prompt is empty")
        self._check_vocabulary(prompt)
        return list(prompt)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Chat messages as the prompt's token ids, rendered by the model's own chat template."""
        if self.chat is None:
            raise InputError(f"model '{self.name}' has no chat template: send a plain prompt to /v1/completions")
        return self.codec.encode(
            self.chat.render(messages), special_tokens=False, most_tokens=self.config.context_length
        )

    def json_schema(self, schema: dict[str, Any]) -> JsonSchema:
        """`schema` compiled for this model's tokenizer (SamplingParams.schema); InputError if it cannot be."""
        if self._schemas is None:
            from forwardpass.generation.constraint import SchemaCompiler

            self._schemas = SchemaCompiler(self.codec.to_json(), self.codec.vocab_size, self.config.eos_token_ids)
        return self._schemas.compile(schema)

    def submit(self, prompt_ids: list[int], params: SamplingParams, listener: Listener) -> Ticket:
        """Queue a request; its listener hears every token (the last with a finish reason) or one error."""
        # text too: a tokenizer can hold tokens past the model's embedding, and one such prompt made the decode step
        # fail, with ONNX Runtime's Gather error, for every sequence of the running batch
        self._check_vocabulary(prompt_ids)
        room = self.config.context_length - len(prompt_ids)
        if room < 1:
            raise InputError(
                f"the prompt has {len(prompt_ids)} tokens; model '{self.name}' holds {self.config.context_length}"
            )
        limit = min(params.max_new_tokens or self.config.max_new_tokens, room)
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.config.eos_token_ids))
        sequence = _Sequence(prompt_ids, params, listener, limit, stops)
        with self._condition:
            if self._closed:
                raise Overloaded(f"model '{self.name}' is shutting down; retry on another instance")
            if len(self._pending) >= self.config.max_queue_size:  # unless some waited in vain: their place is free
                self._pending = deque(waiting for waiting in self._pending if not waiting.ticket.cancelled)
            if len(self._pending) >= self.config.max_queue_size:
                raise Overloaded(f"model '{self.name}' has {len(self._pending)} generations waiting, its limit")
            self._pending.append(sequence)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"generate-{self.name}", daemon=True)
                self._thread.start()
            self._condition.notify()
        return sequence.ticket

    def _check_vocabulary(self, prompt_ids: list[int]) -> None:
        bad = [token for token in prompt_ids if not 0 <= token < self.vocab]
        if bad:
            sizes = f"its tokenizer has {self.codec.vocab_size} tokens, the model reads {self.layout.vocab}"
            raise InputError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab}) ({sizes})")

    def tokens(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[TokenEvent]:
        """The tokens as they come (blocking). The request is queued now: a refusal raises here, not on iteration."""
        events: queue.SimpleQueue[TokenEvent | ForwardpassError] = queue.SimpleQueue()
        return _drain(events.get, self.submit(prompt_ids, params, events.put))

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> TokenStream:
        """The tokens as they come, on the running asyncio loop; closing the stream cancels the request. The request
        is queued now: a refusal raises here, not on iteration."""
        return TokenStream(self, prompt_ids, params)

    def close(self) -> None:
        """Stop the loop; requests still running or waiting get an error."""
        with self._condition:
            self._closed = True
            self._condition.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._fail(list(self._pending), self._unloaded())
        self._pending.clear()

    # the loop's thread

    def _loop(self) -> None:
        cache = self.layout.cache(self.session)
        active: list[_Sequence] = []
        chunked: deque[tuple[_Sequence, PromptInChunks]] = deque()  # long prompts, prefilled a chunk per step
        while True:
            with self._condition:
                while not self._pending and not active and not chunked and not self._closed:
                    self._condition.wait()
                if self._closed:
                    break
                # Not the Batcher's loop: sequences join and leave the running batch (its cache) at every step, so a
                # failed step fails them all (see forwardpass.scheduler.batches for the five loops).
                room = self.config.max_batch_size - len(active) - len(chunked)
                joining = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            try:
                joining = [sequence for sequence in joining if not sequence.ticket.cancelled]
                chunked.extend(
                    (sequence, PromptInChunks(self.layout, self.session, sequence.prompt))
                    for sequence in joining
                    if len(sequence.prompt) > PREFILL_CHUNK_TOKENS
                )
                joining = [sequence for sequence in joining if len(sequence.prompt) <= PREFILL_CHUNK_TOKENS]
                if joining:
                    self._prefill(joining, cache, active)
                if chunked:
                    self._prefill_chunk(chunked, cache, active)
                if active:
                    self._decode(cache, active)
            except Exception as exc:
                if not isinstance(exc, ForwardpassError):
                    log.exception("generation step of model '%s' failed", self.name)
                    exc = ForwardpassError(f"model '{self.name}': the generation step failed: {exc}")
                waiting = [sequence for sequence in joining if sequence not in active]
                self._fail([*active, *waiting, *(sequence for sequence, _ in chunked if sequence not in active)], exc)
                active.clear()
                chunked.clear()
                cache = self.layout.cache(self.session)
        self._fail([*active, *(sequence for sequence, _ in chunked)], self._unloaded())

    def _unloaded(self) -> Overloaded:
        return Overloaded(f"model '{self.name}' was unloaded during the generation")

    def _prefill(self, joining: list[_Sequence], cache: BatchCache | InPlaceCache, active: list[_Sequence]) -> None:
        """Run the new prompts group by group, emit each one's first token as soon as its group has run, and keep
        those that go on in the batch."""
        cache.reserve(cache.rows + len(joining), max(len(sequence.prompt) + sequence.limit for sequence in joining))
        for indices in prefill_groups([len(sequence.prompt) for sequence in joining]):
            group = [joining[index] for index in indices]
            first_new = cache.rows
            logits = cache.prefill([sequence.prompt for sequence in group])
            best = logits.argmax(axis=-1)
            going_on = []
            for row, sequence in enumerate(group):
                if self._emit(sequence, self._choose(sequence, logits[row], best[row]), logits[row]):
                    going_on.append(row)
            active.extend(group)
            if len(going_on) < len(group):
                self._keep(cache, active, [*range(first_new), *(first_new + row for row in going_on)])

    def _prefill_chunk(
        self,
        chunked: deque[tuple[_Sequence, PromptInChunks]],
        cache: BatchCache | InPlaceCache,
        active: list[_Sequence],
    ) -> None:
        """The next chunk of the oldest long prompt; after its last, its first token, and it joins the batch."""
        sequence, prompt = chunked[0]
        if sequence.ticket.cancelled:
            chunked.popleft()
            return
        logits = prompt.run(PREFILL_CHUNK_TOKENS)
        if logits is None:
            return
        if self._emit(sequence, self._choose(sequence, logits, logits.argmax()), logits):
            cache.adopt(prompt)
            active.append(sequence)
        chunked.popleft()  # only now: a failure before this fails the sequence with the step's error

    def _decode(self, cache: BatchCache | InPlaceCache, active: list[_Sequence]) -> None:
        """One token for every sequence of the batch."""
        logits = cache.decode([sequence.last for sequence in active])
        self.steps += 1
        self.rows_decoded += len(active)
        self.peak_rows = max(self.peak_rows, len(active))
        best = logits.argmax(axis=-1)
        keep = []
        for row, sequence in enumerate(active):
            if sequence.ticket.cancelled:
                continue
            if self._emit(sequence, self._choose(sequence, logits[row], best[row]), logits[row]):
                keep.append(row)
        if len(keep) < len(active):
            self._keep(cache, active, keep)

    @staticmethod
    def _keep(cache: BatchCache | InPlaceCache, active: list[_Sequence], kept: list[int]) -> None:
        """Only the rows `kept` go on, in the cache and in `active` (the same order in both)."""
        order = fewest_moves(kept)
        cache.keep(order)
        active[:] = [active[row] for row in order]

    def _choose(self, sequence: _Sequence, logits: np.ndarray, best: np.integer) -> int:
        """The sequence's next token from its row of logits (`best` their argmax), after the model's repetition
        penalty and inside its schema if it has one."""
        params = sequence.params
        penalty = self.config.repetition_penalty
        if penalty != 1:
            logits = penalize_repetition(logits, sequence.seen, penalty)
            best = logits.argmax()
        if sequence.matcher is not None:
            logits = sequence.matcher.constrain(logits)
            best = logits.argmax()
        token = int(best) if params.greedy else sample(logits, params, sequence.rng)
        if sequence.matcher is not None:
            sequence.matcher.advance(token)
        return token

    def _emit(self, sequence: _Sequence, token: int, logits: np.ndarray) -> bool:
        """Tell the listener; True while the sequence goes on."""
        sequence.produced += 1
        sequence.last = token
        sequence.seen.add(token)
        finished = token in sequence.stops or (sequence.matcher is not None and sequence.matcher.done)
        reason = "stop" if finished else "length" if sequence.produced >= sequence.limit else None
        top = sequence.params.logprobs
        event = TokenEvent(token, reason, *log_probabilities(logits, token, top)) if top is not None else None
        try:
            sequence.listener(event or TokenEvent(token, reason))
        except RuntimeError:  # the listener's event loop has closed: nobody is waiting any more
            return False
        return reason is None

    def _fail(self, sequences: list[_Sequence], error: ForwardpassError) -> None:
        for sequence in sequences:
            try:
                sequence.listener(error)
            except RuntimeError:
                continue


def prefill_groups(lengths: list[int]) -> list[list[int]]:
    """Prompts of these lengths (by index) in the groups they prefill in: shortest first, each group padded to its
    longest within PREFILL_GROUP_TOKENS (a longer prompt runs alone)."""
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and (len(groups[-1]) + 1) * lengths[index] <= PREFILL_GROUP_TOKENS:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _drain(get: Callable[[], TokenEvent | ForwardpassError], ticket: Ticket) -> Iterator[TokenEvent]:
    try:
        while True:
            event = get()
            if isinstance(event, ForwardpassError):
                raise event
            yield event
            if event.finish_reason is not None:
                return
    finally:
        ticket.cancel()
