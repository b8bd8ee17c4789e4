"""/openapi.json describes every route the server has (its route table, walked here independently), validates as
OpenAPI 3.1, and marks what needs the bearer token; /docs shows it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route, Router, WebSocketRoute

from forwardpass.server.app import asgi_app


def _routers(app: Any) -> Iterator[Router]:
    """Every Router inside the ASGI app: through middleware's `.app` and the WebSocket split's closure."""
    seen: set[int] = set()
    todo = [app]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Router):
            yield node
        todo += [cell.cell_contents for cell in getattr(node, "__closure__", None) or ()]
        if hasattr(node, "app"):
            todo.append(node.app)


def _served_routes(running: Any) -> set[tuple[str, str]]:
    server = running.server
    app = asgi_app(server.registry, server.dataplane, server.generators, running.settings)
    routes = set()
    for router in _routers(app):
        for route in router.routes:
            if isinstance(route, Route):
                routes |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
            elif isinstance(route, WebSocketRoute):
                routes.add(("GET", route.path))
    return routes


def test_every_route_is_described_and_the_document_validates(server: Any) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    validate(document)
    routes = _served_routes(server)
    assert len(routes) > 30 and ("POST", "/v2/models/{model}/infer") in routes
    missing = sorted(f"{m} {p}" for m, p in routes if m.lower() not in document["paths"].get(p, {}))
    assert not missing, f"routes missing from /openapi.json: {missing}"
    undescribed = [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if operation["tags"] == ["Undescribed"]
    ]
    assert not undescribed, f"describe these in forwardpass/server/openapi.py DESCRIBED: {undescribed}"
    assert "securitySchemes" not in document["components"]  # no token on this server


@pytest.fixture(scope="module")
def guarded(kit: Any, repository: Any) -> Iterator[Any]:
    running = kit.serve(repository, auth_token="secret")
    yield running
    running.stop()


def test_with_a_token_the_document_needs_it_and_says_where(guarded: Any) -> None:
    assert httpx.get(f"{guarded.url}/openapi.json").status_code == 401
    document = httpx.get(f"{guarded.url}/openapi.json", headers={"Authorization": "Bearer secret"}).json()
    validate(document)
    infer = document["paths"]["/v2/models/{model}/infer"]["post"]
    assert infer["security"] == [{"bearer": []}] and "401" in infer["responses"]
    assert "security" not in document["paths"]["/v2/health/live"]["get"]
    for page in ("/", "/docs", "/ui/app.js", "/ui/style.css"):  # the page holds no data: it loads without a token
        answer = httpx.get(f"{guarded.url}{page}")
        assert answer.status_code == 200 and "default-src 'self'" in answer.headers["content-security-policy"]
    assert httpx.get(f"{guarded.url}/ui/models").status_code == 401
    assert httpx.get(f"{guarded.url}/ui/nothing.js", headers={"Authorization": "Bearer secret"}).status_code == 404


def test_with_an_admin_token_alone_only_the_repository_api_needs_a_token(kit: Any, repository: Any) -> None:
    running = kit.serve(repository, admin_token="admin-secret")
    try:
        document = httpx.get(f"{running.url}/openapi.json").json()
    finally:
        running.stop()
    validate(document)
    assert document["paths"]["/v2/repository/index"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in document["paths"]["/v2/models/{model}/infer"]["post"]
