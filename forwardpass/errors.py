"""The forwardpass error tree: the only place where errors map to HTTP statuses, gRPC codes and exit codes.

    ForwardpassError                  500 INTERNAL            (never raised for bad input)
    ├── InputError                    400 INVALID_ARGUMENT    bad input from the caller
    │   ├── ShapeError                    tensor shape does not match the model's
    │   ├── DTypeError                    tensor dtype does not match (or cannot be cast safely)
    │   ├── NonFiniteError                NaN/inf where the model's config forbids them
    │   ├── DecodeError                   a file cannot be decoded (corrupt image, text given for an image)
    │   └── MissingFieldError             a record lacks a declared column
    ├── NotFoundError                 404 NOT_FOUND           unknown model, version or file
    ├── ConfigError                   400 INVALID_ARGUMENT    a model's config does not validate
    ├── UnsafePathError               400 INVALID_ARGUMENT    a name or path tries to leave its root
    └── MissingExtraError             501 UNIMPLEMENTED       an optional dependency is not installed

Every message is one line that names the problem and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DTypeError",
    "DecodeError",
    "ForwardpassError",
    "InputError",
    "MissingExtraError",
    "MissingFieldError",
    "NonFiniteError",
    "NotFoundError",
    "ShapeError",
    "UnsafePathError",
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
