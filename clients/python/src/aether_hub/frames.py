"""V3 frames (docs/protocol.md section 2): Vision IDs, building and validating a client's
``msg``/``cmd`` frame, control frames, and reading what the hub delivers.

Validation mirrors the TypeScript client (clients/js/src/frames.ts): a frame the hub would
close the socket for (4000, 1009) raises :class:`FrameError` and nothing is sent.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

from .errors import FrameError, FrameTooLarge

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_DEPTH",
    "Message",
    "Target",
    "build_frame",
    "control_frame",
    "is_vision_id",
    "parse_delivery",
]

Target = Literal["direct", "group", "broadcast", "echo"]
TARGETS = ("direct", "group", "broadcast", "echo")

DEFAULT_MAX_MESSAGE_BYTES = 65536
#: Nesting the hub reads in a payload (its JSON reader stops at 128 levels, the frame's own included).
MAX_DEPTH = 120

_VISION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
# A UTF-16 surrogate without its pair. Python strings hold code points, so a surrogate can
# only be there as a lone code point or as a (high, low) pair, as in a JavaScript string.
_LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")
_ANY_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_SURROGATE_REASON = "holds a lone UTF-16 surrogate (half of a character), which the hub refuses"


def is_vision_id(value: object) -> bool:
    """A Vision ID (``id_random``): 1 to 64 characters of ``[A-Za-z0-9_-]``."""
    return isinstance(value, str) and _VISION_ID.fullmatch(value) is not None


def _has_lone_surrogate(text: str) -> bool:
    return _ANY_SURROGATE.search(text) is not None and _LONE_SURROGATE.search(text) is not None


def _check_strict(payload: object) -> None:
    """What ``json.dumps`` writes (or fails on) that the hub refuses with 4000 (section 2, read
    strictly): a lone surrogate in a string or key, nesting past the hub's limit, a number
    beyond a 64-bit float, NaN or infinity (not JSON), a key that is not a string, a value of
    a type JSON has no place for. Iterative, so a cycle ends at the depth limit."""
    stack: List[Tuple[object, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str):
            if _has_lone_surrogate(value):
                raise FrameError(f"a payload string {_LONE_SURROGATE_REASON}")
        elif isinstance(value, int):
            try:
                float(value)
            except OverflowError:
                raise FrameError("a payload number is beyond a 64-bit float, which the hub refuses") from None
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise FrameError(f"a payload number is {value!r}, which JSON cannot carry")
        elif isinstance(value, dict):
            if depth > MAX_DEPTH:
                raise FrameError(f"payload nests deeper than {MAX_DEPTH} levels")
            for key, child in value.items():
                if not isinstance(key, str):
                    raise FrameError(f"a payload key is {type(key).__name__} {key!r}, not a string")
                if _has_lone_surrogate(key):
                    raise FrameError(f"a payload key {_LONE_SURROGATE_REASON}")
                stack.append((child, depth + 1))
        elif isinstance(value, (list, tuple)):
            if depth > MAX_DEPTH:
                raise FrameError(f"payload nests deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in value)
        else:
            raise FrameError(f"payload holds a {type(value).__name__}, which JSON cannot carry")


def _sent_at_text(sent_at: Union[str, datetime]) -> str:
    if isinstance(sent_at, datetime):
        if sent_at.tzinfo is None or sent_at.utcoffset() is None:
            raise FrameError("sent_at must be a timezone-aware datetime (or an RFC 3339 string)")
        return sent_at.isoformat()
    if not isinstance(sent_at, str) or _RFC3339.fullmatch(sent_at) is None:
        raise FrameError(f"sent_at must be an RFC 3339 date-time, got {sent_at!r}")
    return sent_at


def _dumps(frame: Mapping[str, object]) -> str:
    text = json.dumps(frame, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if _ANY_SURROGATE.search(text) is not None:
        # Only whole (high, low) pairs get here: join each into its character so the text
        # encodes as UTF-8 (the pair is what a JavaScript string would hold).
        text = text.encode("utf-16", "surrogatepass").decode("utf-16")
    return text


def build_frame(
    *,
    client: str,
    group: str,
    target: Target,
    to: Optional[str] = None,
    cmd: Optional[str] = None,
    msg: Optional[str] = None,
    payload: Optional[Mapping[str, Any]] = None,
    sent_at: Union[str, datetime, None] = None,
    ack_id: Optional[str] = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> str:
    """Builds the JSON text of a ``msg`` (``msg`` given) or ``cmd`` (``cmd`` given) frame, asking
    for an acknowledgement when ``ack_id`` is given, and validates it.

    Exactly one of ``cmd`` and ``msg``. Raises :class:`FrameError` (or :class:`FrameTooLarge`)
    instead of producing a frame the hub would close the socket for.
    """
    if target not in TARGETS:
        raise FrameError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "direct" and not is_vision_id(to):
        raise FrameError(f"to must be a Vision ID (1-64 characters of A-Z a-z 0-9 _ -), got {to!r}")
    if (cmd is None) == (msg is None):
        raise FrameError("give exactly one of cmd and msg")
    for name, value in (("cmd", cmd), ("msg", msg)):
        if value is not None:
            if not isinstance(value, str):
                raise FrameError(f"{name} must be a string, got {type(value).__name__}")
            if _has_lone_surrogate(value):
                raise FrameError(f"{name} {_LONE_SURROGATE_REASON}")
    body: Mapping[str, Any] = {} if payload is None else payload
    if not isinstance(body, dict):
        raise FrameError(f"payload must be a JSON object (a dict), got {type(body).__name__}")
    _check_strict(body)
    frame: Dict[str, object] = {
        "version": "3",
        "msg_type": "cmd" if cmd is not None else "msg",
        "target": target,
        "from_id": client,
        "to_id": to if target == "direct" else None,
        "group_id": group if target == "group" else None,
        "cmd": cmd,
        "msg": msg,
        "payload": body,
    }
    if sent_at is not None:
        frame["sent_at"] = _sent_at_text(sent_at)
    if ack_id is not None:
        frame["ack_id"] = ack_id
    try:
        text = _dumps(frame)
    except (TypeError, ValueError, RecursionError) as err:
        raise FrameError(f"payload cannot be serialised to JSON: {err}") from None
    size = len(text.encode("utf-8"))
    if size > max_message_bytes:
        raise FrameTooLarge(f"the frame is {size} bytes, over the limit of {max_message_bytes}")
    return text


def control_frame(msg_type: Literal["heartbeat", "presence"], client: str) -> str:
    """A frame the client sends for itself: a heartbeat or a presence query."""
    return json.dumps(
        {"version": "3", "msg_type": msg_type, "target": "echo", "from_id": client, "payload": {}},
        separators=(",", ":"),
    )


def parse_delivery(data: Union[str, bytes]) -> Optional[Dict[str, Any]]:
    """Parses a delivery; ``None`` for anything that is not a V3 message object. A missing or
    non-object ``payload`` reads as ``{}``."""
    if not isinstance(data, str):
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    if not isinstance(value.get("msg_type"), str) or not isinstance(value.get("target"), str):
        return None
    if not isinstance(value.get("payload"), dict):
        value["payload"] = {}
    return value


def _opt_str(value: object) -> Optional[str]:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Message:
    """A ``msg`` or ``cmd`` the hub delivered (section 2, with section 9's ``offset``/``epoch``
    when it was kept in history). ``raw`` is the whole delivered object."""

    msg_type: str
    target: str
    from_id: str
    group_id: Optional[str]
    to_id: Optional[str]
    cmd: Optional[str]
    msg: Optional[str]
    payload: Dict[str, Any]
    offset: Optional[int]
    epoch: Optional[str]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def sent_at(self) -> Optional[str]:
        """The RFC 3339 time the sender wrote, or the hub's when it wrote none."""
        return _opt_str(self.raw.get("sent_at"))

    @property
    def route(self) -> Optional[str]:
        """The history route the message belongs to: ``client``, ``group`` or ``broadcast``."""
        return {"direct": "client", "group": "group", "broadcast": "broadcast"}.get(self.target)

    @classmethod
    def from_dict(cls, raw: Dict[str, Any]) -> Message:
        offset = raw.get("offset")
        payload = raw.get("payload")
        return cls(
            msg_type=str(raw.get("msg_type")),
            target=str(raw.get("target")),
            from_id=str(raw.get("from_id", "")),
            group_id=_opt_str(raw.get("group_id")),
            to_id=_opt_str(raw.get("to_id")),
            cmd=_opt_str(raw.get("cmd")),
            msg=_opt_str(raw.get("msg")),
            payload=payload if isinstance(payload, dict) else {},
            offset=offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
            epoch=_opt_str(raw.get("epoch")),
            raw=raw,
        )
