"""ServerSettings from the command line's options and FORWARDPASS_* variables: every bad value is one ConfigError
naming where it came from, never a traceback further in."""

from __future__ import annotations

import pytest

from forwardpass.errors import ConfigError
from forwardpass.server.settings import ServerSettings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FORWARDPASS_HTTP_PORT", "eighty"),
        ("FORWARDPASS_HTTP_PORT", "70000"),
        ("FORWARDPASS_EXPLAIN", "maybe"),
        ("forwardpass_request_timeout_s", "-1"),
        ("FORWARDPASS_POLL_INTERVAL_S", "nan"),
        ("FORWARDPASS_LOG_LEVEL", "loud"),  # was accepted, then logging's ValueError traceback at start
        ("FORWARDPASS_SHUTDOWN_GRACE_S", "inf"),  # was accepted, then SIGTERM ended in an OverflowError traceback
    ],
)
def test_a_bad_environment_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable.upper()) as refused:
        ServerSettings.from_options({})
    assert "\n" not in str(refused.value) and repr(value) in str(refused.value)


def test_a_bad_option_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDPASS_REQUEST_TIMEOUT_S", "5")
    with pytest.raises(ConfigError, match=r"^server setting 'request_timeout_s': .*greater than 0 \(got -2.0\)"):
        ServerSettings.from_options({"request_timeout_s": -2.0, "http_port": None})


@pytest.mark.parametrize("variable", ["FORWARDPASS_AUTH_TOKEN", "FORWARDPASS_REPOSITORY", "FORWARDPASS_HTTP_PORT"])
def test_an_empty_variable_is_refused(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """Read as a value, an empty AUTH_TOKEN served with no token and an empty REPOSITORY served the current folder."""
    monkeypatch.setenv(variable, " ")
    with pytest.raises(ConfigError, match=f"^{variable} is set but empty"):
        ServerSettings.from_options({})


def test_an_option_given_overrides_its_empty_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDPASS_HTTP_PORT", "")
    assert ServerSettings.from_options({"http_port": 9000}).http_port == 9000


def test_variables_are_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("forwardpass_log_level", "INFO")
    monkeypatch.setenv("Forwardpass_Max_Connections", "12")
    settings = ServerSettings.from_options({})
    assert (settings.log_level, settings.max_connections) == ("info", 12)
