"""BatchCache: sequences join left-padded, leave by row, and padding that no row needs any more is cut off; the order
rows are kept in when some leave."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from forwardpass.backends.ort import OrtSession
from forwardpass.generation.decoder import BatchCache, DecoderLayout, fewest_moves

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


def test_rows_that_stay_keep_their_place_and_the_last_fill_the_gaps() -> None:
    assert fewest_moves([1, 2, 3, 4, 5, 6, 7]) == [7, 1, 2, 3, 4, 5, 6]  # row 0 left: only row 7 moves
    assert fewest_moves([0, 2, 5, 6]) == [0, 5, 2, 6]  # rows 1 and 3 left: 5 and 6 take their places
    assert fewest_moves([0, 1, 2]) == [0, 1, 2]  # the last rows left: nothing moves
    assert fewest_moves([]) == []
