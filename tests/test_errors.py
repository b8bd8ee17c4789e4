"""errors.error_for_status: a server's status back to the error class a client raises."""

from __future__ import annotations

import pytest

from forwardpass import errors
from forwardpass.errors import ForwardpassError, error_for_status


def test_each_status_a_server_sends_maps_back_to_a_class_with_that_status():
    classes = [getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)]
    for cls in classes:
        if cls.http_status in (500, 501):  # internal errors and missing extras: nothing a client can act on
            continue
        by_http = error_for_status("the message", http_status=cls.http_status)
        by_grpc = error_for_status("the message", grpc_code=cls.grpc_code)
        assert by_http.http_status == cls.http_status and str(by_http) == "the message", cls
        assert by_grpc.grpc_code == cls.grpc_code and str(by_grpc) == "the message", cls


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"http_status": 409}, "HTTP 409: the message"),
        ({"grpc_code": "UNIMPLEMENTED"}, "gRPC UNIMPLEMENTED: the message"),
    ],
)
def test_a_status_no_class_has_gives_the_base_error_naming_it(status: dict[str, object], expected: str):
    error = error_for_status("the message", **status)  # type: ignore[arg-type]
    assert type(error) is ForwardpassError and str(error) == expected


@pytest.mark.parametrize(
    ("error_class", "status", "expected"),
    [
        ("ShapeError", {"http_status": 400}, errors.ShapeError),
        ("DeadlineExceeded", {"http_status": 503}, errors.DeadlineExceeded),
        ("DeadlineExceeded", {"grpc_code": "DEADLINE_EXCEEDED"}, errors.DeadlineExceeded),
        ("ShapeError", {"http_status": 404}, errors.NotFoundError),  # a name that contradicts the status: ignored
        ("Path", {"http_status": 400}, errors.InputError),  # not one of ours: never instantiated
        ("MissingExtraError", {"http_status": 501}, ForwardpassError),  # needs more than a message: the base class
        (None, {"http_status": 400}, errors.InputError),
    ],
)
def test_the_servers_error_class_header_picks_the_exact_class_when_it_fits(
    error_class: str | None, status: dict[str, object], expected: type[ForwardpassError]
):
    error = error_for_status("the message", error_class=error_class, **status)  # type: ignore[arg-type]
    assert type(error) is expected and "the message" in str(error)
