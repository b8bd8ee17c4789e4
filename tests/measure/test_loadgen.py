"""The load generator against servers that count what they serve: a minimal stand-in HTTP server run here, and a
real `forwardpass serve` process. The client's throughput must match the server's own count within 15 %."""

from __future__ import annotations

import re
import sys
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest

from forwardpass.measure.loadgen import SATURATED_CPU, LoadResult, run_closed_loop, run_open_loop
from forwardpass.measure.payload import Target, build_payload, model_inputs
from tests.measure.conftest import Served
from tests.measure.standin import Sampler, StandIn

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
SECONDS = 2.0


def _check(result: LoadResult, served: float, reference: float) -> None:
    assert result.refused is None, result.refused
    assert result.errors == 0, result.error_samples
    assert result.requests == served  # every answered request counted once, on both sides
    assert result.throughput == pytest.approx(reference, rel=0.15)
    assert result.latency is not None and 0 < result.latency.p50_ms <= result.latency.p99_ms
    assert len(result.client_cpu) == result.processes and all(0 < cpu < 1 for cpu in result.client_cpu)


def test_closed_loop_matches_the_stand_in_servers_count(standin: StandIn) -> None:
    target = Target(f"http://127.0.0.1:{standin.port}", "standin")
    specs = model_inputs(target)
    assert [(s.name, s.shape) for s in specs] == [("x", (-1, 4))]
    payload = build_payload(target, specs, "json")
    before = standin.served
    with Sampler(lambda: standin.served) as sampler:
        result = run_closed_loop(target, payload, concurrency=4, seconds=SECONDS, processes=2)
    reference, served = sampler.rate(before, warmups=4)
    _check(result, served, reference)
    assert result.mode == "closed" and result.processes == 2
    body = orjson.loads(standin.bodies[0])
    assert body["inputs"][0]["name"] == "x" and body["inputs"][0]["shape"] == [1, 4]
    assert len(body["inputs"][0]["data"]) == 4


def test_open_loop_sends_poisson_arrivals_at_the_asked_rate(standin: StandIn) -> None:
    target = Target(f"http://127.0.0.1:{standin.port}", "standin")
    payload = build_payload(target, model_inputs(target), "binary")
    before = standin.served
    with Sampler(lambda: standin.served) as sampler:
        result = run_open_loop(target, payload, rate=400, seconds=SECONDS, processes=2)
    reference, served = sampler.rate(before, warmups=2 * 64)
    _check(result, served, reference)
    # 800 expected arrivals: a Poisson count is within 4 standard deviations (±113) of it
    assert abs(result.requests - 400 * SECONDS) < 4 * np.sqrt(400 * SECONDS)


def test_a_saturated_client_is_refused_not_reported() -> None:
    busy = LoadResult("closed", 8, "http", "json", 2, 1000, 0, 1.0, 1000.0, None, [0.4, SATURATED_CPU + 0.01])
    assert busy.throughput is None and busy.to_dict()["reported"] is False
    assert "91% of its core" in (busy.refused or "")
    late = LoadResult("open", 100, "http", "json", 1, 100, 0, 1.0, 100.0, None, [0.1], late=20)
    assert late.throughput is None and "late" in (late.refused or "")
    fine = LoadResult("closed", 8, "http", "json", 2, 1000, 0, 1.0, 1000.0, None, [0.4, 0.5])
    assert fine.throughput == 1000.0 and fine.to_dict()["reported"] is True


def _served_count(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    match = re.search(r'^forwardpass_requests_total\{model="mlp",version="1"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(("protocol", "encoding"), [("http", "binary"), ("grpc", "json")])
def test_forwardpass_serve_throughput_matches_its_own_metrics(served: Served, protocol: str, encoding: str) -> None:
    http_url = served.http
    target = Target(served.http if protocol == "http" else served.grpc, "mlp")
    payload = build_payload(target, model_inputs(target), encoding)  # type: ignore[arg-type]
    before = _served_count(http_url)
    with Sampler(lambda: _served_count(http_url)) as sampler:
        result = run_closed_loop(target, payload, concurrency=4, seconds=SECONDS, processes=2)
    warmups = 4 if protocol == "http" else 2  # one per connection, or one per process's channel
    reference, served_count = sampler.rate(before, warmups)
    _check(result, served_count, reference)
    assert result.protocol == protocol and result.encoding == encoding
