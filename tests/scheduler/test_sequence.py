"""The sequence batcher around the bundled Silero VAD (the silero-vad package's ONNX graph): interleaved sequences
share forward passes and give the package's own chunk-by-chunk probabilities (its ONNX wrapper, its ONNX file in plain
ONNX Runtime, its TorchScript model); state is reset, kept through failures, freed at the end and after idling;
refusals are clear."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import forwardpass
from forwardpass.config import SequenceBatchingConfig, SequenceStateConfig
from forwardpass.errors import ClientQuotaExceeded, ConfigError, DeadlineExceeded, InputError, Overloaded
from forwardpass.model import Model
from forwardpass.repository import default_repository
from forwardpass.scheduler.batcher import Batched
from forwardpass.scheduler.sequence import SequenceBatcher, sequence_flags, state_slots
from tests.vad_audio import CHUNK, package_probabilities, voice

Arrays = dict[str, np.ndarray]
WAIT_S = 30  # a step that never comes fails the test instead of hanging it


def plain_onnxruntime_probabilities(audio: np.ndarray) -> np.ndarray:
    """The package's own ONNX file in plain ONNX Runtime, chunk by chunk: state and the 64-sample context carried by
    hand, as the package's wrapper does."""
    import importlib.resources

    import onnxruntime as ort

    path = importlib.resources.files("silero_vad.data").joinpath("silero_vad.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, 64), np.float32)
    probabilities = []
    for chunk in audio.reshape(-1, 1, CHUNK):
        window = np.concatenate([context, chunk], axis=1)
        output, state = session.run(None, {"input": window, "state": state, "sr": np.array(16000, np.int64)})
        context = window[:, -64:]
        probabilities.append(float(output[0, 0]))
    return np.array(probabilities)


def jit_probabilities(audio: np.ndarray) -> np.ndarray:
    """The package's TorchScript model, chunk by chunk."""
    torch = pytest.importorskip("torch")
    silero_vad = pytest.importorskip("silero_vad")
    model = silero_vad.load_silero_vad(onnx=False)
    with torch.no_grad():
        return np.array([float(model(torch.from_numpy(chunk), 16000)[0, 0]) for chunk in audio.reshape(-1, CHUNK)])


@pytest.fixture(scope="module")
def vad() -> Iterator[Model]:
    folder = default_repository() / "silero_vad"
    if not (folder / "1").is_dir():
        pytest.skip("bundled model silero_vad is not built (make models)")
    model = forwardpass.load(folder)
    yield model
    model.close()


def batcher(vad: Model, runner: object = None, **options: object) -> SequenceBatcher:
    config = vad.config.sequence_batching
    assert config is not None
    defaults: dict[str, object] = {"max_batch_size": 16, "idle_timeout_s": 30.0}
    return SequenceBatcher(
        [runner or vad.session.run],  # type: ignore[list-item]
        vad.inputs,
        state_slots(config, vad.inputs, vad.outputs),
        **{**defaults, **options},  # type: ignore[arg-type]
    )


class HeldRunner:
    """The model's session, whose calls wait for `release` while `holding` is set (`running`: one is waiting)."""

    def __init__(self, vad: Model) -> None:
        self.vad = vad
        self.holding, self.running, self.release = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, arrays: Arrays) -> Arrays:
        if self.holding.is_set():
            self.running.set()
            assert self.release.wait(WAIT_S)
        return self.vad.session.run(arrays)


def step(chunk: np.ndarray) -> Arrays:
    return {"audio": chunk.reshape(1, CHUNK)}


