"""Audio: a sound file (WAV, FLAC, OGG/Vorbis) decoded with soundfile (libsndfile; int PCM scaled to [-1, 1]), its
channels mixed to mono or kept, resampled to the model's rate with soxr, fitted to the model's window or cut into
the chunks a stateful model steps through (`forwardpass.scheduler.sequence.run_steps`).

Every bound (file bytes, channels, seconds) is checked on the file's header, before a sample is decoded; so is the
decoded size: a compressed file decodes to no more samples (frames x channels) than max_bytes lets a WAV hold, so a
small FLAC of silence at a high rate over many channels cannot expand to gigabytes within max_seconds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from forwardpass.config import AudioConfig
from forwardpass.errors import ConfigError, DecodeError
from forwardpass.tensor import TensorSpec

__all__ = ["SAMPLES", "AudioPreprocessor", "audio_window", "mono_channel_axis"]

# The context array a chunked recording hands its postprocessing: how many samples it had before its last chunk was
# padded (where its last speech segment ends: `forwardpass.pipeline.speech`)
SAMPLES = "forwardpass.audio_samples"
AudioSource = str | Path | bytes


def audio_window(config: AudioConfig, spec: TensorSpec, stateful: bool) -> int | None:
    """Samples per item (or per chunk): the config's window, else the input's fixed last dimension, else None (the
    whole recording); a window that does not fit the model is refused at load."""
    fixed = spec.shape[-1] if spec.shape and spec.shape[-1] > 0 else None
    if config.window is not None and fixed is not None and config.window != fixed:
        raise ConfigError(
            f"preprocess.window: {config.window} samples, but input '{spec.name}' {list(spec.shape)} takes {fixed}; "
            f"set window: {fixed} or leave it out"
        )
    window = config.window or fixed
    if config.split == "chunks":
        if window is None:
            raise ConfigError("preprocess.split: chunks needs the samples per chunk: set window")
        if not stateful:
            raise ConfigError(
                "preprocess.split: chunks are the steps of a stateful model; declare its sequence_batching state, "
                "or use split: window"
            )
        if config.channels == "keep":
            raise ConfigError("preprocess.split: chunks steps through one channel; set channels: mono")
    elif stateful:
        raise ConfigError("preprocess.split: a stateful model steps through a recording: set split: chunks")
    return window


def mono_channel_axis(config: AudioConfig, spec: TensorSpec) -> bool:
    """Whether a mixed recording keeps a channel axis of one ([1, samples]), for an input of [batch, 1, samples] as
    torch audio models take it; channels the input cannot take are refused at load rather than on every recording."""
    rank = len(spec.shape) if spec.shape[:1] in ((-1,), (1,)) else 0  # no batch axis first: the item is the input
    if config.channels == "keep":
        if rank == 2:
            raise ConfigError(
                f"preprocess.channels: keep makes [channels, samples] items, but input '{spec.name}' "
                f"{list(spec.shape)} takes [samples]; set channels: mono"
            )
        return False
    if rank != 3 or config.split == "chunks":
        return False
    if spec.shape[1] not in (1, -1):
        raise ConfigError(
            f"preprocess.channels: mono makes one channel, but input '{spec.name}' {list(spec.shape)} takes "
            f"{spec.shape[1]}; set channels: keep"
        )
    return True


class AudioPreprocessor:
    """One sound file (path or bytes) → {input: float32 samples} ([samples], [channels, samples] (also mono, with
    `channel_axis`), or [chunks, window] with split: chunks, plus the recording's length in SAMPLES)."""

    def __init__(self, config: AudioConfig, input_name: str, window: int | None, channel_axis: bool = False) -> None:
        self.config = config
        self.input_name = input_name
        self.window = window
        self.channel_axis = channel_axis

    def __call__(self, raw: object) -> dict[str, np.ndarray]:
        if not isinstance(raw, str | Path | bytes):
            raise DecodeError(f"expected audio (a sound file's path or bytes), got {type(raw).__name__}")
        what = "audio bytes" if isinstance(raw, bytes) else f"'{raw}'"
        samples, rate = self._decode(raw, what)  # [frames, channels]
        if not np.isfinite(samples).all():
            raise DecodeError(f"{what} holds NaN or infinite samples")
        config = self.config
        if config.channels == "mono":
            samples = samples.mean(axis=1, dtype=np.float32)[:, None]
        if rate != config.sample_rate:  # never samples of one rate read as another's
            import soxr  # here, as soundfile: what a server without audio models should not load

            samples = soxr.resample(samples, rate, config.sample_rate)
            if samples.shape[0] == 0:  # the model would be run on nothing (no chunk to step through)
                raise DecodeError(f"{what}: too short to hold a sample at {config.sample_rate} Hz (it is at {rate} Hz)")
        samples = np.ascontiguousarray(samples.T, dtype=np.float32)  # [channels, samples]
        if config.channels == "mono" and not self.channel_axis:
            samples = samples[0]
        if config.split == "chunks":
            assert self.window is not None  # audio_window refused chunks without a window
            length = samples.shape[-1]
            chunks = np.pad(samples, (0, -length % self.window)).reshape(-1, self.window)
            return {self.input_name: chunks, SAMPLES: np.array(length, dtype=np.int64)}
        if self.window is not None:
            short = self.window - samples.shape[-1]
            widths = [(0, 0)] * (samples.ndim - 1) + [(0, max(0, short))]
            samples = np.pad(samples, widths)[..., : self.window]
        return {self.input_name: samples}

    def _decode(self, source: AudioSource, what: str) -> tuple[np.ndarray, int]:
        import soundfile

        config = self.config
        opened: io.BytesIO | str | Path
        if isinstance(source, bytes):
            size, opened = len(source), io.BytesIO(source)
        else:
            try:
                size = Path(source).stat().st_size
            except FileNotFoundError:
                raise DecodeError(f"{what}: no such file") from None
            except OSError as exc:
                raise DecodeError(f"{what}: cannot read ({exc.strerror})") from None
            opened = source
        if size > config.max_bytes:
            raise DecodeError(f"{what}: {size} bytes is over the limit of {config.max_bytes} bytes")
        try:
            with soundfile.SoundFile(opened) as sound:
                frames, rate, channels = sound.frames, sound.samplerate, sound.channels
                if channels > config.max_channels:
                    raise DecodeError(f"{what}: {channels} channels is over the limit of {config.max_channels}")
                if frames > config.max_seconds * rate:
                    raise DecodeError(
                        f"{what}: {frames / rate:.1f} s of audio is over the limit of {config.max_seconds:.1f} s "
                        f"({frames} samples at {rate} Hz)"
                    )
                if frames * channels > config.max_bytes:  # a compressed file's decoded size, as a WAV's
                    raise DecodeError(
                        f"{what}: {frames} frames of {channels} channels decode to more samples than max_bytes "
                        f"({config.max_bytes}) lets an uncompressed file hold"
                    )
                samples = sound.read(dtype="float32", always_2d=True)
        except soundfile.LibsndfileError as exc:
            raise DecodeError(f"{what} is not a sound file this model can read ({exc.error_string})") from None
        except (soundfile.SoundFileError, OSError) as exc:
            raise DecodeError(f"{what}: cannot decode audio ({exc})".splitlines()[0]) from None
        if samples.shape[0] == 0:
            raise DecodeError(f"{what} holds no samples")
        return samples, rate
