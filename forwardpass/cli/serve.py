"""`forwardpass serve`: the real-time server (KServe V2 over HTTP and gRPC, TF Serving REST, pipeline endpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from forwardpass.cli.common import REPOSITORY, TRUST_PICKLE
from forwardpass.errors import ConfigError

__all__ = ["register"]


def serve_command(
    repository: Path | None = REPOSITORY,
    http_port: int | None = typer.Option(
        None,
        "--http-port",
        help="HTTP port; 0 picks a free one (env FORWARDPASS_HTTP_PORT, default 8000).",
        show_default=False,
    ),
    grpc_port: int | None = typer.Option(
        None,
        "--grpc-port",
        help="gRPC port; 0 turns gRPC off (env FORWARDPASS_GRPC_PORT, default 8001).",
        show_default=False,
    ),
    host: str | None = typer.Option(
        None, "--host", help="Address to listen on (env FORWARDPASS_HOST, default 127.0.0.1).", show_default=False
    ),
    auth_token_file: Path | None = typer.Option(
        None,
        "--auth-token-file",
        help="Require 'Authorization: Bearer <the token in this file>' on every call but health checks "
        "(or env FORWARDPASS_AUTH_TOKEN; never on the command line, where `ps` shows it).",
        show_default=False,
    ),
    admin_token_file: Path | None = typer.Option(
        None,
        "--admin-token-file",
        help="Require 'Authorization: Bearer <the token in this file>' on the repository API (index, load, unload); "
        "the auth token is refused there (or env FORWARDPASS_ADMIN_TOKEN). Without it, on a non-loopback --host "
        "the repository API is off unless --allow-unauthenticated.",
        show_default=False,
    ),
    allow_unauthenticated: bool | None = typer.Option(
        None,
        "--allow-unauthenticated",
        help="Listen on a non-loopback --host without an auth token, and open the repository API there without an "
        "admin token (a trusted network only).",
        show_default=False,
    ),
    explain: bool | None = typer.Option(
        None,
        "--explain",
        help="Answer ?explain=true on /predict: seconds of CPU each, one at a time (env FORWARDPASS_EXPLAIN).",
        show_default=False,
    ),
    poll_interval: float | None = typer.Option(
        None,
        "--poll-interval",
        help="Seconds between looks for new or changed models; 0 never (env FORWARDPASS_POLL_INTERVAL_S).",
        show_default=False,
    ),
    request_timeout: float | None = typer.Option(
        None,
        "--request-timeout",
        help="Seconds a request may take (env FORWARDPASS_REQUEST_TIMEOUT_S, default 30).",
        show_default=False,
    ),
    max_request_bytes: int | None = typer.Option(
        None,
        "--max-request-bytes",
        help="Largest request body (env FORWARDPASS_MAX_REQUEST_BYTES, default 64 MiB).",
        show_default=False,
    ),
    trust_pickle: bool = TRUST_PICKLE,
    access_log: bool | None = typer.Option(
        None,
        "--access-log/--no-access-log",
        help="One JSON line per request on stderr (env FORWARDPASS_ACCESS_LOG).",
        show_default=False,
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Serve HTTP through Ray Serve replicas (no gRPC, and Ray's proxy holds the connections: no header or "
        "body deadlines or connection cap; needs forwardpass\\[ray]).",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="With --ray: join the Ray cluster at this address.", show_default=False
    ),
    replicas: int = typer.Option(1, "--replicas", help="With --ray: replicas, each serving every model."),
    max_replicas: int | None = typer.Option(
        None, "--max-replicas", help="With --ray: autoscale from --replicas up to this many.", show_default=False
    ),
) -> None:
    """Serve every model of a repository until SIGTERM or Ctrl-C (then finish requests in progress and exit 0).

    Examples:

      forwardpass serve

      forwardpass serve --repository /srv/models --http-port 8080 --grpc-port 0

      forwardpass serve --host 0.0.0.0 --auth-token-file /run/secrets/forwardpass-token

      forwardpass serve --host 0.0.0.0 --auth-token-file /run/secrets/token --admin-token-file /run/secrets/admin

      forwardpass serve --ray --replicas 2 --max-replicas 8
    """
    from forwardpass.server.app import run_server  # the server's imports only when serving
    from forwardpass.server.settings import ServerSettings

    options: dict[str, Any] = {
        "repository": repository,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "host": host,
        "auth_token_file": auth_token_file,
        "admin_token_file": admin_token_file,
        "allow_unauthenticated": allow_unauthenticated,
        "explain": explain,
        "poll_interval_s": poll_interval,
        "request_timeout_s": request_timeout,
        "max_request_bytes": max_request_bytes,
        "access_log": access_log,
        "trust_pickle": trust_pickle,
    }
    settings = ServerSettings.from_options(options)
    if ray or ray_address:
        from forwardpass.modes.ray_serve import serve_on_ray  # Ray only when asked for

        if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
            raise ConfigError(f"--replicas must be at least 1 and --max-replicas at least --replicas ({replicas})")

        serve_on_ray(settings, address=ray_address, replicas=replicas, max_replicas=max_replicas)
    else:
        run_server(settings)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
