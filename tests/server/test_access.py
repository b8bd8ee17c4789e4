"""Access: who may call the data plane and the repository API, checked without a server (the transports' own tests
send real requests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwardpass.errors import Forbidden, Unauthenticated
from forwardpass.server.access import Access
from forwardpass.server.settings import ServerSettings


@pytest.mark.parametrize("authorization", [None, b"Bearer wrong"])
def test_a_caller_without_the_token_is_unauthenticated_before_the_repository_api_is_said_to_be_off(
    tmp_path: Path, authorization: bytes | None
):
    """On 0.0.0.0 without an admin token the repository API is off; a caller without the auth token was told so
    (403, naming the missing admin token), not asked for a token (401)."""
    access = Access(ServerSettings(repository=tmp_path, host="0.0.0.0", auth_token="s3cret"))
    with pytest.raises(Unauthenticated):
        access.check(authorization, control=True)
    with pytest.raises(Forbidden, match=r"repository API is off on 0\.0\.0\.0"):
        access.check(b"Bearer s3cret", control=True)
    access.check(b"Bearer s3cret", control=False)
