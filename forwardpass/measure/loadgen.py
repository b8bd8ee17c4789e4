"""A load generator for KServe V2 servers (forwardpass, Triton, MLServer ...), over HTTP or gRPC.

    closed loop   `concurrency` requests in flight at all times: each answer sends the next request at once
    open loop     requests at a fixed mean rate with Poisson arrivals, whatever the answers do; latency counts from
                  the moment a request was due, so a server that falls behind shows it (no coordinated omission)

The load comes from several client processes (one asyncio loop each, on uvloop where installed, over raw keep-alive
HTTP/1.1 sockets or one gRPC channel), so that one Python core is not the ceiling. The request body is built once.
Every process measures its own CPU time; a figure is refused, not reported, when a client process used more than
`SATURATED_CPU` of its core or (open loop) fell behind its schedule: then the client, not the server, was measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from queue import Empty
from typing import Any, Literal

import numpy as np

from forwardpass.errors import ForwardpassError, InputError
from forwardpass.measure.payload import CONNECT_TIMEOUT_S, Payload, Target, triton_stubs
from forwardpass.measure.stats import LatencySummary

__all__ = ["SATURATED_CPU", "LoadResult", "run_closed_loop", "run_open_loop"]

Mode = Literal["closed", "open"]
SATURATED_CPU = 0.90  # share of one core
LATE_MS = 20.0  # an open-loop request sent this much after it was due: the client could not keep up
MAX_LATE_SHARE = 0.05  # beyond scheduling hiccups of a shared machine
OPEN_LOOP_CONNECTIONS = 64  # per process: requests beyond this wait for a free connection (and their latency shows it)
MAX_ERROR_SAMPLES = 5


@dataclass(slots=True)
class LoadResult:
    mode: Mode
    load: float  # concurrency (closed) or requests per second asked (open)
    protocol: str
    encoding: str
    processes: int
    requests: int  # answered with success
    errors: int
    seconds: float  # from the start signal to the last answer
    measured_throughput: float  # successful requests per second, whether or not it may be reported
    latency: LatencySummary | None
    client_cpu: list[float]  # share of one core, per client process
    late: int = 0  # open loop: requests sent more than LATE_MS after they were due
    error_samples: list[str] = field(default_factory=list)

    @property
    def refused(self) -> str | None:
        """Why the figure must not be reported (the client was the bottleneck), or None."""
        busiest = max(self.client_cpu, default=0.0)
        if busiest > SATURATED_CPU:
            return f"a client process used {busiest:.0%} of its core"
        sent = self.requests + self.errors
        if self.mode == "open" and sent and self.late / sent > MAX_LATE_SHARE:
            return f"{self.late} of {sent} requests left more than {LATE_MS:.0f} ms late"
        return None

    @property
    def throughput(self) -> float | None:
        return None if self.refused else self.measured_throughput

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latency")
        return {
            **data,
            "throughput": self.throughput,
            "latency_ms": self.latency.to_dict() if self.latency else None,
            "client_cpu_max": max(self.client_cpu, default=0.0),
            "client_cpu_total": sum(self.client_cpu),
            "reported": self.refused is None,
            "refused": self.refused,
        }


# ---- one client process ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    host: str
    port: int
    payload: Payload
    mode: Mode
    load: float  # this process's share: connections (closed) or requests per second (open)
    seconds: float
    seed: int


class _HttpConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _HttpConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
        return cls(reader, writer)

    async def send(self, request: bytes) -> None:
        """One request, its whole answer read; raises on a non-2xx status."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ConnectionError("the answer has no Content-Length (chunked answers are not read)")
        body = await self.reader.readexactly(length)
        status = int(head[9:12])
        if not 200 <= status < 300:
            raise RuntimeError(f"HTTP {status}: {body[:160].decode(errors='replace')}")

    def close(self) -> None:
        self.writer.close()


