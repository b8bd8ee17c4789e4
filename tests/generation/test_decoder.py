"""BatchCache: sequences join left-padded, leave by row, and padding that no row needs any more is cut off."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from forwardpass.backends.ort import OrtSession
from forwardpass.generation.decoder import BatchCache, DecoderLayout

LAYOUT = DecoderLayout(["past_key_values.0.key"], ["present.0.key"], [(1, 1)], np.dtype(np.float32))


def present(*lengths_and_values: tuple[int, float]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A prefill's outputs for prompts of the given lengths (left-padded to the longest), each row filled with its
    value, and its attention mask."""
    width = max(length for length, _ in lengths_and_values)
    key = np.zeros((len(lengths_and_values), 1, width, 1), np.float32)
    mask = np.zeros((len(lengths_and_values), width), np.int64)
    for row, (length, value) in enumerate(lengths_and_values):
        key[row, 0, width - length :, 0] = value
        mask[row, width - length :] = 1
    return {"present.0.key": key}, mask


def test_join_pads_left_and_keep_trims(exported: Path) -> None:
    cache = BatchCache(LAYOUT, OrtSession(exported / "1" / "model.onnx"))  # join and keep run no graph
    cache.join(*present((5, 1.0)))
    cache.join(*present((2, 2.0), (3, 3.0)))
    assert cache.rows == 3
    np.testing.assert_array_equal(cache.mask, [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(cache.arrays[0][:, 0, :, 0], [[1] * 5, [0, 0, 0, 2, 2], [0, 0, 3, 3, 3]])
    cache.keep([2, 1])  # the long one leaves: two columns are padding for both rows left
    np.testing.assert_array_equal(cache.mask, [[1, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(cache.arrays[0][:, 0, :, 0], [[3, 3, 3], [0, 2, 2]])
    cache.keep([])
    assert cache.rows == 0 and cache.arrays[0].shape == (0, 1, 0, 1)
