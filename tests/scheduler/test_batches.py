"""What every batching loop shares: a failed batch blames only the items that fail alone; outputs are checked to hold
one row per item along each output's batch axis, then cut back into each request's rows."""

from __future__ import annotations

import numpy as np
import pytest

from forwardpass.errors import ForwardpassError, InputError, ShapeError
from forwardpass.scheduler.batches import check_rows, fail_alone, split_rows


class Doubler:
    """Doubles each item, refusing a negative one (as a model refuses a value), and counts its calls."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(items)
        if any(item < 0 for item in items):
            raise InputError(f"{min(items)} is negative")
        return [2 * item for item in items]


def test_a_batch_that_succeeds_runs_once() -> None:
    run = Doubler()
    assert fail_alone(run, [1, 2, 3], ForwardpassError) == [2, 4, 6]
    assert run.calls == [[1, 2, 3]]


def test_a_failed_batch_runs_each_item_alone_and_only_the_culprit_fails() -> None:
    run = Doubler()
    outcomes = fail_alone(run, [1, -5, 3], ForwardpassError)
    assert outcomes[0] == 2 and outcomes[2] == 6
    assert isinstance(outcomes[1], InputError) and "-5 is negative" in str(outcomes[1])
    assert run.calls == [[1, -5, 3], [1], [-5], [3]]


def test_an_exception_it_was_not_told_to_catch_propagates() -> None:
    def broken(items: list[int]) -> list[int]:
        raise KeyError("a bug, not a bad item")

    with pytest.raises(KeyError):
        fail_alone(broken, [1, 2], ForwardpassError)


def test_outputs_are_split_into_each_requests_rows() -> None:
    outputs = {"y": np.arange(12).reshape(6, 2), "z": np.arange(6)}
    parts = split_rows(outputs, [1, 3, 2])
    assert [part["z"].tolist() for part in parts] == [[0], [1, 2, 3], [4, 5]]
    assert [part["y"].shape for part in parts] == [(1, 2), (3, 2), (2, 2)]


@pytest.mark.parametrize("value", [np.float32(1.0), np.zeros((5, 2))], ids=["scalar", "wrong-count"])
def test_outputs_without_a_row_per_item_are_refused(value: np.ndarray) -> None:
    with pytest.raises(ShapeError, match=r"output 'y' .* for 6 items: it has no batch dimension"):
        split_rows({"y": np.asarray(value)}, [4, 2])


def test_rows_are_counted_along_each_outputs_own_batch_axis() -> None:
    state = np.zeros((2, 3, 8))  # [layers, batch, hidden]: the batch on axis 1, as a recurrent state's
    check_rows({"state": state, "y": np.zeros((3, 1))}, 3, {"state": 1})
    with pytest.raises(ShapeError, match="on axis 1"):
        check_rows({"state": state}, 2, {"state": 1})
