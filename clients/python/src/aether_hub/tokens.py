"""Identity tokens (docs/protocol.md section 8) as the client needs them: the subprotocols
that carry one, and when to fetch the next before the hub closes the socket at expiry.

The client never verifies a token (the hub does); it only reads ``exp`` and ``iat`` from the
JWT's claims to time the refresh."""

from __future__ import annotations

import base64
import json
import math
from typing import List, Optional, Tuple

__all__ = ["MIN_REFRESH_DELAY", "REFRESH_MARGIN_MAX", "refresh_delay", "subprotocols", "token_times"]

#: The refresh comes this long before ``exp`` at most (seconds) ...
REFRESH_MARGIN_MAX = 60.0
#: ... and at most this share of the token's lifetime before it.
REFRESH_MARGIN_SHARE = 0.2
#: A refresh due sooner than this after opening is not scheduled: the hub's 4001 (or the
#: next reconnect) fetches a new token instead, so a skewed clock cannot make it spin.
MIN_REFRESH_DELAY = 1.0


def subprotocols(token: Optional[str]) -> List[str]:
    """``aether.v3``, and ``aether.token.<JWT>`` when there is a token."""
    protocols = ["aether.v3"]
    if token:
        protocols.append("aether.token." + token)
    return protocols


def token_times(token: str) -> Tuple[Optional[float], Optional[float]]:
    """The ``exp`` and ``iat`` claims of a JWT (NumericDates), or None where absent or
    unreadable. Nothing is verified."""
    parts = token.split(".")
    if len(parts) != 3:
        return None, None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(raw)
    except (ValueError, TypeError):
        return None, None
    if not isinstance(claims, dict):
        return None, None

    def number(name: str) -> Optional[float]:
        v = claims.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
        return None

    return number("exp"), number("iat")


def refresh_delay(token: str, now: float, fetched_ago: float = 0.0) -> Optional[float]:
    """Seconds from now until the client should fetch a new token and move to a new socket,
    ahead of ``exp`` (the hub closes with 4001 past ``exp`` plus its leeway); None when the
    token has no ``exp`` or the refresh would be due within ``MIN_REFRESH_DELAY``.

    ``now``: the wall clock (``time.time()``). ``fetched_ago``: seconds since ``get_token``
    returned the token. With ``iat``, the time left is also estimated as if the token was
    fresh when fetched (``exp - iat - fetched_ago``), and the shorter estimate wins, so a
    device clock running late does not push the refresh past the hub's expiry."""
    exp, iat = token_times(token)
    if exp is None:
        return None
    left = exp - now
    lifetime = left
    if iat is not None and exp > iat:
        lifetime = exp - iat
        left = min(left, lifetime - fetched_ago)
    margin = min(REFRESH_MARGIN_MAX, REFRESH_MARGIN_SHARE * max(lifetime, 0.0))
    delay = left - margin
    return delay if delay >= MIN_REFRESH_DELAY else None
