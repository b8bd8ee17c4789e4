"""Who may call what, on every transport (HTTP, WebSocket, gRPC): one rule, checked here.

The data plane (inference, metadata, statistics) needs the auth token when one is set. The control plane (the
repository API: index, load, unload) changes what the server serves, so it has a token of its own:

    admin token set                 control plane: the admin token (the auth token is refused, 403)
    no admin token, loopback host   control plane: as the data plane (the auth token if one is set, else open)
    no admin token, other host      control plane: off (403), unless --allow-unauthenticated says the network is
                                    trusted; then as the data plane

The admin token also passes wherever the auth token does. Liveness and readiness probes carry no credentials and are
never checked (each transport lists its open paths).
"""

from __future__ import annotations

import hmac

from forwardpass.errors import Forbidden, Unauthenticated
from forwardpass.server.settings import ServerSettings, is_loopback

__all__ = ["CONTROL_PREFIX", "Access", "bearer_token_matches"]

CONTROL_PREFIX = "/v2/repository/"  # HTTP's control plane: index, load, unload


def bearer_token_matches(authorization: bytes, token: bytes) -> bool:
    """An `Authorization` value `Bearer <token>`; the scheme in any case (RFC 9110 makes schemes case-insensitive)."""
    scheme, _, given = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


class Access:
    def __init__(self, settings: ServerSettings) -> None:
        self._token = settings.auth_token.encode() if settings.auth_token else None
        self._admin = settings.admin_token.encode() if settings.admin_token else None
        self._control_off = (
            self._admin is None and not settings.allow_unauthenticated and not is_loopback(settings.host)
        )
        self._host = settings.host

    @property
    def open(self) -> bool:
        """Nothing is ever refused: transports may skip the check altogether."""
        return self._token is None and self._admin is None and not self._control_off

    def guards(self, path: str) -> bool:
        """Whether an HTTP path needs a bearer token (health checks aside: each transport lists its open paths)."""
        if path.startswith(CONTROL_PREFIX):
            return self._admin is not None or self._token is not None
        return self._token is not None

    def check(self, authorization: bytes | None, *, control: bool) -> None:
        """Raises Unauthenticated (401) for a missing or wrong token, Forbidden (403) for a token that is right but
        not enough (the auth token on the control plane) or for the control plane when it is off."""
        if control and self._admin is not None:
            if authorization is not None and bearer_token_matches(authorization, self._admin):
                return
            if authorization is not None and self._token and bearer_token_matches(authorization, self._token):
                raise Forbidden("the repository API needs the admin token, not the auth token")
            raise _unauthenticated(authorization, "the admin token")
        # who is asking comes first: a caller without the token learns nothing of how the server is set up
        if self._token is not None and not (
            authorization is not None
            and (
                bearer_token_matches(authorization, self._token)
                or (self._admin is not None and bearer_token_matches(authorization, self._admin))
            )
        ):
            raise _unauthenticated(authorization, "the token")
        if control and self._control_off:
            raise Forbidden(
                f"the repository API is off on {self._host} without an admin token: set FORWARDPASS_ADMIN_TOKEN or "
                "--admin-token-file, or start with --allow-unauthenticated on a trusted network"
            )


def _unauthenticated(authorization: bytes | None, which: str) -> Unauthenticated:
    problem = "missing" if authorization is None else "wrong"
    return Unauthenticated(
        f"{problem} bearer token: send 'Authorization: Bearer <{which}>' (gRPC: metadata 'authorization')"
    )