@pytest.mark.asyncio
async def test_interleaved_sequences_share_batches_and_match_the_package_alone(vad: Model) -> None:
    audios = {f"seq-{i}": voice(1.5 + 0.5 * i, seed=i) for i in range(4)}
    sizes: list[int] = []
    sequencer = batcher(vad, on_batch=lambda rows, run_s: sizes.append(rows), max_queue_size=4096)
    futures: dict[str, list[asyncio.Future[Batched]]] = {name: [] for name in audios}
    longest = max(len(audio) // CHUNK for audio in audios.values())
    for index in range(longest):  # round robin, all submitted before any answer: steps queue and batch up
        for name, audio in audios.items():
            chunks = audio.reshape(-1, CHUNK)
            if index < len(chunks):
                last = index == len(chunks) - 1
                futures[name].append(sequencer.submit(name, step(chunks[index]), start=index == 0, end=last))
    everything: list[float] = []
    for name, audio in audios.items():
        served = np.array([(await future).outputs["output"][0, 0] for future in futures[name]])
        expected = package_probabilities(audio)
        assert served.shape == expected.shape
        np.testing.assert_allclose(served, expected, atol=1e-5)
        np.testing.assert_allclose(served, plain_onnxruntime_probabilities(audio), atol=1e-5)
        np.testing.assert_allclose(served, jit_probabilities(audio), atol=1e-4)  # another engine: float rounding
        everything.extend(expected)
    assert min(everything) < 0.05 and max(everything) > 0.95  # the audio exercises the model's whole range
    assert max(sizes) > 1, sizes  # sequences really shared forward passes
    assert sum(sizes) == sum(len(f) for f in futures.values())
    assert sequencer.active == 0  # every sequence ended: its state is freed
    await sequencer.drain()


@pytest.mark.asyncio
async def test_answers_carry_no_state_outputs(vad: Model) -> None:
    sequencer = batcher(vad)
    done = await sequencer.submit(7, step(voice(0.1, 0)[:CHUNK]), start=True, end=True)
    assert set(done.outputs) == {"output"}
    assert [spec.name for spec in sequencer.inputs] == ["audio"]
    assert sequencer.state_outputs == {"stateN", "contextN"}
    await sequencer.drain()


@pytest.mark.asyncio
async def test_start_resets_an_open_sequence(vad: Model) -> None:
    chunks = voice(1.0, 1).reshape(-1, CHUNK)
    sequencer = batcher(vad)
    first = await sequencer.submit(1, step(chunks[0]), start=True, end=False)
    for chunk in chunks[1:6]:
        await sequencer.submit(1, step(chunk), start=False, end=False)
    again = await sequencer.submit(1, step(chunks[0]), start=True, end=False)
    np.testing.assert_array_equal(again.outputs["output"], first.outputs["output"])
    await sequencer.drain()


@pytest.mark.asyncio
async def test_a_failed_step_fails_alone_and_leaves_the_state_as_it_was(vad: Model) -> None:
    def refusing(arrays: Arrays) -> Arrays:
        if np.isnan(arrays["audio"]).any():
            raise InputError("audio holds NaN")
        return vad.session.run(arrays)

    chunks = voice(1.0, 2).reshape(-1, CHUNK)
    expected = package_probabilities(chunks.ravel())
    sequencer = batcher(vad, refusing)
    bad = np.full(CHUNK, np.nan, np.float32)
    futures = [sequencer.submit("a", step(chunks[0]), start=True, end=False)]
    futures.append(sequencer.submit("a", step(bad), start=False, end=False))
    futures.append(sequencer.submit("b", step(chunks[0]), start=True, end=False))  # batched with the bad step
    futures += [sequencer.submit("a", step(chunk), start=False, end=False) for chunk in chunks[1:]]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[1], InputError)
    a = [results[0], *results[3:]]
    np.testing.assert_allclose([r.outputs["output"][0, 0] for r in a], expected, atol=1e-5)  # type: ignore[union-attr]
    np.testing.assert_allclose(results[2].outputs["output"][0, 0], expected[0], atol=1e-5)  # type: ignore[union-attr]
    await sequencer.drain()


@pytest.mark.asyncio
async def test_a_step_whose_deadline_passed_while_it_ran_leaves_the_state_as_it_was(vad: Model) -> None:
    """Its caller was told it failed (DeadlineExceeded), so it sends the chunk again: the state must take it once.
    The step's state was kept, and the retried chunk went into the sequence twice."""
    slow = HeldRunner(vad)
    chunks = voice(1.0, 3).reshape(-1, CHUNK)[:4]
    sequencer = batcher(vad, slow)
    answers = [await sequencer.submit("s", step(chunks[0]), start=True, end=False)]
    slow.holding.set()
    expiring = sequencer.submit("s", step(chunks[1]), start=False, end=False)
    assert await asyncio.to_thread(slow.running.wait, WAIT_S)
    expiring.set_exception(DeadlineExceeded("model 'vad' did not answer within 0.01 s"))  # as the data plane does
    assert isinstance(expiring.exception(), DeadlineExceeded)
    slow.holding.clear()
    slow.release.set()
    for chunk in chunks[1:]:  # the caller's retry, then the rest
        answers.append(await sequencer.submit("s", step(chunk), start=False, end=False))
    served = [answer.outputs["output"][0, 0] for answer in answers]
    np.testing.assert_allclose(served, package_probabilities(chunks.ravel()), atol=1e-5)
    await sequencer.drain()


