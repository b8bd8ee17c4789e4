"""The thin floor's work (thin.py's V2Model: the same model step, the same routes) under other servers and interfaces,
to tell what the HTTP server costs from what the web framework costs:

- `--app starlette`: thin.py's Starlette app; `--app asgi`: a bare ASGI app (no framework); `--app rsgi`: a bare app on
  granian's own RSGI interface.
- `--server uvicorn` (uvloop, httptools, as thin.py runs); `--server granian`: granian, a Rust HTTP server, as its
  command line runs it (a supervising process and one worker process); `--server granian-embed`: granian's embedded
  server on this process's event loop (uvloop), as forwardpass would have to run it to keep its gRPC server, batcher
  and models in one process. granian runs one worker, one Rust runtime thread and one Python thread, so that
  everything the server does fits on the one core it is given.

Usage: python bench/peers/thin_servers.py MODEL.onnx --name NAME --port PORT --server SERVER --app APP
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes
from granian.log import LogLevels
from granian.server import Server
from granian.server.embed import Server as EmbeddedServer
from thin import HEADER_LENGTH, SERVER_METADATA, V2Model, create_app

# granian's worker process builds the app from these (it loads its target by name there)
MODEL_VARIABLE, NAME_VARIABLE, APP_VARIABLE = "THIN_SERVERS_MODEL", "THIN_SERVERS_NAME", "THIN_SERVERS_APP"
JSON = "application/json"
# One thread for Rust's runtime and one for Python callbacks: the server's work stays on the one core it is given.
GRANIAN_SETTINGS: dict[str, Any] = {
    "address": "127.0.0.1",
    "http": HTTPModes.http1,
    "runtime_threads": 1,
    "runtime_blocking_threads": 1,
    "blocking_threads": 1,
    "log_level": LogLevels.warning,
    "log_access": False,
    "backlog": 1024,
}


def routes(served: V2Model) -> tuple[str, dict[str, Callable[[], tuple[bytes, str | None]]]]:
    """The infer path, and the body and content type of every other GET path."""
    prefix = f"/v2/models/{served.name}"
    documents: dict[str, Callable[[], tuple[bytes, str | None]]] = {
        "/v2/health/ready": lambda: (b"", None),
        "/v2": lambda: (SERVER_METADATA, JSON),
        "/answered": lambda: (served.answered_document(), None),
        prefix: lambda: (served.metadata, JSON),
        f"{prefix}/config": lambda: (served.config, JSON),
    }
    return f"{prefix}/infer", documents


def create_asgi_app(model: str, name: str) -> Callable[..., Awaitable[None]]:
    served = V2Model(model, name)
    infer_path, documents = routes(served)
    header_length_key = HEADER_LENGTH.encode()

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["path"] == infer_path and scope["method"] == "POST":
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            header_length = next((v.decode() for k, v in scope["headers"] if k == header_length_key), None)
            answer, json_length = served.infer(body, header_length)
            extra = (
                (b"content-type", JSON.encode()) if json_length is None else (header_length_key, b"%d" % json_length)
            )
            status, headers = 200, [(b"content-length", b"%d" % len(answer)), extra]
        elif scope["path"] in documents:
            answer, content_type = documents[scope["path"]]()
            status, headers = 200, [(b"content-length", b"%d" % len(answer))]
            headers += [(b"content-type", content_type.encode())] if content_type else []
        else:
            status, answer, headers = 404, b"", [(b"content-length", b"0")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def create_rsgi_app(model: str, name: str) -> Callable[..., Awaitable[None]]:
    served = V2Model(model, name)
    infer_path, documents = routes(served)

    async def app(scope: Any, protocol: Any) -> None:
        if scope.path == infer_path and scope.method == "POST":
            answer, json_length = served.infer(await protocol(), scope.headers.get(HEADER_LENGTH))
            extra = ("content-type", JSON) if json_length is None else (HEADER_LENGTH, str(json_length))
            protocol.response_bytes(200, [extra], answer)
        elif scope.path in documents:
            answer, content_type = documents[scope.path]()
            protocol.response_bytes(200, [("content-type", content_type)] if content_type else [], answer)
        else:
            protocol.response_empty(404, [])

    return app


APPS = {"starlette": create_app, "asgi": create_asgi_app, "rsgi": create_rsgi_app}


def app_factory() -> Any:
    """granian's target in its worker process."""
    return APPS[os.environ[APP_VARIABLE]](os.environ[MODEL_VARIABLE], os.environ[NAME_VARIABLE])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", choices=["uvicorn", "granian", "granian-embed"], required=True)
    parser.add_argument("--app", choices=list(APPS), required=True)
    args = parser.parse_args()
    if args.server == "uvicorn":
        if args.app == "rsgi":
            parser.error("RSGI is granian's interface: --server uvicorn takes --app starlette or asgi")
        app = APPS[args.app](args.model, args.name)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="off")
        return
    # ASGI without lifespan: none of these apps has start-up or shutdown work
    interface = Interfaces.RSGI if args.app == "rsgi" else Interfaces.ASGINL
    if args.server == "granian-embed":
        embedded = EmbeddedServer(
            APPS[args.app](args.model, args.name), port=args.port, interface=interface, **GRANIAN_SETTINGS
        )
        uvloop.run(embedded.serve())
        return
    os.environ |= {MODEL_VARIABLE: args.model, NAME_VARIABLE: args.name, APP_VARIABLE: args.app}
    server = Server(
        "thin_servers:app_factory", port=args.port, interface=interface, factory=True, workers=1,
        runtime_mode=RuntimeModes.st, loop=Loops.uvloop, working_dir=Path(__file__).resolve().parent,
        **GRANIAN_SETTINGS,
    )  # fmt: skip
    server.serve()


if __name__ == "__main__":
    main()
