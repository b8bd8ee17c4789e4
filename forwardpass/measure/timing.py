"""Timing loops: call contenders in alternating rounds so that they share the machine's noise."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from forwardpass.measure.stats import LatencySummary, paired_ratio

__all__ = ["Call", "OnRound", "RoundDone", "Timing", "interleave", "run_for"]

Call = Callable[[], object]


@dataclass(frozen=True, slots=True)
class RoundDone:
    """Told to `on_round` after each warm-up and each round, between timed calls (e.g. to show progress)."""

    name: str
    phase: Literal["warmup", "round"]
    index: int  # 0-based round number; 0 for the warm-up
    rounds: int
    seconds: float  # spent in calls
    items_per_second: float


OnRound = Callable[[RoundDone], None]


@dataclass(slots=True)
class Timing:
    """What one contender did: every call's latency and each round's throughput."""

    items_per_call: int
    latencies: list[float] = field(default_factory=list)
    round_rates: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Items per second: the median over rounds."""
        return float(np.median(self.round_rates))

    @property
    def latency(self) -> LatencySummary:
        return LatencySummary.of(self.latencies)

    def ratio_to(self, other: Timing) -> float:
        """Throughput relative to `other`, paired round by round."""
        return paired_ratio(self.round_rates, other.round_rates)

    def to_dict(self) -> dict[str, object]:
        return {"throughput": self.throughput, "latency_ms": self.latency.to_dict(), "rounds": list(self.round_rates)}


def run_for(call: Call, seconds: float, latencies: list[float]) -> float:
    """Call repeatedly until `seconds` have passed (at least once); append each call's latency; return their sum."""
    clock = time.perf_counter
    deadline = clock() + seconds
    busy = 0.0
    while True:
        start = clock()
        call()
        end = clock()
        latencies.append(end - start)
        busy += end - start
        if end >= deadline:
            return busy


def interleave(
    calls: Mapping[str, Call],
    items_per_call: int,
    *,
    rounds: int,
    round_seconds: float,
    warmup_seconds: float = 0.0,
    on_round: OnRound | None = None,
) -> dict[str, Timing]:
    """Time each contender for `rounds` times `round_seconds`, alternating the order every round (A B, B A, ...)."""
    if rounds < 1 or round_seconds <= 0 or warmup_seconds < 0:
        raise ValueError("interleave needs rounds >= 1, round_seconds > 0 and warmup_seconds >= 0")
    names = list(calls)
    for name in names:
        if warmup_seconds > 0:
            calls_made: list[float] = []
            busy = run_for(calls[name], warmup_seconds, calls_made)
            if on_round:
                on_round(RoundDone(name, "warmup", 0, rounds, busy, _rate(items_per_call, len(calls_made), busy)))
    timings = {name: Timing(items_per_call) for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            timing = timings[name]
            before = len(timing.latencies)
            busy = run_for(calls[name], round_seconds, timing.latencies)
            timing.round_rates.append(_rate(items_per_call, len(timing.latencies) - before, busy))
            if on_round:
                on_round(RoundDone(name, "round", index, rounds, busy, timing.round_rates[-1]))
    return timings


def _rate(items_per_call: int, calls: int, seconds: float) -> float:
    return items_per_call * calls / max(seconds, 1e-9)