@pytest.mark.asyncio
async def test_a_restart_whose_deadline_passed_in_the_queue_leaves_no_state_of_the_sequence_before_it(
    vad: Model,
) -> None:
    """A `start` given up while it waited was dropped unrun, and the sequence's next steps went on from the state of
    the stream before the restart; one given up while it ran already reset the state. Both now reset it."""
    slow = HeldRunner(vad)
    old, new = voice(1.0, 4).reshape(-1, CHUNK)[:6], voice(1.0, 5).reshape(-1, CHUNK)[:3]
    sequencer = batcher(vad, slow)
    await sequencer.submit("s", step(old[0]), start=True, end=False)
    for chunk in old[1:]:
        await sequencer.submit("s", step(chunk), start=False, end=False)
    slow.holding.set()
    busy = sequencer.submit("other", step(old[0]), start=True, end=False)  # holds the one instance
    assert await asyncio.to_thread(slow.running.wait, WAIT_S)
    restart = sequencer.submit("s", step(new[0]), start=True, end=False)
    restart.set_exception(DeadlineExceeded("model 'vad' did not answer within 0.01 s"))  # as the data plane does
    slow.holding.clear()
    slow.release.set()
    await busy
    rest = [await sequencer.submit("s", step(chunk), start=False, end=False) for chunk in new[1:]]
    fresh = batcher(vad)  # new[0] was never run: the rest go on from the initial state
    alone = [await fresh.submit("s", step(new[1]), start=True, end=False)]
    alone += [await fresh.submit("s", step(chunk), start=False, end=False) for chunk in new[2:]]
    np.testing.assert_allclose(
        [answer.outputs["output"][0, 0] for answer in rest],
        [answer.outputs["output"][0, 0] for answer in alone],
        atol=1e-6,
    )
    await sequencer.drain()
    await fresh.drain()


@pytest.mark.asyncio
async def test_unknown_ended_and_too_many_sequences_are_refused(vad: Model) -> None:
    sequencer = batcher(vad, max_sequences=2)
    chunk = step(np.zeros(CHUNK, np.float32))
    with pytest.raises(InputError, match=r"sequence 99 is not active.*sequence_start"):
        sequencer.submit(99, chunk, start=False, end=False)
    await sequencer.submit(1, chunk, start=True, end=True)
    with pytest.raises(InputError, match="not active"):  # ended: its state is gone
        sequencer.submit(1, chunk, start=False, end=False)
    await sequencer.submit(1, chunk, start=True, end=False)
    await sequencer.submit(2, chunk, start=True, end=False)
    with pytest.raises(Overloaded, match="2 sequences"):
        sequencer.submit(3, chunk, start=True, end=False)
    await sequencer.drain()


@pytest.mark.asyncio
async def test_one_client_holds_no_more_than_its_share_of_sequences(vad: Model) -> None:
    sequencer = batcher(vad, max_sequences=4, max_sequences_per_client=2)
    chunk = step(np.zeros(CHUNK, np.float32))
    for sequence_id in (1, 2):
        await sequencer.submit(sequence_id, chunk, start=True, end=False, client="10.0.0.1")
    with pytest.raises(ClientQuotaExceeded, match=r"holds 2 open sequences.*max_sequences_per_client 2"):
        sequencer.submit(3, chunk, start=True, end=False, client="10.0.0.1")
    await sequencer.submit(1, chunk, start=True, end=False, client="10.0.0.2")  # another client has its own share
    await sequencer.submit(1, chunk, start=True, end=False, client="10.0.0.1")  # a restart takes no new slot
    await sequencer.submit(2, chunk, start=False, end=True, client="10.0.0.1")  # an ended one frees its slot
    await sequencer.submit(3, chunk, start=True, end=False, client="10.0.0.1")
    assert sequencer.active == 3
    await sequencer.drain()


