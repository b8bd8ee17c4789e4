"""The error guard's answer on its own: what every HTTP route, V2 infer's raw ASGI endpoint included, sends for a
failure (the routes' own tests cover each refusal end to end)."""

from __future__ import annotations

import logging

import orjson
import pytest

from forwardpass.errors import Overloaded
from forwardpass.server.guard import answer_to

SCOPE = {"type": "http", "method": "POST", "path": "/v2/models/m/infer"}


def test_a_forwardpass_error_is_answered_with_its_status_in_one_json_line() -> None:
    response = answer_to(Overloaded("the server has 2 requests in progress, its limit;\nretry later"), SCOPE)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert orjson.loads(response.body) == {"error": "the server has 2 requests in progress, its limit;\\nretry later"}


def test_any_other_error_is_logged_with_its_traceback_and_answered_500(caplog: pytest.LogCaptureFixture) -> None:
    try:
        int("not a number")
    except ValueError as bug:
        response = answer_to(bug, SCOPE)
    assert response.status_code == 500
    assert orjson.loads(response.body) == {"error": "internal server error (logged)"}
    [record] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert record.getMessage() == "unexpected error answering POST /v2/models/m/infer"
    assert record.exc_info is not None and record.exc_info[0] is ValueError
