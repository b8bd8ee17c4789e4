"""The forwardpass error tree: the only place where errors map to HTTP statuses, gRPC codes and exit codes.

    ForwardpassError                  500 INTERNAL            (never raised for bad input)
    ├── InputError                    400 INVALID_ARGUMENT    bad input from the caller
    │   ├── ShapeError                    tensor shape does not match the model's
    │   ├── DTypeError                    tensor dtype does not match (or cannot be cast safely)
    │   ├── NonFiniteError                NaN/inf where the model's config forbids them
    │   ├── DecodeError                   a file cannot be decoded (corrupt image, text given for an image)
    │   ├── MissingFieldError             a record lacks a declared column
    │   ├── SchemaError                   a record breaks the model's input schema (names the field and the rule)
    │   ├── MethodNotAllowed          405                     an HTTP path asked with a method it does not take
    │   ├── AnswerTooLarge            400 RESOURCE_EXHAUSTED  a request whose answer is over the server's size limit
    │   └── PayloadTooLarge           413 RESOURCE_EXHAUSTED  a request body over the server's size limit
    ├── NotFoundError                 404 NOT_FOUND           unknown model, version or file
    ├── AuditError                    500 INTERNAL            a decision could not be written to the audit log
    ├── ConfigError                   400 INVALID_ARGUMENT    a model's config does not validate
    ├── UnsafePathError               400 INVALID_ARGUMENT    a name or path tries to leave its root
    ├── MissingExtraError             501 UNIMPLEMENTED       an optional dependency is not installed
    ├── Unauthenticated               401 UNAUTHENTICATED     a bearer token is missing or wrong
    ├── Overloaded                    503 RESOURCE_EXHAUSTED  a model's queue is full; retry after `retry_after_s`
    │   └── ClientQuotaExceeded       429 RESOURCE_EXHAUSTED  this client holds its share already (open sequences)
    ├── DeadlineExceeded              503 DEADLINE_EXCEEDED   a request waited longer than its timeout
    └── Unavailable                   503 UNAVAILABLE         a client cannot reach the server

Every message is one line that names the problem and, where there is one, the fix.

Clients turn a server's status back into a class with `error_for_status`: the most general class of that status,
since the status alone cannot tell a ShapeError from another InputError.
"""

from __future__ import annotations

import contextlib

__all__ = [
    "ERROR_CLASS_HEADER",
    "AnswerTooLarge",
    "AuditError",
    "ClientQuotaExceeded",
    "ConfigError",
    "DTypeError",
    "DeadlineExceeded",
    "DecodeError",
    "Forbidden",
    "ForwardpassError",
    "InputError",
    "MethodNotAllowed",
    "MissingExtraError",
    "MissingFieldError",
    "NonFiniteError",
    "NotFoundError",
    "Overloaded",
    "PayloadTooLarge",
    "RequestTimeout",
    "SchemaError",
    "ShapeError",
    "Unauthenticated",
    "Unavailable",
    "UnsafePathError",
    "error_for_status",
]


class ForwardpassError(Exception):
    """Base of every error forwardpass raises on purpose."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"
    exit_code: int = 1


class InputError(ForwardpassError):
    """The caller's input is wrong; retrying the same input fails the same way."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    exit_code = 2


class ShapeError(InputError):
    pass


class DTypeError(InputError):
    pass


class NonFiniteError(InputError):
    pass


class DecodeError(InputError):
    pass


class MissingFieldError(InputError):
    pass


class SchemaError(InputError):
    pass


class MethodNotAllowed(InputError):
    """A known HTTP path asked with a method it does not take (GET on infer); the answer's Allow header lists those it
    takes."""

    http_status = 405


class AnswerTooLarge(InputError):
    """The request is valid, but its answer would be larger than the server sends: the client asked for it (fewer
    rows or outputs fit), so a 400, with gRPC's own code for a message over its size limit."""

    grpc_code = "RESOURCE_EXHAUSTED"


class PayloadTooLarge(InputError):
    """gRPC's own code for an oversized message is RESOURCE_EXHAUSTED; the same here keeps both transports alike."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class RequestTimeout(InputError):
    """The client did not send its whole request body in time (HTTP 408)."""

    http_status = 408


class AuditError(ForwardpassError):
    """The decision was made but not recorded: it is withheld, since every answered decision must be audited."""


class NotFoundError(ForwardpassError):
    http_status = 404
    grpc_code = "NOT_FOUND"
    exit_code = 2


class ConfigError(ForwardpassError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    exit_code = 2


class UnsafePathError(ForwardpassError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    exit_code = 2


class MissingExtraError(ForwardpassError):
    """An optional framework is needed; the message carries the one-line install command."""

    http_status = 501
    grpc_code = "UNIMPLEMENTED"
    exit_code = 2

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed: pip install 'forwardpass[{extra}]'")


class Unauthenticated(ForwardpassError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"
    exit_code = 2


class Forbidden(ForwardpassError):
    """This request is not allowed here, whatever its credentials; the message says where it is."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"
    exit_code = 2


class Overloaded(ForwardpassError):
    """Refused at the door instead of queued without bound; the same request may succeed after `retry_after_s`."""

    http_status = 503
    grpc_code = "RESOURCE_EXHAUSTED"
    exit_code = 3
    retry_after_s = 1


class ClientQuotaExceeded(Overloaded):
    """The server has room, but not for more of this client's: others keep their share (HTTP 429)."""

    http_status = 429


class DeadlineExceeded(ForwardpassError):
    http_status = 503
    grpc_code = "DEADLINE_EXCEEDED"
    exit_code = 3
    retry_after_s = 1


class Unavailable(ForwardpassError):
    """Raised by clients: no connection to the server, or it went away mid-request."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    exit_code = 3


_BY_HTTP_STATUS: dict[int, type[ForwardpassError]] = {
    400: InputError,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFoundError,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: PayloadTooLarge,
    429: ClientQuotaExceeded,
    503: Overloaded,
}
_BY_GRPC_CODE: dict[str, type[ForwardpassError]] = {
    "INVALID_ARGUMENT": InputError,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": Forbidden,
    "NOT_FOUND": NotFoundError,
    "RESOURCE_EXHAUSTED": Overloaded,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "UNAVAILABLE": Unavailable,
}


ERROR_CLASS_HEADER = "forwardpass-error"  # the HTTP header / gRPC trailing metadata naming the server's error class


def error_for_status(
    message: str, *, http_status: int | None = None, grpc_code: str | None = None, error_class: str | None = None
) -> ForwardpassError:
    """The error a client raises for a server's failed answer (an HTTP status or a gRPC code name) with its message.
    `error_class` (the server's ERROR_CLASS_HEADER) names the exact class when it is one of ours with that status;
    otherwise the most general class of the status, and a status no class here has (e.g. 409, UNIMPLEMENTED) gives a
    ForwardpassError naming it."""
    named = _named_class(error_class)
    if named is not None and (named.http_status == http_status or named.grpc_code == grpc_code):
        with contextlib.suppress(TypeError):  # a class whose constructor takes more than the message
            return named(message)
    found = _BY_HTTP_STATUS.get(http_status) if http_status is not None else _BY_GRPC_CODE.get(grpc_code or "")
    if found is not None:
        return found(message)
    status = f"HTTP {http_status}" if http_status is not None else f"gRPC {grpc_code}"
    return ForwardpassError(f"{status}: {message}")


def _named_class(name: str | None) -> type[ForwardpassError] | None:
    """Only classes of this module: a server's header never picks an arbitrary Python class."""
    found = globals().get(name) if name else None
    return found if isinstance(found, type) and issubclass(found, ForwardpassError) else None