@pytest.mark.asyncio
async def test_sequence_ids_are_each_clients_own(vad: Model) -> None:
    """One client can neither step nor end another's sequence by guessing its id: the same id is another sequence."""
    sequencer = batcher(vad)
    speech = step(voice(1.0, 0)[10 * CHUNK : 11 * CHUNK])
    silence = step(np.zeros(CHUNK, np.float32))
    first = await sequencer.submit(7, speech, start=True, end=False, client="10.0.0.1")
    with pytest.raises(InputError, match="sequence 7 is not active"):
        sequencer.submit(7, silence, start=False, end=True, client="10.0.0.2")
    await sequencer.submit(7, silence, start=True, end=False, client="10.0.0.2")  # its own 7, beside the first
    assert sequencer.active == 2
    again = await sequencer.submit(7, speech, start=False, end=True, client="10.0.0.1")  # state kept: not reset
    fresh = await sequencer.submit(8, speech, start=True, end=True, client="10.0.0.1")
    assert again.outputs["output"][0, 0] != fresh.outputs["output"][0, 0]
    assert first.outputs["output"][0, 0] == fresh.outputs["output"][0, 0]
    await sequencer.drain()


@pytest.mark.asyncio
async def test_an_idle_sequence_times_out_and_frees_its_state(vad: Model) -> None:
    sequencer = batcher(vad, idle_timeout_s=0.2)
    chunk = step(np.zeros(CHUNK, np.float32))
    await sequencer.submit("idle", chunk, start=True, end=False)
    await sequencer.submit("busy", chunk, start=True, end=False)
    await sequencer.submit("idle", chunk, start=False, end=False)  # well within the timeout: still active
    assert sequencer.active == 2
    deadline = time.monotonic() + 10
    while sequencer.active == 2 and time.monotonic() < deadline:
        await sequencer.submit("busy", chunk, start=False, end=False)  # keeps "busy" from idling meanwhile
        await asyncio.sleep(0.02)
    assert sequencer.active == 1
    await sequencer.submit("busy", chunk, start=False, end=True)
    with pytest.raises(InputError, match=r"idle for over 0\.2 s"):
        sequencer.submit("idle", chunk, start=False, end=False)
    await sequencer.drain()


@pytest.mark.asyncio
async def test_drain_finishes_queued_steps(vad: Model) -> None:
    sequencer = batcher(vad)
    chunks = voice(0.5, 0).reshape(-1, CHUNK)
    futures = [sequencer.submit(5, step(c), start=i == 0, end=False) for i, c in enumerate(chunks)]
    await sequencer.drain()
    assert all(future.done() and not future.exception() for future in futures)
    with pytest.raises(Overloaded, match="unloaded"):
        sequencer.submit(5, step(chunks[0]), start=False, end=False)


def test_state_config_is_checked_against_the_model(vad: Model) -> None:
    def slots(**state: object) -> object:
        config = SequenceBatchingConfig(state=[SequenceStateConfig(**{"input": "state", "output": "stateN", **state})])  # type: ignore[arg-type]
        return state_slots(config, vad.inputs, vad.outputs)

    with pytest.raises(ConfigError, match="no input 'nope'"):
        slots(input="nope")
    with pytest.raises(ConfigError, match="no output 'nope'"):
        slots(output="nope")
    with pytest.raises(ConfigError, match=r"batch_axis 0.*not dynamic"):
        slots(batch_axis=0)
    good = slots(batch_axis=1, initial=0.5)
    assert good[0].initial.shape == (2, 1, 128) and float(good[0].initial[0, 0, 0]) == 0.5  # type: ignore[index]


def test_sequence_flags_follow_tritons_rules() -> None:
    assert sequence_flags({"sequence_id": 5, "sequence_start": True}, "m") == (5, True, False)
    assert sequence_flags({"sequence_id": "abc", "sequence_end": True}, "m") == ("abc", False, True)
    for bad in ({}, {"sequence_id": 0}, {"sequence_id": ""}):
        with pytest.raises(InputError, match="keeps state per sequence"):
            sequence_flags(bad, "m")
    with pytest.raises(InputError, match="integer or a string"):
        sequence_flags({"sequence_id": 1.5}, "m")
    with pytest.raises(InputError, match="true or false"):
        sequence_flags({"sequence_id": 1, "sequence_start": "yes"}, "m")
