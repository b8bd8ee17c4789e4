"""`forwardpass bench --url URL --model MODEL`: a running V2 server loaded by several client processes, in closed
and open loops, with each figure refused when the client itself was saturated; MLPerf's scenarios with --mlperf."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forwardpass.cli.bench_mlperf import mlperf_over_http
from forwardpass.cli.reporting import float_list, int_list, progress, text_list
from forwardpass.errors import InputError
from forwardpass.measure import loadgen
from forwardpass.measure.payload import Target, build_payload, model_inputs

__all__ = ["bench_server"]


def bench_server(
    name: str,
    url: str,
    concurrency: str,
    rate: str | None,
    encoding: str,
    clients: int,
    duration: float,
    scenarios: list[str],
    out: Path | None,
    machine: dict[str, object],
) -> dict[str, Any]:
    """The report's data: each encoding at each closed-loop concurrency and open-loop rate, then MLPerf's
    scenarios over HTTP when asked for."""
    target = Target(url, name)
    encodings = text_list(encoding, "--encoding")
    bad = [e for e in encodings if e not in ("json", "binary")]
    if bad:
        raise InputError(f"--encoding: {', '.join(bad)}? use json, binary or json,binary")
    loads: list[tuple[loadgen.Mode, float]] = [("closed", c) for c in int_list(concurrency, "--concurrency")]
    loads += [("open", r) for r in float_list(rate, "--rate")] if rate else []
    specs = model_inputs(target)
    runs: list[dict[str, Any]] = []
    interrupted = None
    try:
        with progress() as bar:
            task = bar.add_task(f"{name} at {url}", total=len(encodings) * len(loads))
            for chosen in encodings:
                payload = build_payload(target, specs, chosen)  # type: ignore[arg-type]
                for mode, load in loads:
                    bar.update(task, description=f"{mode} loop {load:g} ({chosen})")
                    if mode == "closed":
                        result = loadgen.run_closed_loop(target, payload, int(load), duration, clients)
                    else:
                        result = loadgen.run_open_loop(target, payload, load, duration, clients)
                    runs.append(result.to_dict())
                    bar.advance(task)
    except KeyboardInterrupt:
        interrupted = f"{len(runs)} of {len(encodings) * len(loads)} loads"
    data: dict[str, Any] = {
        "kind": "bench",
        "model": name,
        "settings": {"url": url, "duration": duration, "clients": clients, "encodings": encodings},
        "machine": machine,
        "server": {"url": url, "model": name, "runs": runs},
    }
    if interrupted:
        data["interrupted"] = interrupted
        return data
    if scenarios and out is not None:
        data["mlperf"] = mlperf_over_http(target, specs, clients, scenarios, duration, out / "mlperf" / "server")
    return data
