"""The interleaved timing loop, with counting stand-ins for the contenders (no timing asserts)."""

from __future__ import annotations

import pytest

from forwardpass.measure import RoundDone, interleave
from forwardpass.measure.timing import run_for


def test_run_for_calls_at_least_once_and_records_each_call() -> None:
    calls: list[int] = []
    latencies: list[float] = []
    busy = run_for(lambda: calls.append(1), 0.0, latencies)
    assert len(calls) == len(latencies) == 1
    assert busy == pytest.approx(sum(latencies))


def test_contenders_alternate_their_order_every_round() -> None:
    order: list[str] = []
    done: list[RoundDone] = []
    timings = interleave(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        items_per_call=4,
        rounds=3,
        round_seconds=1e-9,
        warmup_seconds=1e-9,
        on_round=done.append,
    )
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then a b / b a / a b
    assert [(d.name, d.phase, d.index) for d in done] == [
        ("a", "warmup", 0),
        ("b", "warmup", 0),
        ("a", "round", 0),
        ("b", "round", 0),
        ("b", "round", 1),
        ("a", "round", 1),
        ("a", "round", 2),
        ("b", "round", 2),
    ]
    for timing in timings.values():
        assert timing.items_per_call == 4
        assert len(timing.round_rates) == 3 and len(timing.latencies) == 3
        assert timing.throughput > 0
        assert timing.latency.calls == 3
    assert timings["a"].ratio_to(timings["a"]) == 1.0
    assert set(timings["a"].to_dict()) == {"throughput", "latency_ms", "rounds"}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        interleave({"a": lambda: None}, 1, rounds=0, round_seconds=1)
