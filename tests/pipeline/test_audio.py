"""The audio input kind on real sound files (soundfile writes WAV / FLAC / OGG at the rates users record at, mono and
stereo, int16 and float): the bundled Silero VAD answers the speech segments the silero-vad package's own
get_speech_timestamps finds on the same audio, a stateless waveform model answers what it answers on the resampled
array, and what is too long, too wide, too large or not audio at all is refused by name before it costs anything."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import soxr
import yaml

import forwardpass
from forwardpass.config import AudioConfig
from forwardpass.errors import ConfigError, DecodeError, InputError
from forwardpass.pipeline.audio import AudioPreprocessor, audio_window
from forwardpass.repository import default_repository
from forwardpass.tensor import DataType, TensorSpec
from tests.vad_audio import (
    VAD_RATE,
    WAVEFORM_RATE,
    WAVEFORM_SAMPLES,
    as_read,
    in_samples,
    package_segments,
    recording,
    voice,
    write,
    write_channel_mean_model,
    write_mean_model,
    write_waveform_model,
)

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")


@pytest.fixture(scope="module")
def vad() -> forwardpass.Model:
    return forwardpass.load("silero_vad", warmup=0)


@pytest.mark.parametrize(
    ("suffix", "rate", "channels", "subtype"),
    [
        ("wav", 16000, 1, "PCM_16"),
        ("flac", 8000, 1, "PCM_16"),
        ("wav", 44100, 2, "FLOAT"),
        ("wav", 48000, 2, "PCM_16"),
    ],
)
def test_vad_speech_segments_are_the_packages_on_the_same_audio(
    vad: forwardpass.Model, tmp_path: Path, suffix: str, rate: int, channels: int, subtype: str
) -> None:
    path = write(tmp_path / f"speech.{suffix}", recording(3.0, rate, channels), rate, subtype)
    audio = as_read(path, VAD_RATE)
    expected = package_segments(audio)
    assert len(expected) >= 2, "the signal's pause should split its speech"  # a test that cannot pass by luck
    prediction = vad.predict(str(path))
    assert in_samples(prediction) == expected
    assert prediction["duration"] == audio.size / VAD_RATE


def test_vad_at_16khz_mono_is_the_package_on_the_samples_as_written(vad: forwardpass.Model, tmp_path: Path) -> None:
    """No resampling, no mixing: the package on the very array that was written (float WAV, exact), with a length
    that is no multiple of 512, so the last chunk is padded and the last segment ends where the audio does."""
    audio = voice(2.5, seed=1)[:-100]
    path = write(tmp_path / "speech.wav", audio, VAD_RATE, "FLOAT")
    expected = package_segments(audio)
    assert expected
    assert in_samples(vad.predict(path.read_bytes())) == expected


def test_silence_has_no_speech_segments(vad: forwardpass.Model, tmp_path: Path) -> None:
    path = write(tmp_path / "quiet.wav", np.zeros(VAD_RATE, np.float32), VAD_RATE, "PCM_16")
    assert vad.predict(str(path)) == {"segments": [], "duration": 1.0}


@pytest.fixture(scope="module")
def waveform_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_waveform_model(tmp_path_factory.mktemp("repository"))


def fitted(samples: np.ndarray) -> np.ndarray:
    """Zero-padded at the end, or cut, to the model's window."""
    return np.pad(samples, (0, max(0, WAVEFORM_SAMPLES - samples.size)))[:WAVEFORM_SAMPLES]


def test_a_waveform_model_answers_what_it_answers_on_the_resampled_array(waveform_folder: Path, tmp_path: Path) -> None:
    """Files at 44.1 and 16 kHz, stereo and mono, shorter and longer than the window: each is what the model gives on
    the resampled, mixed, padded or cut array (never 44.1 kHz samples read as 8 kHz ones)."""
    files = [
        write(tmp_path / "short.wav", recording(0.3, 44100, 2), 44100, "PCM_16"),
        write(tmp_path / "long.flac", recording(1.2, 16000, 1, seed=0), 16000, "PCM_24"),
        write(tmp_path / "exact.ogg", recording(0.5, 8000, 1, seed=2), 8000, "VORBIS"),
    ]
    session = ort.InferenceSession(str(waveform_folder / "1" / "model.onnx"))
    expected = session.run(None, {"waveform": np.stack([fitted(as_read(path, WAVEFORM_RATE)) for path in files])})[0]
    model = forwardpass.load(waveform_folder, warmup=0)
    answers = model.predict([str(path) for path in files])
    got = np.array([answer["outputs"]["features"] for answer in answers])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_window_other_than_the_models_input_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"preprocess.window: 4001 samples.* takes 4000"):
        forwardpass.load(write_waveform_model(tmp_path, window=WAVEFORM_SAMPLES + 1), warmup=0)


def bounded(**limits: Any) -> AudioPreprocessor:
    return AudioPreprocessor(AudioConfig(kind="audio", sample_rate=WAVEFORM_RATE, **limits), "waveform", None)


