"""Frame building and validation, case for case with the TypeScript client's unit tests
(clients/js/test/unit.test.ts, "frames"), plus what only Python can hand over."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Optional

import pytest

from aether_hub import FrameError, FrameTooLarge, Message, build_frame, is_vision_id
from aether_hub.frames import MAX_DEPTH, control_frame, parse_delivery

CTX: Dict[str, Any] = {"client": "me", "group": "g1", "max_message_bytes": 200}


def build(target: str = "group", to: Optional[str] = None, **body: Any) -> Dict[str, Any]:
    text = build_frame(**CTX, target=target, to=to, **body)  # type: ignore[arg-type]
    parsed: Dict[str, Any] = json.loads(text)
    return parsed


def test_vision_ids() -> None:
    assert is_vision_id("a")
    assert is_vision_id("A_z-9" * 12)
    assert not is_vision_id("x" * 65)
    assert not is_vision_id("")
    assert not is_vision_id("a b")
    assert not is_vision_id("a/b")
    assert not is_vision_id("é")
    assert not is_vision_id("a\n")
    assert not is_vision_id(3)
    assert not is_vision_id(None)


def test_builds_v3_frames() -> None:
    assert build("group", cmd="go", payload={"n": 1}) == {
        "version": "3",
        "msg_type": "cmd",
        "target": "group",
        "from_id": "me",
        "to_id": None,
        "group_id": "g1",
        "cmd": "go",
        "msg": None,
        "payload": {"n": 1},
    }
    assert build("direct", "w1", msg="hi", sent_at="2026-01-02T03:04:05Z") == {
        "version": "3",
        "msg_type": "msg",
        "target": "direct",
        "from_id": "me",
        "to_id": "w1",
        "group_id": None,
        "cmd": None,
        "msg": "hi",
        "payload": {},
        "sent_at": "2026-01-02T03:04:05Z",
    }
    assert build("echo", msg="x", ack_id="ab-1")["ack_id"] == "ab-1"
    assert "ack_id" not in build("echo", msg="x")
    assert build("broadcast", msg="x")["group_id"] is None


def test_sent_at_datetime() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert build(msg="x", sent_at=when)["sent_at"] == "2026-01-02T03:04:05+02:00"
    with pytest.raises(FrameError):
        build(msg="x", sent_at=datetime(2026, 1, 2))  # naive: no zone


def circular() -> Dict[str, Any]:
    p: Dict[str, Any] = {}
    p["p"] = p
    return p


def nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("target", "to", "body"),
    [
        pytest.param("direct", "a b", {"msg": "x"}, id="direct to a bad id"),
        pytest.param("direct", None, {"msg": "x"}, id="direct without to"),
        pytest.param("group", None, {"msg": "x", "payload": [1]}, id="payload array"),
        pytest.param("group", None, {"msg": "x", "payload": "hi"}, id="payload string"),
        pytest.param("group", None, {"msg": 3}, id="msg not a string"),
        pytest.param("group", None, {"cmd": b"go"}, id="cmd bytes"),
        pytest.param("group", None, {"msg": "x", "sent_at": "yesterday"}, id="bad sent_at"),
        pytest.param("group", None, {}, id="neither cmd nor msg"),
        pytest.param("group", None, {"cmd": "a", "msg": "b"}, id="both cmd and msg"),
        pytest.param("echo", None, {"msg": "x", "payload": circular()}, id="circular payload"),
        pytest.param("group", None, {"msg": "x", "payload": {"t": "\ud83d"}}, id="lone surrogate in payload"),
        pytest.param("group", None, {"msg": "x", "payload": {"a\ude00": 1}}, id="lone low surrogate in a key"),
        pytest.param("group", None, {"msg": "x\ud83d"}, id="lone surrogate in msg"),
        pytest.param("group", None, {"cmd": "\ude00x"}, id="lone low surrogate in cmd"),
        pytest.param("group", None, {"msg": "x", "payload": {"v": nested(130)}}, id="nesting past the hub's limit"),
        pytest.param("group", None, {"msg": "x", "payload": {"n": 10**400}}, id="integer beyond a 64-bit float"),
        pytest.param("group", None, {"msg": "x", "payload": {"n": float("inf")}}, id="infinity"),
        pytest.param("group", None, {"msg": "x", "payload": {"n": float("nan")}}, id="nan"),
        pytest.param("group", None, {"msg": "x", "payload": {1: "a"}}, id="non-string key"),
        pytest.param("group", None, {"msg": "x", "payload": {"s": {1, 2}}}, id="a set"),
        pytest.param("group", None, {"msg": "x", "payload": {"b": b"x"}}, id="bytes"),
        pytest.param("group", None, {"msg": "x", "payload": {"d": datetime.now()}}, id="a datetime"),
        pytest.param("bogus", None, {"msg": "x"}, id="unknown target"),
    ],
)
def test_rejects(target: str, to: Optional[str], body: Dict[str, Any]) -> None:
    with pytest.raises(FrameError) as info:
        build(target, to, **body)
    assert info.value.code == "invalid_message"
    assert isinstance(info.value, ValueError)


def test_rejects_payload_none_explicitly_as_empty() -> None:
    # payload=None means "no payload" ({}), as an absent payload in the TS client.
    assert build(msg="x", payload=None)["payload"] == {}


def test_size_limit_counts_utf8_bytes() -> None:
    with pytest.raises(FrameTooLarge) as info:
        build("echo", msg="é" * 80)
    assert info.value.code == "too_large"
    assert isinstance(info.value, FrameError)
    build("echo", msg="e" * 60)


def test_what_passes() -> None:
    big = dict(CTX, max_message_bytes=65536)
    # A whole pair (as JavaScript holds an emoji), a real emoji, a deep-but-allowed payload,
    # a 30-digit integer (the hub reads it as a float), tuples as arrays.
    for payload in (
        {"t": "\ud83d\ude00"},
        {"t": "😀"},
        {"v": nested(MAX_DEPTH - 1)},
        {"n": 123456789012345678901234567890},
        {"t": (1, 2)},
        {"f": 1.5e-7, "b": True, "z": None},
    ):
        text = build_frame(**big, target="group", msg="x", payload=payload)
        text.encode("utf-8")  # always valid UTF-8
    pair = build_frame(**big, target="group", msg="x", payload={"t": "\ud83d\ude00"})
    assert json.loads(pair)["payload"]["t"] == "😀"


def test_control_frames() -> None:
    assert json.loads(control_frame("heartbeat", "me")) == {"version": "3", "msg_type": "heartbeat", "target": "echo", "from_id": "me", "payload": {}}
    assert json.loads(control_frame("presence", "me"))["msg_type"] == "presence"


def test_parse_delivery() -> None:
    assert parse_delivery(b"{}") is None
    assert parse_delivery("not json") is None
    assert parse_delivery("[1]") is None
    assert parse_delivery('{"msg_type": "msg"}') is None
    got = parse_delivery('{"msg_type": "msg", "target": "group", "payload": null}')
    assert got is not None
    assert got["payload"] == {}
    m = Message.from_dict(
        json.loads(
            '{"version":"3","msg_type":"cmd","target":"group","from_id":"c","to_id":null,"group_id":"g","cmd":"go",'
            '"msg":null,"payload":{"job":1},"sent_at":"2026-01-01T00:00:00Z","offset":3,"epoch":"e1"}'
        )
    )
    assert (m.msg_type, m.cmd, m.payload, m.offset, m.epoch, m.route, m.sent_at) == ("cmd", "go", {"job": 1}, 3, "e1", "group", "2026-01-01T00:00:00Z")
