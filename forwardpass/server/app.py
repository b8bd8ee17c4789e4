"""The composition root of `forwardpass serve`: repository → registry → data plane → HTTP (+ gRPC), one asyncio loop.

Start: listen (so a busy port fails at once), load every model, serve, print where and what is ready.
SIGTERM or SIGINT: stop accepting connections, let requests already sent finish, drain every model, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from typing import TYPE_CHECKING

import uvicorn

from forwardpass.errors import ConfigError
from forwardpass.registry import ModelRegistry
from forwardpass.repository import Repository
from forwardpass.server.connections import enforce_deadlines, limited_protocol
from forwardpass.server.dataplane import DataPlane
from forwardpass.server.generate import Generators, generation_routes
from forwardpass.server.guard import RequestGuard
from forwardpass.server.http import create_app, v2_routes
from forwardpass.server.openai import openai_routes
from forwardpass.server.settings import ServerSettings
from forwardpass.server.ui import ui_routes
from forwardpass.server.websocket import stream_routes

if TYPE_CHECKING:
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp

    from forwardpass.server.grpc import GrpcServer

__all__ = ["InferenceServer", "asgi_app", "configure_logging", "route_table", "run_server"]

log = logging.getLogger(__name__)


class _ClientFaultsInOneLine(logging.Filter):
    """uvicorn logs a client's WebSocket text frame that is not UTF-8 with a traceback (its close code 1007 tells
    the client): one line per such frame is enough of the client's fault in the server's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "Invalid UTF-8 sequence received from client.":
            record.exc_info = record.exc_text = None
        return True


CLIENT_FAULTS_IN_ONE_LINE = _ClientFaultsInOneLine()  # one instance: adding it again changes nothing

# After the listeners close: how long requests already written on open connections get to arrive before uvicorn
# closes the connections it sees as idle.
SETTLE_S = 0.25


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM after shutting down (exit -15, not 0)."""

    def capture_signals(self) -> _NoSignals:  # type: ignore[override]
        return _NoSignals()


class _NoSignals:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


class InferenceServer:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(Repository(settings.repository), trust_pickle=settings.trust_pickle)
        self.dataplane = DataPlane(self.registry, settings)
        self.generators = Generators(self.registry)
        self.http_port = 0
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: GrpcServer | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._deadlines: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        listener = _listen(settings.host, settings.http_port)
        self.http_port = listener.getsockname()[1]
        if settings.grpc_port:
            self._grpc = _grpc_server(self.dataplane, settings)
        await self.registry.load_all()
        logging.getLogger("uvicorn.error").addFilter(CLIENT_FAULTS_IN_ONE_LINE)
        config = uvicorn.Config(
            asgi_app(self.registry, self.dataplane, self.generators, settings),
            http=limited_protocol(
                settings.max_connections,
                settings.max_connections_per_client or max(1, settings.max_connections // 4),
                settings.header_timeout_s,
                settings.body_timeout_s,
            ),
            ws="websockets-sansio",
            ws_max_size=settings.max_request_bytes,
            lifespan="off",
            log_config=None,
            log_level=settings.log_level,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        )
        self._http = _Uvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[listener]))
        if self._grpc is not None:
            await self._grpc.start()
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise ConfigError(f"the HTTP server on {settings.host}:{self.http_port} stopped while starting")
            await asyncio.sleep(0.002)
        if settings.poll_interval_s:
            self._poll_task = self.registry.watch(settings.poll_interval_s)
        # a few looks a second at every connection's header and body deadlines
        interval_s = min(0.25, settings.header_timeout_s / 4, settings.body_timeout_s / 4)
        self._deadlines = asyncio.create_task(enforce_deadlines(self._http.server_state.connections, interval_s))
        _tune_garbage_collection()

    async def wait(self, stop: asyncio.Event) -> None:
        """Until `stop` is set (or the HTTP server ends by itself)."""
        assert self._http_task is not None, "start() first"
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({stopping, self._http_task}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()

    async def stop(self) -> None:
        """Graceful: no new connections or RPCs, requests already sent finish, every queue drains."""
        if self._poll_task is not None:
            self._poll_task.cancel()
        if self._deadlines is not None:
            self._deadlines.cancel()
        grace = self.settings.shutdown_grace_s
        grpc_stopped = asyncio.create_task(self._grpc.stop(grace)) if self._grpc is not None else None
        if self._http is not None and self._http_task is not None:
            for listener in self._http.servers:
                listener.close()
            await asyncio.sleep(SETTLE_S)
            self._http.should_exit = True
            await self._http_task
        if grpc_stopped is not None:
            await grpc_stopped
        await asyncio.to_thread(self.generators.close)  # each waits for its decode step in progress
        await self.registry.close()

    def describe(self) -> str:
        settings = self.settings
        lines = [f"forwardpass serving {settings.repository}"]
        lines.append(
            f"  HTTP  http://{_url_host(settings.host)}:{self.http_port}  (KServe V2, TF Serving /v1, /metrics)"
        )
        lines.append("        decoders: /v2/models/<model>/generate[_stream] (streamed as SSE)")
        lines.append("        OpenAI: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models")
        lines.append(f"  page  http://{_url_host(settings.host)}:{self.http_port}/  (try the models; API at /docs)")
        lines.append(
            f"  WS    ws://{_url_host(settings.host)}:{self.http_port}/v2/models/<model>/stream  (V2 JSON streams)"
        )
        if self._grpc is not None:
            lines.append(f"  gRPC  {_url_host(settings.host)}:{settings.grpc_port}  (inference.GRPCInferenceService)")
        index = self.registry.index()
        ready: dict[str, list[str]] = {}
        for row in index:
            if row["state"] == "READY":
                ready.setdefault(row["name"], []).append(row["version"])
        listed = ", ".join(f"{name} (v{', v'.join(versions)})" for name, versions in ready.items()) or "none"
        lines.append(f"  ready: {listed}")
        lines.extend(f"  not loaded: {row['name']}: {row['reason']}" for row in index if row["state"] != "READY")
        return "\n".join(lines)


def asgi_app(
    registry: ModelRegistry, dataplane: DataPlane, generators: Generators, settings: ServerSettings
) -> ASGIApp:
    """Every HTTP and WebSocket route, behind one request guard (body reader, admission, error guard); `serve` and
    `serve --ray` both serve this."""
    guard = RequestGuard(settings, dataplane.metrics)
    return create_app(route_table(registry, dataplane, generators, guard), guard)


def route_table(
    registry: ModelRegistry, dataplane: DataPlane, generators: Generators, guard: RequestGuard
) -> list[BaseRoute]:
    """Every route the server answers, in one list: the app's router serves it and /openapi.json describes it (it
    reads the router's routes). Each module declares its own routes (path, methods, handler), every HTTP handler
    wrapped by `guard`; the token check is `Access.check` for all of them: `http.BearerAuth` before any HTTP route
    outside `http.OPEN_PATHS`, the stream's own handshake for WebSockets."""
    return [
        *v2_routes(dataplane, guard),
        *openai_routes(registry, generators, dataplane, guard),
        *generation_routes(generators, guard),
        *ui_routes(registry, guard),
        *stream_routes(dataplane, guard),
    ]