def test_keeping_channels_gives_channels_first_each_resampled(tmp_path: Path) -> None:
    stereo = recording(0.2, 16000, 2)
    path = write(tmp_path / "stereo.wav", stereo, 16000, "FLOAT")
    samples = AudioPreprocessor(AudioConfig(kind="audio", sample_rate=8000, channels="keep"), "x", None)(str(path))
    expected = np.stack([soxr.resample(stereo[:, channel].astype(np.float32), 16000, 8000) for channel in (0, 1)])
    assert samples["x"].shape == (2, stereo.shape[0] // 2)
    np.testing.assert_allclose(samples["x"], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("subtype", "dtype", "full_scale"),
    [("PCM_16", np.int16, 2**15), ("PCM_32", np.int32, 2**31)],
)
def test_integer_pcm_becomes_float_in_minus_one_to_one(
    tmp_path: Path, subtype: str, dtype: type[np.integer[Any]], full_scale: int
) -> None:
    """The scaling by hand: the most negative integer is -1.0, zero is 0, the largest is just under 1."""
    extremes = np.array([np.iinfo(dtype).min, -full_scale // 2, 0, full_scale // 4, np.iinfo(dtype).max], dtype=dtype)
    path = write(tmp_path / "pcm.wav", extremes, 8000, subtype)
    samples = bounded(window=None)(str(path))["waveform"]
    np.testing.assert_array_equal(samples, (extremes / full_scale).astype(np.float32))


@pytest.mark.parametrize(
    ("limits", "seconds", "channels", "message"),
    [
        ({"max_seconds": 1.0}, 1.5, 1, r"1\.5 s .*over the limit of 1\.0 s"),
        ({"max_channels": 2}, 0.1, 3, "3 channels is over the limit of 2"),
        ({"max_bytes": 1000}, 0.5, 1, "over the limit of 1000 bytes"),
    ],
)
def test_too_long_too_many_channels_or_too_large_is_refused_naming_the_file(
    tmp_path: Path, limits: dict[str, Any], seconds: float, channels: int, message: str
) -> None:
    frames = int(8000 * seconds)
    path = write(tmp_path / "big.wav", np.zeros((frames, channels), np.float32), 8000, "PCM_16")
    with pytest.raises(DecodeError, match=message) as refused:
        bounded(**limits)(str(path))
    assert str(path) in str(refused.value)
    with pytest.raises(DecodeError, match=message):
        bounded(**limits)(path.read_bytes())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt garbage", "not a sound file this model can read"),
        (b"", "not a sound file this model can read"),
    ],
)
def test_a_corrupt_file_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=message) as refused:
        bounded()(str(path))
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


def test_what_is_no_sound_at_all_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="no such file"):
        bounded()(str(tmp_path / "absent.wav"))
    with pytest.raises(DecodeError, match="expected audio"):
        bounded()(12)
    path = write(tmp_path / "nan.wav", np.full(100, np.nan, np.float32), 8000, "FLOAT")
    with pytest.raises(InputError, match="NaN or infinite"):
        bounded()(str(path))


def test_forwardpass_predict_lists_the_speech_segments_and_exits_2_for_a_bad_file(tmp_path: Path) -> None:
    speech = write(tmp_path / "speech.wav", recording(2.0, 44100, 2), 44100, "PCM_16")
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC but not really")
    done = subprocess.run(
        [FORWARDPASS, "predict", "silero_vad", str(speech), str(broken)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    expected = package_segments(as_read(speech, VAD_RATE))
    assert len(expected) >= 2
    listed = [f"speech {s['start'] / VAD_RATE:.3f} s to {s['end'] / VAD_RATE:.3f} s" for s in expected]
    assert [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("speech ")] == listed
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and "broken.flac" in errors[0] and "not a sound file" in errors[0]


def test_a_model_of_any_length_takes_each_recording_whole(tmp_path: Path) -> None:
    files = [
        write(tmp_path / "a.wav", recording(0.4, 16000, 2), 16000, "PCM_16"),
        write(tmp_path / "b.wav", 0.5 + recording(1.1, 22050, 1, seed=2), 22050, "FLOAT"),
    ]
    answers = forwardpass.load(write_mean_model(tmp_path), warmup=0).predict([str(path) for path in files])
    for answer, path in zip(answers, files, strict=True):
        assert answer["outputs"]["mean"] == pytest.approx(float(as_read(path, 8000).mean()), abs=1e-6)
    assert answers[1]["outputs"]["mean"] > 0.4  # the offset survives: no normalisation beyond int PCM's scaling


def test_a_mono_model_with_a_channel_axis_takes_the_channels_mixed(tmp_path: Path) -> None:
    """A [batch, 1, samples] input (torch's Conv1d layout) refused every recording, mixed to [samples] by
    channels: mono, and channels: keep fits it only with mono files."""
    path = write(tmp_path / "stereo.wav", recording(0.4, 44100, 2), 44100, "PCM_16")
    answer = forwardpass.load(write_channel_mean_model(tmp_path, 1), warmup=0).predict(str(path))
    assert answer["outputs"]["mean"] == pytest.approx([float(as_read(path, 8000).mean())], abs=1e-6)


@pytest.mark.parametrize(
    ("channels", "audio", "message"),
    [
        (2, {}, r"channels: mono makes one channel, but input 'waveform' \[-1, 2, -1\] takes 2; set channels: keep"),
        (
            None,
            {"channels": "keep"},
            r"channels: keep makes \[channels, samples\] items, but input 'waveform' \[-1, -1\] takes \[samples\]; "
            "set channels: mono",
        ),
    ],
)
def test_channels_the_models_input_cannot_take_are_refused_at_load(
    tmp_path: Path, channels: int | None, audio: dict[str, Any], message: str
) -> None:
    """Each loaded, then refused every recording with a shape error naming the input."""
    folder = write_mean_model(tmp_path) if channels is None else write_channel_mean_model(tmp_path, channels)
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"preprocess": {"kind": "audio", "sample_rate": 8000, **audio}}), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=message):
        forwardpass.load(folder, warmup=0)


