"""Sound files over HTTP (POST /v2/models/{model}/predict, Content-Type audio/*): a real server answers the bundled
Silero VAD's speech segments, equal to the silero-vad package's on the same audio, and a stateless waveform model's
outputs, equal to the model on the resampled array; a corrupt or too long file is a one-line 400."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf

from tests.running_server import RunningServer
from tests.vad_audio import (
    VAD_RATE,
    WAVEFORM_RATE,
    as_read,
    in_samples,
    package_segments,
    recording,
    write,
    write_waveform_model,
)

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("repository")
    kit.copy_bundled("silero_vad", repository)
    write_waveform_model(repository)
    running = kit.serve(repository)
    yield running
    running.stop()


def predict(server: RunningServer, model: str, body: bytes, content_type: str = "audio/wav") -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/models/{model}/predict",
        content=body,
        headers={"Content-Type": content_type},
        timeout=TIMEOUT_S,
    )


def test_a_wav_file_gets_the_speech_segments_the_package_finds(server: RunningServer, tmp_path: Path) -> None:
    path = write(tmp_path / "speech.wav", recording(3.0, 48000, 2), 48000, "PCM_16")
    expected = package_segments(as_read(path, VAD_RATE))
    assert len(expected) >= 2
    answer = predict(server, "silero_vad", path.read_bytes())
    assert answer.status_code == 200, answer.text
    assert in_samples(answer.json()) == expected


def test_a_waveform_model_answers_what_it_answers_on_the_resampled_array(server: RunningServer, tmp_path: Path) -> None:
    path = write(tmp_path / "short.flac", recording(0.3, 44100, 2), 44100, "PCM_16")
    session = ort.InferenceSession(str(server.settings.repository / "waveform" / "1" / "model.onnx"))
    fitted = np.pad(as_read(path, WAVEFORM_RATE), (0, 4000))[:4000]
    expected = session.run(None, {"waveform": fitted[None]})[0][0]
    answer = predict(server, "waveform", path.read_bytes(), "audio/flac")
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"]["features"], expected, rtol=1e-5, atol=1e-5)


def test_a_corrupt_or_too_long_file_is_a_one_line_400(server: RunningServer) -> None:
    corrupt = predict(server, "silero_vad", b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    assert corrupt.status_code == 400
    assert "not a sound file" in corrupt.text and "\\n" not in corrupt.text
    long = io.BytesIO()
    sf.write(long, np.zeros(WAVEFORM_RATE * 6, np.float32), WAVEFORM_RATE, format="WAV", subtype="PCM_16")
    too_long = predict(server, "waveform", long.getvalue())
    assert too_long.status_code == 400
    assert "6.0 s of audio is over the limit of 5.0 s" in too_long.text
    path_as_text = predict(server, "waveform", b"/etc/passwd", "text/plain")
    assert path_as_text.status_code == 400 and "send its bytes" in path_as_text.text


def test_a_recording_that_runs_past_the_request_timeout_is_refused_between_its_steps(
    kit: Any, tmp_path: Path, server: RunningServer
) -> None:
    """A server whose requests have 50 ms: a minute of audio (1,875 steps, ~0.5 s of forward passes) stops at the
    deadline with a 503 instead of holding a worker thread to its end; the same file is answered by a server with
    time for it."""
    path = write(tmp_path / "minute.wav", np.tile(recording(3.0, VAD_RATE, 1), (20, 1)), VAD_RATE, "PCM_16")
    hurried = kit.serve(server.settings.repository, request_timeout_s=0.05)
    try:
        refused = predict(hurried, "silero_vad", path.read_bytes())
    finally:
        hurried.stop()
    assert refused.status_code == 503
    assert "ran past their deadline" in refused.text
    assert predict(server, "silero_vad", path.read_bytes()).status_code == 200
