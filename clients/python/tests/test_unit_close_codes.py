"""The close-code table and the 4011 storm guard, as clients/js/src/closeCodes.ts."""

from __future__ import annotations

from aether_hub import CloseDecision, decide_close, decide_http_status
from aether_hub.close_codes import SERVICE_RECONNECT_WINDOW, ServiceReconnects


def test_the_table() -> None:
    for code in (1000, 1001, 1006, 4008, 4408, 1011, 3000):
        assert decide_close(code, False) == CloseDecision("reconnect")
    assert decide_close(4029, False) == CloseDecision("reconnect", min_delay=1.0)
    for code in (1009, 4000, 4003):
        assert decide_close(code, True) == CloseDecision("stop", kind="hub_closed")
    assert decide_close(4001, True) == CloseDecision("reconnect", immediate=True)
    assert decide_close(4001, False) == CloseDecision("stop", kind="token")


def test_4010_stops_for_good() -> None:
    for refresh in (True, False):
        assert decide_close(4010, refresh) == CloseDecision("stop", kind="disconnected_by_service")
        assert decide_close(4010, refresh, 5) == CloseDecision("stop", kind="disconnected_by_service")


def test_4011_at_once_then_backoff_growing_with_the_row() -> None:
    for refresh in (True, False):
        assert decide_close(4011, refresh) == CloseDecision("reconnect", immediate=True)
        assert decide_close(4011, refresh, 1) == CloseDecision("reconnect", immediate=True)
        assert decide_close(4011, refresh, 2) == CloseDecision("reconnect", min_attempt=1)
        assert decide_close(4011, refresh, 6) == CloseDecision("reconnect", min_attempt=5)
    assert decide_close(4001, True, 3) == CloseDecision("reconnect", immediate=True)
    assert decide_close(1006, False, 3) == CloseDecision("reconnect")


def test_storm_guard_counts_4011s_less_than_the_window_apart() -> None:
    assert SERVICE_RECONNECT_WINDOW == 10.0
    s = ServiceReconnects()
    assert s.note(100.0) == 1
    assert s.note(105.0) == 2
    assert s.note(114.9) == 3  # 9.9 s after the previous one
    assert s.note(124.9) == 1  # exactly the window: a new row
    assert s.note(125.0) == 2
    clock = iter([0.0, 1.0, 20.0])
    t = ServiceReconnects(clock=lambda: next(clock))
    assert [t.note(), t.note(), t.note()] == [1, 2, 1]


def test_refused_upgrades() -> None:
    assert decide_http_status(401, True) == CloseDecision("reconnect")
    assert decide_http_status(401, False) == CloseDecision("stop", kind="refused")
    assert decide_http_status(401, False, has_static_token=True) == CloseDecision("stop", kind="token")
    for status in (400, 403):
        assert decide_http_status(status, True) == CloseDecision("stop", kind="refused")
    for status in (429, 500, 502, 503):
        assert decide_http_status(status, False) == CloseDecision("reconnect")
