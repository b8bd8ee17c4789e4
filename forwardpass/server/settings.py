"""Server settings: command-line options, else environment variables `FORWARDPASS_<FIELD>`, else these defaults."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forwardpass.errors import ConfigError
from forwardpass.repository import default_repository

__all__ = ["ServerSettings", "is_loopback"]


ENVIRONMENT_PREFIX = "FORWARDPASS_"


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    repository: Path = Field(default_factory=default_repository, description="model repository folder")
    host: str = Field(default="127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    http_port: int = Field(default=8000, ge=0, le=65535, description="0: any free port (printed at start)")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="0: no gRPC server")
    auth_token: str | None = Field(
        default=None, description="when set, every request but the health checks needs 'Authorization: Bearer <it>'"
    )
    auth_token_file: Path | None = Field(default=None, description="a file holding the auth token (not on argv)")
    admin_token: str | None = Field(
        default=None,
        description="when set, the repository API (index, load, unload) needs 'Authorization: Bearer <it>'; "
        "without it that API is off on a non-loopback address unless allow_unauthenticated",
    )
    admin_token_file: Path | None = Field(default=None, description="a file holding the admin token (not on argv)")
    allow_unauthenticated: bool = Field(
        default=False,
        description="listen on a non-loopback address without a token, the repository API open too "
        "(a trusted network only)",
    )
    max_request_bytes: int = Field(default=64 * 2**20, gt=0, description="larger request bodies are refused (413)")
    max_response_bytes: int = Field(
        default=256 * 2**20,
        gt=0,
        description="an answer whose outputs hold more bytes than this (as binary data carries them) is refused "
        "(400) before it is encoded",
    )
    max_concurrent_requests: int = Field(
        default=1024, gt=0, description="inference requests in progress at once; more are refused (503) unread"
    )
    request_timeout_s: float = Field(default=30.0, gt=0, description="a request still waiting after this fails (503)")
    body_timeout_s: float = Field(default=30.0, gt=0, description="a request body must arrive within this (408)")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a request's line and headers must arrive within this (408)"
    )
    max_connections: int = Field(
        default=2048, gt=0, description="HTTP connections open at once; more are refused (503)"
    )
    max_connections_per_client: int | None = Field(
        default=None,
        gt=0,
        description="HTTP connections one client (host) may have open at once, WebSockets included; more are refused "
        "(503); default a quarter of max_connections",
    )
    max_grpc_calls_per_client: int | None = Field(
        default=None,
        gt=0,
        description="gRPC calls one client (host) may have open at once, streams included; more are refused "
        "(RESOURCE_EXHAUSTED); default a quarter of max_concurrent_requests",
    )
    trust_pickle: bool = Field(
        default=False, description="let pickled models (scikit-learn, joblib) load: unpickling runs code from the file"
    )
    explain: bool = Field(
        default=False,
        description="answer ?explain=true on /predict (seconds of CPU and tens of MB each; one at a time)",
    )
    access_log: bool = Field(default=False, description="one JSON line per request on stderr")
    poll_interval_s: float = Field(default=0.0, ge=0, description="look for new/changed models this often; 0: never")
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        le=86_400,  # beyond what the event loop's clock holds (1e300 or inf ended SIGTERM in an OverflowError)
        description="on SIGTERM, how long in-flight requests may take (at most a day)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="warning", description="debug, info, warning, error"
    )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ServerSettings:
        """Settings from the command line's options (None: not given) and the environment; a value that does not
        validate is one ConfigError naming the option or the FORWARDPASS_ variable it came from."""
        given = {key: value for key, value in options.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            error = exc.errors()[0]
            if not error["loc"]:  # the environment's own check (_from_environment)
                raise ConfigError(str(error["ctx"]["error"])) from None
            field = str(error["loc"][0])
            source = f"server setting '{field}'" if field in given else environment_variable(field)
            raise ConfigError(f"{source}: {error['msg']} (got {error.get('input')!r})") from None

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, given: Any) -> Any:
        """FORWARDPASS_<FIELD> (any case) for each field the caller leaves out. (pydantic-settings did this, for
        ~50 ms of CPU at every server start: a tenth of the start-up.) An empty one is refused: read as a value it
        would serve the current folder (REPOSITORY) or no token at all (AUTH_TOKEN) where one was meant."""
        if not isinstance(given, dict):
            return given
        environment = {key.upper(): value for key, value in os.environ.items()}
        found = {name: environment.get(environment_variable(name)) for name in cls.model_fields if name not in given}
        for name, value in found.items():
            if value is not None and not value.strip():
                raise ValueError(f"{environment_variable(name)} is set but empty: unset it or give it a value")
        return {name: value for name, value in found.items() if value is not None} | given

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, level: Any) -> Any:
        return level.lower() if isinstance(level, str) else level

    def checked(self) -> ServerSettings:
        """These settings with the tokens read from their files; a non-loopback address without an auth token is
        refused unless `allow_unauthenticated` says the network is trusted (anyone reaching the port could
        otherwise run the models; the repository API has its own rule: `forwardpass.server.access`)."""
        update = {}
        for field, path in (("auth_token", self.auth_token_file), ("admin_token", self.admin_token_file)):
            if path is not None:
                update[field] = _token_from(path, field.replace("_", " "))
        settings = self.model_copy(update=update) if update else self
        if settings.admin_token and settings.admin_token == settings.auth_token:
            raise ConfigError("the admin token must differ from the auth token, or it would not guard anything more")
        if not settings.auth_token and not settings.allow_unauthenticated and not is_loopback(settings.host):
            raise ConfigError(
                f"refusing to listen on {settings.host} without an auth token: set FORWARDPASS_AUTH_TOKEN or "
                "--auth-token-file, or pass --allow-unauthenticated on a trusted network"
            )
        return settings


def environment_variable(field: str) -> str:
    return f"{ENVIRONMENT_PREFIX}{field.upper()}"


def _token_from(path: Path, what: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{what} file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"{what} file {path} is empty")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