@pytest.mark.parametrize(
    ("audio", "stateful", "message"),
    [
        ({"split": "chunks"}, True, "chunks needs the samples per chunk"),
        ({"split": "chunks", "window": 512}, False, "chunks are the steps of a stateful model"),
        ({"split": "chunks", "window": 512, "channels": "keep"}, True, "set channels: mono"),
        ({}, True, "a stateful model steps through a recording"),
    ],
)
def test_chunks_are_for_stateful_models_and_stateful_models_take_chunks(
    audio: dict[str, Any], stateful: bool, message: str
) -> None:
    config = AudioConfig(kind="audio", sample_rate=16000, **audio)
    spec = TensorSpec("audio", DataType.FP32, (-1, -1))
    with pytest.raises(ConfigError, match=message):
        audio_window(config, spec, stateful)


def test_the_bundled_speech_sample_gets_the_segments_the_package_found_when_it_was_built(
    vad: forwardpass.Model,
) -> None:
    """README's example: samples/audio/speech.wav against what scripts/build_models.py recorded of the package."""
    recorded = json.loads((default_repository() / "silero_vad" / "metrics.json").read_text(encoding="utf-8"))
    expected = [{"start": start, "end": end} for start, end in recorded["speech.wav"]["package_segments_in_samples"]]
    sample = Path(__file__).resolve().parents[2] / "samples" / "audio" / "speech.wav"
    assert len(expected) == 2 and in_samples(vad.predict(str(sample))) == expected


def test_a_compressed_file_decodes_to_no_more_samples_than_max_bytes_lets_a_wav_hold(tmp_path: Path) -> None:
    """A FLAC of silence is ~30 bytes a second: 8 channels at 192 kHz for max_seconds (600 s) was 93 KB a minute and
    decoded to 3.7 GB of float32, under every limit (bytes, channels, seconds)."""
    frames, channels = 8000, 4
    path = write(tmp_path / "silence.flac", np.zeros((frames, channels), np.float32), 8000, "PCM_16")
    limit = frames * channels - 1
    assert path.stat().st_size < limit  # under the file limit: the decoded size is what is refused
    with pytest.raises(
        DecodeError, match=rf"8000 frames of 4 channels decode to more samples than max_bytes \({limit}\)"
    ):
        bounded(max_bytes=limit)(str(path))
    assert bounded(max_bytes=limit + 1)(str(path))["waveform"].shape == (frames,)  # mixed to mono


def test_a_recording_with_no_sample_at_the_models_rate_is_refused(vad: forwardpass.Model) -> None:
    """1,000 frames at 2^31-1 Hz resample to none at 16 kHz: the VAD stepped through no chunk and its
    postprocessing ended in KeyError 'output'."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(1000, np.float32), 2**31 - 1, format="WAV", subtype="PCM_16")
    with pytest.raises(DecodeError, match="too short to hold a sample at 16000 Hz"):
        vad.predict(buffer.getvalue())


def test_a_recording_one_sample_over_max_seconds_is_refused_and_one_at_it_is_read(tmp_path: Path) -> None:
    """The refusal names the samples: '1.0 s of audio is over the limit of 1.0 s' said nothing of why."""
    at_limit = write(tmp_path / "at.wav", np.zeros(WAVEFORM_RATE, np.float32), WAVEFORM_RATE, "PCM_16")
    assert bounded(max_seconds=1.0)(str(at_limit))["waveform"].shape == (WAVEFORM_RATE,)
    over = write(tmp_path / "over.wav", np.zeros(WAVEFORM_RATE + 1, np.float32), WAVEFORM_RATE, "PCM_16")
    with pytest.raises(DecodeError, match=r"1\.0 s of audio is over the limit of 1\.0 s \(8001 samples at 8000 Hz\)"):
        bounded(max_seconds=1.0)(str(over))