class _Sender:
    """Sends the payload over as many connections as asked; for gRPC one channel carries them all."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.idle: asyncio.Queue[_HttpConnection] = asyncio.Queue()
        self.connections: list[_HttpConnection] = []
        self.channel: Any = None
        self.call: Callable[[], Awaitable[Any]] | None = None

    async def start(self, connections: int) -> None:
        job = self.job
        if job.payload.protocol == "grpc":
            import grpc

            service_pb2, service_pb2_grpc = triton_stubs()
            self.channel = grpc.aio.insecure_channel(f"{job.host}:{job.port}")
            stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
            request = service_pb2.ModelInferRequest.FromString(job.payload.data)
            self.call = lambda: stub.ModelInfer(request)
            await self.call()  # connect and warm up before the clock starts
            return
        for _ in range(connections):
            connection = await _HttpConnection.open(job.host, job.port)
            await connection.send(job.payload.data)  # warm-up, and a check that the request is accepted
            self.connections.append(connection)
            self.idle.put_nowait(connection)

    async def send(self) -> None:
        if self.call is not None:
            await self.call()
            return
        connection = await asyncio.wait_for(self.idle.get(), CONNECT_TIMEOUT_S)
        try:
            await connection.send(self.job.payload.data)
        except Exception:
            connection.close()  # its stream is in an unknown state: replace it, if the server still answers
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                replacement = await _HttpConnection.open(self.job.host, self.job.port)
                self.connections.append(replacement)
                self.idle.put_nowait(replacement)
            raise
        self.idle.put_nowait(connection)

    async def close(self) -> None:
        for connection in self.connections:
            connection.close()
        if self.channel is not None:
            await self.channel.close()


@dataclass(slots=True)
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    late: int = 0
    last_done: float = 0.0
    samples: list[str] = field(default_factory=list)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.samples) < MAX_ERROR_SAMPLES:
            self.samples.append(f"{type(exc).__name__}: {exc}"[:200])


async def _timed(sender: _Sender, tally: _Tally, due: float) -> None:
    try:
        await sender.send()
    except Exception as exc:  # a failed request is counted, never fatal to the run
        tally.failed(exc)
    else:
        tally.latencies.append(time.perf_counter() - due)
    tally.last_done = time.perf_counter()


async def _closed(sender: _Sender, tally: _Tally, deadline: float) -> None:
    while time.perf_counter() < deadline:
        await _timed(sender, tally, time.perf_counter())


async def _open(sender: _Sender, tally: _Tally, rate: float, start: float, deadline: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    due = start
    tasks: set[asyncio.Task[None]] = set()
    while True:
        due += float(rng.exponential(1.0 / rate))
        if due >= deadline:
            break
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        elif -wait * 1e3 > LATE_MS:
            tally.late += 1
        task = asyncio.create_task(_timed(sender, tally, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)


async def _client(job: _Job, ready: Any, go: Any) -> dict[str, Any] | None:
    sender = _Sender(job)
    connections = int(job.load) if job.mode == "closed" else OPEN_LOOP_CONNECTIONS
    try:
        await sender.start(connections)
    except Exception as exc:
        ready.put(f"{type(exc).__name__}: {exc}")
        return None
    ready.put(None)
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    tally = _Tally()
    cpu, start = time.process_time(), time.perf_counter()
    deadline = start + job.seconds
    if job.mode == "closed":
        await asyncio.gather(*(_closed(sender, tally, deadline) for _ in range(connections)))
    else:
        await _open(sender, tally, job.load, start, deadline, job.seed)
    end = max(tally.last_done, start + 1e-9)
    cpu_share = (time.process_time() - cpu) / (time.perf_counter() - start)
    await sender.close()
    return {
        "latencies": tally.latencies,
        "errors": tally.errors,
        "late": tally.late,
        "seconds": end - start,
        "cpu": cpu_share,
        "samples": tally.samples,
    }


def _process(job: _Job, ready: Any, go: Any, results: Any) -> None:
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    outcome = runner(_client(job, ready, go))
    if outcome is not None:
        results.put(outcome)


# ---- the run ---------------------------------------------------------------------------------------------------


def _shares(total: float, parts: int, whole: bool) -> list[float]:
    if whole:
        base, extra = divmod(int(total), parts)
        return [float(base + (i < extra)) for i in range(parts)]
    return [total / parts] * parts


def _collect(queue: Any, workers: list[Any], timeout: float) -> list[Any]:
    """One message per worker; a worker that died first (e.g. could not start) fails the run instead of a wait."""
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(messages) < len(workers):
        try:
            messages.append(queue.get(timeout=0.2))
        except Empty:
            if any(worker.exitcode not in (None, 0) for worker in workers) or time.monotonic() > deadline:
                codes = [worker.exitcode for worker in workers]
                raise ForwardpassError(f"a load generator process failed (exit codes {codes})") from None
    return messages


def _run(target: Target, payload: Payload, mode: Mode, load: float, seconds: float, processes: int) -> LoadResult:
    if seconds <= 0:
        raise InputError("the load duration must be positive")
    if processes < 1:
        raise InputError("the number of client processes must be at least 1")
    host, port = target.address
    if mode == "closed":
        if load < 1 or load != int(load):
            raise InputError(f"concurrency must be a positive integer, got {load}")
        processes = min(processes, int(load))
    elif load <= 0:
        raise InputError(f"the request rate must be positive, got {load}")
    context = multiprocessing.get_context("spawn")  # no inherited ONNX Runtime threads or sockets
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    jobs = [
        _Job(host, port, payload, mode, share, seconds, seed)
        for seed, share in enumerate(_shares(load, processes, whole=mode == "closed"))
    ]
    workers = [context.Process(target=_process, args=(job, ready, go, results), daemon=True) for job in jobs]
    for worker in workers:
        worker.start()
    try:
        problems = [problem for problem in _collect(ready, workers, 60) if problem]
        if problems:
            raise InputError(f"{target.url}: the load generator could not send a first request ({problems[0]})")
        go.set()
        outcomes = _collect(results, workers, seconds + 120)
    finally:
        for worker in workers:  # done: they exit by themselves; stopped before the start signal: they never load
            worker.join(timeout=10 if go.is_set() else 0)
            if worker.is_alive():
                worker.kill()
    latencies = [latency for outcome in outcomes for latency in outcome["latencies"]]
    window = max(outcome["seconds"] for outcome in outcomes)
    return LoadResult(
        mode=mode,
        load=load,
        protocol=payload.protocol,
        encoding=payload.encoding,
        processes=len(workers),
        requests=len(latencies),
        errors=sum(outcome["errors"] for outcome in outcomes),
        seconds=window,
        measured_throughput=len(latencies) / window,
        latency=LatencySummary.of(latencies) if latencies else None,
        client_cpu=[outcome["cpu"] for outcome in outcomes],
        late=sum(outcome["late"] for outcome in outcomes),
        error_samples=[sample for outcome in outcomes for sample in outcome["samples"]][:MAX_ERROR_SAMPLES],
    )


def run_closed_loop(target: Target, payload: Payload, concurrency: int, seconds: float, processes: int) -> LoadResult:
    """`concurrency` connections (spread over `processes`), each sending again as soon as it is answered."""
    return _run(target, payload, "closed", concurrency, seconds, processes)


def run_open_loop(target: Target, payload: Payload, rate: float, seconds: float, processes: int) -> LoadResult:
    """Requests at `rate` per second on average (Poisson arrivals, spread over `processes`) for `seconds`."""
    return _run(target, payload, "open", rate, seconds, processes)
