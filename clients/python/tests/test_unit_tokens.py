"""Token subprotocols and the refresh timing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from aether_hub.tokens import refresh_delay, subprotocols, token_times


def jwt(**claims: Any) -> str:
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.sig"


def test_subprotocols() -> None:
    assert subprotocols(None) == ["aether.v3"]
    assert subprotocols("abc.def.ghi") == ["aether.v3", "aether.token.abc.def.ghi"]


def test_token_times() -> None:
    assert token_times(jwt(exp=100, iat=40)) == (100.0, 40.0)
    assert token_times(jwt(sub="x")) == (None, None)
    assert token_times("opaque") == (None, None)
    assert token_times("a.!!!.c") == (None, None)
    assert token_times(jwt(exp="soon")) == (None, None)


def test_refresh_delay() -> None:
    # One hour, just issued: refresh a minute before exp.
    assert refresh_delay(jwt(iat=1000, exp=4600), now=1000) == pytest.approx(3540)
    # Five minutes without iat: 20 % of what is left.
    assert refresh_delay(jwt(exp=1300), now=1000) == pytest.approx(240)
    # A device clock an hour late: iat says the token has 3600 s, not 7200.
    assert refresh_delay(jwt(iat=1000, exp=4600), now=-2600) == pytest.approx(3540)
    # Fetched 100 s ago.
    assert refresh_delay(jwt(iat=1000, exp=4600), now=1100, fetched_ago=100) == pytest.approx(3440)
    # Nothing to schedule: no exp, expired, or due within a second.
    assert refresh_delay(jwt(sub="x"), now=0) is None
    assert refresh_delay(jwt(exp=900), now=1000) is None
    assert refresh_delay(jwt(iat=1000, exp=1001), now=1000) is None
