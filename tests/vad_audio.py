"""Speech-like test audio for the Silero VAD model and the silero-vad package's own answers (chunk by chunk: what the
sequence batcher and the streaming server are compared with; speech segments: what the audio input kind is), sound
files of it as users have them, and a stateless waveform model that takes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import soundfile as sf
import soxr
import yaml
from onnx import TensorProto, helper

CHUNK = 512  # samples per step at 16 kHz, as the package feeds its model
VAD_RATE = 16000
WAVEFORM_RATE = 8000  # the waveform model's rate
WAVEFORM_SAMPLES = 4000  # half a second per item
FEATURES = 3


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


def recording(seconds: float, rate: int, channels: int, seed: int = 1) -> np.ndarray:
    """`voice` at `rate` ([frames, channels]; the second channel quieter, with noise
    of its own, so mixing matters)."""
    speech = voice(seconds, seed).astype(np.float64)
    if rate != VAD_RATE:
        speech = soxr.resample(speech, VAD_RATE, rate)
    if channels == 1:
        return speech[:, None]
    other = 0.5 * speech + 0.01 * np.random.default_rng(seed + 1).standard_normal(speech.size)
    return np.stack([speech, other], axis=1)


def write(path: Path, audio: np.ndarray, rate: int, subtype: str) -> Path:
    sf.write(path, audio, rate, subtype=subtype)
    return path


def as_read(path: Path, model_rate: int) -> np.ndarray:
    """What the pipeline must make of a file, done here with the libraries directly: soundfile's float samples, the
    channels averaged, soxr to the model's rate."""
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1, dtype=np.float32)
    return mono if rate == model_rate else soxr.resample(mono, rate, model_rate).astype(np.float32)


def package_segments(audio: np.ndarray) -> list[dict[str, int]]:
    """The silero-vad package's own get_speech_timestamps, its defaults, on 16 kHz audio (in samples)."""
    import silero_vad
    import torch

    timestamps = silero_vad.get_speech_timestamps(torch.from_numpy(audio), silero_vad.load_silero_vad(onnx=True))
    return [{"start": int(segment["start"]), "end": int(segment["end"])} for segment in timestamps]


def in_samples(prediction: dict[str, Any]) -> list[dict[str, int]]:
    return [
        {"start": round(segment["start"] * VAD_RATE), "end": round(segment["end"] * VAD_RATE)}
        for segment in prediction["segments"]
    ]


def write_waveform_model(root: Path, **preprocess: Any) -> Path:
    """features = waveform @ W on [batch, 4000] samples at 8 kHz: a stateless model that takes a fixed window."""
    weights = np.random.default_rng(7).standard_normal((WAVEFORM_SAMPLES, FEATURES)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["waveform", "W"], ["features"])],
        "waveform",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", WAVEFORM_SAMPLES])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, weights.shape, weights.ravel())],
    )
    return _audio_model(graph, root / "waveform", {"max_seconds": 5, **preprocess})


def write_mean_model(root: Path) -> Path:
    """mean = the average of [batch, samples] samples at 8 kHz, of any length: takes each recording whole."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["waveform"], ["mean"], axes=[1], keepdims=0)],
        "mean",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch"])],
    )
    return _audio_model(graph, root / "mean", {})


def write_channel_mean_model(root: Path, channels: int | str, **preprocess: Any) -> Path:
    """mean = the average of each channel of [batch, channels, samples] samples at 8 kHz, of any length: the layout
    torch audio models take (a mono one as [batch, 1, samples])."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["waveform"], ["mean"], axes=[2], keepdims=0)],
        "channel_mean",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", channels, "samples"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", channels])],
    )
    return _audio_model(graph, root / "channel_mean", preprocess)


def _audio_model(graph: onnx.GraphProto, folder: Path, preprocess: dict[str, Any]) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    config = {"preprocess": {"kind": "audio", "sample_rate": WAVEFORM_RATE, **preprocess}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder
