"""Speech segments: a voice-activity detector's speech probability per chunk of a recording (the audio
preprocessing's split: chunks) → where speech starts and ends, in seconds, as the silero-vad package's
get_speech_timestamps finds it."""

from __future__ import annotations

import math

import numpy as np

from forwardpass.config import SpeechSegmentsConfig

__all__ = ["SpeechSegments"]


class SpeechSegments:
    """{"segments": [{"start": s, "end": s}, ...], "duration": s}: a recording's chunk probabilities → its speech, as
    silero-vad's get_speech_timestamps (version 6) finds it from the same probabilities, in seconds exactly (the
    package rounds them to 0.1 s when it gives seconds). The chunk size is the preprocessing's window."""

    def __init__(self, config: SpeechSegmentsConfig, output: str, chunks: str, length: str, sample_rate: int) -> None:
        self.config = config
        self.output = output
        self.chunks = chunks  # the input of the recording's chunks
        self.length = length  # the context array of its length in samples, before the last chunk was padded
        self.rate = sample_rate

    def __call__(
        self, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray], top_k: int | None = None
    ) -> dict[str, object]:
        probabilities = outputs[self.output].reshape(-1).tolist()
        window = inputs[self.chunks].shape[-1]
        length = int(inputs[self.length])
        segments = self._segments(probabilities, window, length)
        return {
            "segments": [{"start": start / self.rate, "end": end / self.rate} for start, end in segments],
            "duration": length / self.rate,
        }

    def _segments(self, probabilities: list[float], window: int, length: int) -> list[tuple[int, int]]:
        """get_speech_timestamps_from_probs of silero-vad 6.2 with use_max_poss_sil_at_max_speech, in samples."""
        config, rate = self.config, self.rate
        threshold = config.threshold
        neg_threshold = config.neg_threshold if config.neg_threshold is not None else max(threshold - 0.15, 0.01)
        min_speech = rate * config.min_speech_ms / 1000
        pad = rate * config.speech_pad_ms / 1000
        max_speech = rate * (config.max_speech_s or math.inf) - window - 2 * pad
        min_silence = rate * config.min_silence_ms / 1000
        min_silence_at_max = rate * config.min_silence_at_max_speech_ms / 1000
        speeches: list[list[int]] = []
        start: int | None = None  # the current segment's start while in speech
        temp_end = 0  # where a silence within speech began
        possible_ends: list[tuple[int, int]] = []  # (where, how long) of the silences within the current speech
        for index, probability in enumerate(probabilities):
            sample = window * index
            if probability >= threshold and temp_end:
                if sample - temp_end > min_silence_at_max:
                    possible_ends.append((temp_end, sample - temp_end))
                temp_end = 0
            if probability >= threshold and start is None:
                start = sample
                continue
            if start is not None and sample - start > max_speech:
                if possible_ends:  # cut at the longest silence
                    end, silence = max(possible_ends, key=lambda pair: pair[1])
                    speeches.append([start, end])
                    start = end + silence if silence < sample else None  # speech goes on after that silence
                else:  # no silence to cut at: here
                    speeches.append([start, sample])
                    start = None
                temp_end = 0
                possible_ends = []
                if start is None:
                    continue
            if probability < neg_threshold and start is not None:
                if not temp_end:
                    temp_end = sample
                if sample - temp_end < min_silence:
                    continue
                if temp_end - start > min_speech:
                    speeches.append([start, temp_end])
                start = None
                temp_end = 0
                possible_ends = []
        if start is not None and length - start > min_speech:
            speeches.append([start, length])
        return self._padded(speeches, pad, length)

    @staticmethod
    def _padded(speeches: list[list[int]], pad: float, length: int) -> list[tuple[int, int]]:
        """Each segment widened by `pad` on both sides; two closer than twice that meet halfway."""
        for index, speech in enumerate(speeches):
            if index == 0:
                speech[0] = int(max(0, speech[0] - pad))
            if index != len(speeches) - 1:
                following = speeches[index + 1]
                silence = following[0] - speech[1]
                if silence < 2 * pad:
                    speech[1] += int(silence // 2)
                    following[0] = int(max(0, following[0] - silence // 2))
                else:
                    speech[1] = int(min(length, speech[1] + pad))
                    following[0] = int(max(0, following[0] - pad))
            else:
                speech[1] = int(min(length, speech[1] + pad))
        return [(start, end) for start, end in speeches]
