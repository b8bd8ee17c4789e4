"""What the load generator sends: a server that does not answer, a URL of another scheme and a model the server
does not have are each one clear error before any load starts."""

from __future__ import annotations

import pytest

from forwardpass.errors import InputError, NotFoundError
from forwardpass.measure.payload import Target, model_inputs
from tests.measure.standin import StandIn, free_port


def test_a_url_that_does_not_answer_is_one_input_error() -> None:
    with pytest.raises(InputError, match="does not answer"):
        model_inputs(Target(f"http://127.0.0.1:{free_port()}", "m"))
    with pytest.raises(InputError, match="http://HOST:PORT"):
        model_inputs(Target("ftp://x:1", "m"))


def test_an_unknown_model_is_not_found(standin: StandIn) -> None:
    with pytest.raises(NotFoundError, match="no model 'other'"):
        model_inputs(Target(f"http://127.0.0.1:{standin.port}", "other"))
