"""Acknowledgements (docs/protocol.md section 10), as clients/js/src/acks.ts: the ack ids the
client puts on its sends, and the table of written sends waiting for their ack. Each settles
exactly once: from the hub's ``ack`` frame, when its connection is lost, or when no ack came
within the timeout."""

from __future__ import annotations

import asyncio
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from .errors import AckFailed

__all__ = ["Ack", "PendingAcks"]

_ALPHABET = string.digits + string.ascii_lowercase  # base 36


@dataclass(frozen=True)
class Ack:
    """What a send returns.

    ``status``: ``ok`` (published; ``offset``/``epoch`` when it was kept in history),
    ``unconfirmed`` (written, fate unknown: the hub said so, or the connection was lost or no
    ack came in time; it may or may not have been published and the client never sends it
    again by itself), ``sent`` (written, no ack asked: ``ack=False``; ``ack_id`` is then
    ``""``), or ``failed`` (only on :class:`~aether_hub.AckFailed`'s ``ack``).
    ``duplicate``: the hub recognised a resend of an ``ack_id`` it had published (section 10,
    safe resends). ``reason``: why it failed or is unconfirmed (the hub's reason, or
    ``disconnected``, ``closed``, ``timeout``). ``reason`` takes no part in comparisons."""

    ack_id: str
    status: str
    offset: Optional[int] = None
    epoch: Optional[str] = None
    duplicate: bool = False
    reason: Optional[str] = field(default=None, compare=False)


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _ALPHABET[r] + out
        if n == 0:
            return out


class _Pending:
    __slots__ = ("future", "owner", "timer")

    def __init__(self, future: asyncio.Future[Ack], owner: object, timer: asyncio.TimerHandle) -> None:
        self.future = future
        self.owner = owner
        self.timer = timer


class PendingAcks:
    """The sends written and waiting for their ack. ``owner`` tags each with the connection it
    was written on, so that losing that connection settles exactly its sends."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._pending: Dict[str, _Pending] = {}
        self._idle: Dict[int, asyncio.Future[None]] = {}  # owner id -> resolved when it has none left
        # Random per client instance: a restarted process must not reuse its predecessor's ids.
        self._prefix = "".join(secrets.choice(_ALPHABET) for _ in range(7))
        self._n = 0

    @property
    def timeout(self) -> float:
        return self._timeout

    def __len__(self) -> int:
        return len(self._pending)

    def next_id(self) -> str:
        """A new ack id: the instance's prefix and a counter, e.g. ``k3x9qaz-1f``."""
        self._n += 1
        return f"{self._prefix}-{_base36(self._n)}"

    def wait(self, ack_id: str, future: asyncio.Future[Ack], owner: object) -> None:
        """Registers a frame about to be written with this id; it settles ``unconfirmed``
        (``timeout``) when no ack comes within the timeout."""
        loop = future.get_loop()
        timer = loop.call_later(self._timeout, self._end, ack_id, Ack(ack_id, "unconfirmed", reason="timeout"))
        self._pending[ack_id] = _Pending(future, owner, timer)

    def owned_by(self, owner: object) -> int:
        return sum(1 for p in self._pending.values() if p.owner is owner)

    async def settled(self, owner: object) -> None:
        """Returns once no send written on ``owner`` waits for its ack."""
        while self.owned_by(owner):
            fut = self._idle.get(id(owner))
            if fut is None or fut.done():
                fut = self._idle[id(owner)] = asyncio.get_running_loop().create_future()
            try:
                await asyncio.shield(fut)
            finally:
                if fut.done() or not self.owned_by(owner):
                    self._idle.pop(id(owner), None)

    def settle(self, payload: Mapping[str, Any]) -> bool:
        """Settles the send an ``ack`` frame's payload names; False when none waits for it."""
        ack_id = str(payload.get("ack_id"))
        status = payload.get("status")
        offset = payload.get("offset")
        epoch = payload.get("epoch")
        reason = payload.get("reason")
        ack = Ack(
            ack_id=ack_id,
            # `unconfirmed`, or a status this client does not know: either way the fate is unknown.
            status="ok" if status == "ok" else "failed" if status == "failed" else "unconfirmed",
            offset=offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
            epoch=epoch if isinstance(epoch, str) else None,
            duplicate=payload.get("duplicate") is True,
            reason=reason if isinstance(reason, str) else None,
        )
        return self._end(ack_id, AckFailed(ack) if ack.status == "failed" else ack)

    def fail(self, ack_id: str, reason: str) -> None:
        """Settles one send ``unconfirmed`` (its write failed half-way)."""
        self._end(ack_id, Ack(ack_id, "unconfirmed", reason=reason))

    def drop(self, owner: object, reason: str) -> None:
        """Settles ``unconfirmed`` every send written on ``owner`` (None: every send): written,
        but its ack can no longer come."""
        ids: List[str] = [k for k, p in self._pending.items() if owner is None or p.owner is owner]
        for ack_id in ids:
            self._end(ack_id, Ack(ack_id, "unconfirmed", reason=reason))

    def _end(self, ack_id: str, result: Union[Ack, AckFailed]) -> bool:
        p = self._pending.pop(ack_id, None)
        if p is None:
            return False
        p.timer.cancel()
        idle = self._idle.get(id(p.owner))
        if idle is not None and not idle.done() and not self.owned_by(p.owner):
            idle.set_result(None)
        if not p.future.done():  # the sender may have stopped waiting (cancelled)
            if isinstance(result, AckFailed):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
        return True
