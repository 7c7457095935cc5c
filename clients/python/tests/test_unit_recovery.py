"""Resume positions, since_* parameters, duplicate dropping and the summary, as
clients/js/src/recovery.ts."""

from __future__ import annotations

from typing import Any, Optional

from aether_hub import Message, Position, Recovery
from aether_hub.recovery import Positions, route_of


def msg(target: str, offset: Optional[int], epoch: Optional[str]) -> Message:
    raw: Any = {"msg_type": "msg", "target": target, "from_id": "x", "payload": {}, "offset": offset, "epoch": epoch}
    return Message.from_dict(raw)


def test_routes() -> None:
    assert [route_of(t) for t in ("direct", "group", "broadcast", "echo")] == ["client", "group", "broadcast", None]


def test_first_connect_asks_new() -> None:
    assert Positions().since_params() == [("since_client", "new"), ("since_group", "new"), ("since_broadcast", "new")]


def test_positions_and_duplicates() -> None:
    p = Positions()
    assert p.accept(msg("group", 1, "e1"))
    assert p.accept(msg("group", 2, "e1"))
    assert not p.accept(msg("group", 2, "e1"))  # a duplicate
    assert not p.accept(msg("group", 1, "e1"))
    assert p.accept(msg("group", 5, "e1"))  # a jump is no loss (own messages are not delivered)
    assert p.accept(msg("group", 1, "e2"))  # a new epoch
    assert p.accept(msg("direct", 7, "c1"))
    assert p.accept(msg("echo", None, None))  # not kept: never a duplicate
    assert p.accept(msg("group", None, None))
    assert p.get() == {"group": Position("e2", 1), "client": Position("c1", 7)}
    assert p.since_params() == [("since_client", "c1:7"), ("since_group", "e2:1"), ("since_broadcast", "new")]


def test_is_duplicate_then_record() -> None:
    p = Positions()
    m = msg("broadcast", 3, "b")
    assert not p.is_duplicate(m)
    assert not p.is_duplicate(m)  # checking records nothing
    p.record(m)
    assert p.is_duplicate(m)


def test_summary() -> None:
    p = Positions()
    p.accept(msg("group", 17, "g"))
    routes = p.apply_summary(
        {
            "client": {"recovered": True, "missed": 0, "epoch": "c", "offset": 0},
            "group": {"recovered": True, "missed": 2, "epoch": "g", "offset": 19},
            "broadcast": {"recovered": False, "missed": 0, "epoch": "b2", "offset": 40},
            "bogus": {},
        }
    )
    assert [(r.epoch, r.offset) for r in routes.values()] == [("c", 0), ("g", 19), ("b2", 40)]
    assert routes == {
        "client": Recovery("client", True, 0, "c", 0),
        "group": Recovery("group", True, 2, "g", 19),
        "broadcast": Recovery("broadcast", False, 0, "b2", 40),
    }
    assert p.get() == {"client": Position("c", 0), "group": Position("g", 19), "broadcast": Position("b2", 40)}
    # A summary never moves a position back within an epoch.
    p.accept(msg("group", 25, "g"))
    p.apply_summary({"group": {"recovered": True, "missed": 0, "epoch": "g", "offset": 20}})
    assert p.get()["group"] == Position("g", 25)


def test_history_off_asks_new() -> None:
    p = Positions()
    p.apply_summary({r: {"recovered": False, "missed": 0, "epoch": "", "offset": 0} for r in ("client", "group", "broadcast")})
    assert not p.has("group")
    assert p.since_params() == [("since_client", "new"), ("since_group", "new"), ("since_broadcast", "new")]


def test_malformed_summary_entries() -> None:
    p = Positions()
    routes = p.apply_summary({"group": {"recovered": "yes", "missed": "2", "epoch": 5, "offset": True}})
    assert routes["group"] == Recovery("group", False, 0, "", 0)
