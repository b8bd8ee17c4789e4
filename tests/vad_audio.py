"""Speech-like test audio for the Silero VAD model and the silero-vad package's own chunk-by-chunk answers: what the
sequence batcher and the streaming server are compared with."""

from __future__ import annotations

import numpy as np
import pytest

CHUNK = 512  # samples per step at 16 kHz, as the package feeds its model


def voice(seconds: float, seed: int) -> np.ndarray:
    """Speech-like audio at 16 kHz (voiced harmonics under formants, in syllables, a pause in the middle), on which
    Silero's probabilities sweep from ~0 to ~1."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 110 + 60 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    formants = np.array([[700, 1200, 2600], [300, 2300, 3000], [500, 900, 2500]])[seed % 3]
    harmonics = sum(
        np.exp(-((k * f0.mean() - formants[:, None]) ** 2).min(0) / (2 * 150**2)) * np.sin(k * phase) / k**0.3
        for k in range(1, 30)
    )
    syllables = np.convolve(
        (np.sin(2 * np.pi * (3 + rng.random()) * t) > -0.2).astype(float), np.ones(400) / 400, "same"
    )
    pause = (t > seconds * 0.5) & (t < seconds * 0.7)
    audio = 0.3 * harmonics * syllables * ~pause + 0.005 * rng.standard_normal(t.size)
    return audio[: t.size // CHUNK * CHUNK].astype(np.float32)


def package_probabilities(audio: np.ndarray) -> np.ndarray:
    """The silero-vad package itself, chunk by chunk (its OnnxWrapper keeps the state and the context)."""
    torch = pytest.importorskip("torch")
    silero_vad = pytest.importorskip("silero_vad")
    model = silero_vad.load_silero_vad(onnx=True)
    return np.array([float(model(torch.from_numpy(chunk), 16000)[0, 0]) for chunk in audio.reshape(-1, CHUNK)])
