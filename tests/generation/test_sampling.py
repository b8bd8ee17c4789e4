"""sample() against the distributions it must draw from: softmax(logits / T), cut by top-k, then top-p."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from forwardpass.errors import InputError
from forwardpass.generation import SamplingParams
from forwardpass.generation.sampling import sample

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.1], np.float32))
DRAWS = 20_000


def frequencies(params: SamplingParams, logits: np.ndarray = LOGITS) -> np.ndarray:
    rng = np.random.default_rng(params.seed)
    counts = np.bincount([sample(logits, params, rng) for _ in range(DRAWS)], minlength=logits.shape[0])
    return counts / DRAWS


def test_temperature_one_draws_the_softmax() -> None:
    np.testing.assert_allclose(frequencies(SamplingParams(temperature=1.0, seed=0)), [0.5, 0.25, 0.15, 0.1], atol=0.015)


def test_temperature_sharpens_and_flattens() -> None:
    for temperature in (0.5, 2.0):
        expected = np.exp(LOGITS / temperature) / np.exp(LOGITS / temperature).sum()
        got = frequencies(SamplingParams(temperature=temperature, seed=1))
        np.testing.assert_allclose(got, expected, atol=0.015)


def test_top_k_keeps_the_k_most_likely_renormalised() -> None:
    got = frequencies(SamplingParams(temperature=1.0, top_k=2, seed=2))
    np.testing.assert_allclose(got, [2 / 3, 1 / 3, 0, 0], atol=0.015)
    assert got[2] == got[3] == 0


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    # 0.5 + 0.25 = 0.75 < 0.8: the third token (0.15) is needed to reach 0.8, the fourth is not
    got = frequencies(SamplingParams(temperature=1.0, top_p=0.8, seed=3))
    np.testing.assert_allclose(got, np.array([0.5, 0.25, 0.15, 0]) / 0.9, atol=0.015)
    assert got[3] == 0
    only_best = frequencies(SamplingParams(temperature=1.0, top_p=0.1, seed=4))
    assert only_best[0] == 1.0


def test_seed_reproduces_and_differs() -> None:
    logits = np.random.default_rng(0).standard_normal(300).astype(np.float32)
    params = SamplingParams(temperature=1.0, seed=11)

    def draws(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [sample(logits, params, rng) for _ in range(50)]

    assert draws(11) == draws(11)
    assert draws(11) != draws(12)


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("top_k", -1), ("top_p", 1.5), ("top_p", 0.0), ("max_new_tokens", 0), ("seed", -1)],
)
def test_invalid_parameters_are_refused(field: str, value: float) -> None:
    with pytest.raises(InputError, match=field):
        options: dict[str, Any] = {field: value}
        SamplingParams(**options)


def test_a_temperature_near_zero_draws_the_most_likely_token() -> None:
    """Logits over 1e-320 overflow to infinity: inf - inf made every probability NaN, and the draw the last token."""
    rng = np.random.default_rng(0)
    for temperature in (1e-300, 1e-320):
        params = SamplingParams(temperature=temperature, top_k=3, top_p=0.9)
        assert {sample(LOGITS * 100, params, rng) for _ in range(50)} == {0}
