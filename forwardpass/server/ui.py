"""The page at `/` to try every served model from a browser, the API described at `/docs` and `/openapi.json`.

Plain HTML, CSS and JavaScript from `static/`: no build step, nothing loaded from another host. The page and its
files hold no data, so they load without a token (`PAGE_PATHS`); everything they show comes from the API through
the same guard and bearer check as any client's request; the page asks for the token when the server says 401.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from forwardpass.errors import NotFoundError
from forwardpass.server.codec import encode_json
from forwardpass.server.openapi import describe

if TYPE_CHECKING:
    from forwardpass.registry import ModelRegistry
    from forwardpass.server.guard import RequestGuard

__all__ = ["PAGE_PATHS", "ui_routes"]

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "index.html", "/docs": "docs.html"}
FILES = {"app.js": "text/javascript", "docs.js": "text/javascript", "style.css": "text/css"}
PAGE_PATHS = frozenset([*PAGES, *(f"/ui/{name}" for name in FILES)])
# The page runs only its own files: no inline script, no other host (a model's answer is shown as text, never HTML).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def ui_routes(registry: ModelRegistry, guard: RequestGuard) -> list[Route]:
    pages = {path: (STATIC / name).read_bytes() for path, name in PAGES.items()}
    files = {name: (STATIC / name).read_bytes() for name in FILES}

    async def page(request: Request) -> Response:
        return Response(pages[request.url.path], media_type="text/html", headers=HEADERS)

    async def file(request: Request) -> Response:
        name = request.path_params["file"]
        if name not in files:
            raise NotFoundError(f"no such file: /ui/{name}")
        return Response(files[name], media_type=FILES[name], headers=HEADERS)

    async def models(request: Request) -> Response:
        return Response(encode_json(_models(registry)), media_type="application/json")

    async def openapi(request: Request) -> Response:
        router: Router = request.scope["router"]  # the router answering: every route (app.route_table)
        open_paths = _open_paths()
        document = describe(
            router.routes, needs_token=lambda path: path not in open_paths and guard.access.guards(path)
        )
        return Response(encode_json(document), media_type="application/json")

    return [
        *(Route(path, guard.guarded(page), methods=["GET"]) for path in PAGES),
        Route("/ui/models", guard.guarded(models), methods=["GET"]),
        Route("/ui/{file}", guard.guarded(file), methods=["GET"]),
        Route("/openapi.json", guard.guarded(openapi), methods=["GET"]),
    ]


def _open_paths() -> frozenset[str]:
    from forwardpass.server.http import OPEN_PATHS  # http imports this module: read its table when asked

    return OPEN_PATHS


def _models(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Per ready model, what the page needs to build its form: the input kind, the columns of a record, the task."""
    described = []
    for name in dict.fromkeys(row["name"] for row in registry.index() if row["state"] == "READY"):
        served = registry.get(name)
        config = served.model.config
        kind = "generate" if config.generation is not None else getattr(config.preprocess, "kind", None) or "tensor"
        described.append(
            {
                "name": name,
                "version": served.version,
                "description": getattr(config, "description", None) or "",
                "input": kind,
                "task": getattr(config.postprocess, "kind", None) or "raw",
                "columns": [column.name for column in getattr(config.preprocess, "columns", None) or []],
                "field": getattr(config.preprocess, "field", None),
                "inputs": [spec.to_dict() for spec in served.inputs],
                "decision": config.decision is not None,
            }
        )
    return described
