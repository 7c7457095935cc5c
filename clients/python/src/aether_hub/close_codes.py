"""What the client does after a close code (docs/protocol.md section 6) or a refused upgrade's
HTTP status, as clients/js/src/closeCodes.ts, including the 4011 storm guard."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = [
    "SERVICE_RECONNECT_WINDOW",
    "CloseDecision",
    "ServiceReconnects",
    "decide_close",
    "decide_http_status",
]

#: The 4011 storm guard's window (seconds): a 4011 that comes less than this long after the
#: previous 4011 is "in a row" with it.
SERVICE_RECONNECT_WINDOW = 10.0


@dataclass(frozen=True)
class CloseDecision:
    """``action`` ``reconnect`` or ``stop``. For ``stop``, ``kind`` is the final kind
    (``hub_closed``, ``token``, ``disconnected_by_service``, ``refused``). For ``reconnect``:
    ``immediate`` (no backoff), ``min_delay`` (the delay is raised to it, seconds) and
    ``min_attempt`` (the backoff is computed with at least this attempt number)."""

    action: str
    kind: Optional[str] = None
    immediate: bool = False
    min_delay: Optional[float] = None
    min_attempt: Optional[int] = None


RECONNECT = CloseDecision("reconnect")


class ServiceReconnects:
    """Counts the 4011s ("asked to reconnect by the service") that come in a row: each less
    than ``window`` seconds after the previous one. The first of a row reconnects at once;
    the ones after it fall back to the jittered backoff (``decide_close``), so a hub that
    answers every connection with 4011 cannot make the client spin."""

    def __init__(self, window: float = SERVICE_RECONNECT_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._streak = 0
        self._last: Optional[float] = None

    def note(self, now: Optional[float] = None) -> int:
        """Records a 4011 at ``now`` (seconds, default the clock); returns how many 4011s in a
        row, this one included (1 = first)."""
        t = self._clock() if now is None else now
        in_row = self._last is not None and t - self._last < self._window
        self._streak = self._streak + 1 if in_row else 1
        self._last = t
        return self._streak


def decide_close(code: int, can_refresh_token: bool, in_a_row: int = 1) -> CloseDecision:
    """The close-code table. ``can_refresh_token``: a ``get_token`` callback is configured.
    ``in_a_row``: for 4011, how many 4011s in a row this one is (``ServiceReconnects.note``)."""
    if code in (1009, 4000, 4003):  # a frame over the limit, an invalid frame, policy
        return CloseDecision("stop", kind="hub_closed")
    if code == 4001:  # token expired or revoked
        return CloseDecision("reconnect", immediate=True) if can_refresh_token else CloseDecision("stop", kind="token")
    if code == 4010:  # disconnected by the service (POST /v3/disconnect, reconnect false): final
        return CloseDecision("stop", kind="disconnected_by_service")
    if code == 4011:  # asked to reconnect by the service: at once, unless it repeats
        if in_a_row <= 1:
            return CloseDecision("reconnect", immediate=True)
        return CloseDecision("reconnect", min_attempt=in_a_row - 1)
    if code == 4029:  # sent too fast
        return CloseDecision("reconnect", min_delay=1.0)
    return RECONNECT  # 1000, 1001, 1006, 4008, 4408 and anything else


def decide_http_status(status: int, can_refresh_token: bool, has_static_token: bool = False) -> CloseDecision:
    """A refused upgrade's HTTP status (section 1). 401: ``get_token`` again and retry with
    backoff; without ``get_token``, stop (``token`` when a static token was refused, else
    ``refused``). 400 and 403: stop (``refused``). 429, 503 and the rest: retry with backoff."""
    if status == 401:
        if can_refresh_token:
            return RECONNECT
        return CloseDecision("stop", kind="token" if has_static_token else "refused")
    if status in (400, 403):
        return CloseDecision("stop", kind="refused")
    return RECONNECT
