"""Server settings: command-line options, else environment variables `FORWARDPASS_<FIELD>`, else these defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from forwardpass.repository import default_repository

__all__ = ["ServerSettings"]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORWARDPASS_", frozen=True, extra="ignore")

    repository: Path = Field(default_factory=default_repository, description="model repository folder")
    host: str = Field(default="127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    http_port: int = Field(default=8000, ge=0, le=65535, description="0: any free port (printed at start)")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="0: no gRPC server")
    auth_token: str | None = Field(
        default=None, description="when set, every request but the health checks needs 'Authorization: Bearer <it>'"
    )
    max_request_bytes: int = Field(default=64 * 2**20, gt=0, description="larger request bodies are refused (413)")
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
    trust_pickle: bool = Field(
        default=False, description="let pickled models (scikit-learn, joblib) load: unpickling runs code from the file"
    )
    access_log: bool = Field(default=False, description="one JSON line per request on stderr")
    poll_interval_s: float = Field(default=0.0, ge=0, description="look for new/changed models this often; 0: never")
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="on SIGTERM, how long in-flight requests may take")
    log_level: str = Field(default="warning", description="debug, info, warning, error")