def run_server(settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (blocking; the CLI's `forwardpass serve`)."""
    settings = settings.checked()
    configure_logging(settings)
    import uvloop  # imported on use: only the server needs it

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(settings))


async def _serve(settings: ServerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = InferenceServer(settings)
    await server.start()
    print(server.describe(), flush=True)
    await server.wait(stop)
    print("forwardpass: stopping (finishing requests in progress)", flush=True)
    await server.stop()


def configure_logging(settings: ServerSettings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.access_log:
        access = logging.getLogger("forwardpass.access")
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False


def _tune_garbage_collection() -> None:
    """Move every object alive after start-up (modules, models, sessions: ~80k) out of the collector's sight, and
    collect the youngest generation ten times less often.

    Requests leave a few survivors behind, so every few seconds the oldest generation fills and a full collection
    walks all of them: measured at 130 ms median (up to 210 ms) on a shared core at 32 concurrent requests -- the
    tiny MLP's p99 went from 122 ms to 30 ms, and its throughput up by half, with them frozen. No collection first:
    one takes 80-100 ms here, more than the whole start-up budget allows. Frozen objects are still freed by
    reference counting; only cycles among them outlive an unload.

    A young collection walks the objects of the requests in flight (~150 µs at 32 of them) whatever its threshold,
    and Python's default (700 allocations) ran one every ~3 requests: 4.1-4.7 µs of collector per request of the
    tiny MLP, 0.7-1.5 µs at 7,000 (perf_analyzer c=32, 2 rounds)."""
    gc.freeze()
    gc.set_threshold(7000, 10, 10)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(f"HTTP cannot listen on {host}:{port}: {exc.strerror}; choose another --http-port") from None


def _grpc_server(dataplane: DataPlane, settings: ServerSettings) -> GrpcServer:
    from forwardpass.server.grpc import create_grpc_server  # grpc takes ~0.1 s to import: only when asked for

    return create_grpc_server(dataplane, settings)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
