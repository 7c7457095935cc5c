"""The client's events: what each carries, and the emitter that calls sync or async
callbacks without letting one break the client or the others."""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set

__all__ = ["EVENTS", "Emitter", "FinalClose", "PresenceEvent", "Reconnecting"]

log = logging.getLogger("aether_hub")

#: The event names ``Client.on`` accepts, and what their callbacks get:
#: ``state`` (old, new); ``presence`` (PresenceEvent); ``recovered`` (Recovery);
#: ``disconnected`` (FinalClose); ``reconnecting`` (Reconnecting); ``error`` (AetherError);
#: ``message`` (Message).
EVENTS = ("state", "presence", "recovered", "disconnected", "reconnecting", "error", "message")


@dataclass(frozen=True)
class PresenceEvent:
    """A client joined or left the group (section 4). Events are not kept in history: after
    a reconnect, ``await client.presence()`` tells the exact membership."""

    event: str  # "join" | "leave"
    client_id: str
    group_id: str


@dataclass(frozen=True)
class FinalClose:
    """Why the client stopped for good (the ``disconnected`` event), not by ``close()``.

    ``kind``: ``disconnected_by_service`` (4010), ``token`` (a refused or expired token it
    cannot refresh: 4001 or a 401 without ``get_token``), ``refused`` (the upgrade was
    refused: 400, 403, or 401 without any credential to renew), ``hub_closed`` (the hub
    closed the socket for a bug of this client: 4000, 4003, 1009), ``not_connected`` (the
    connection closed and ``reconnect=False``). ``code``: the close code, or for
    ``refused``/``token`` at the upgrade the HTTP status."""

    code: int
    reason: str
    kind: str


@dataclass(frozen=True)
class Reconnecting:
    """The client lost (or could not open) a connection and waits ``delay`` seconds before
    attempt number ``attempt`` on ``url``. ``code``/``reason``: the close code and reason (1006
    for a dropped connection or a failed attempt; the HTTP status for a refused upgrade)."""

    code: int
    reason: str
    attempt: int
    delay: float
    url: str


class Emitter:
    """Calls each callback of an event in order. A sync callback runs at once; an async one
    (or one returning an awaitable) runs as a task the client tracks and awaits on close.
    A callback that raises is logged on the ``aether_hub`` logger and otherwise ignored."""

    def __init__(self) -> None:
        self._listeners: Dict[str, List[Callable[..., Any]]] = {}
        self._tasks: Set[asyncio.Task[Any]] = set()

    def on(self, event: str, callback: Callable[..., Any]) -> Callable[[], None]:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r} (events: {', '.join(EVENTS)})")
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._listeners.setdefault(event, []).append(callback)

        def off() -> None:
            listeners = self._listeners.get(event, [])
            if callback in listeners:
                listeners.remove(callback)

        return off

    def has(self, event: str) -> bool:
        return bool(self._listeners.get(event))

    def emit(self, event: str, *args: Any) -> None:
        for callback in list(self._listeners.get(event, ())):
            try:
                result = callback(*args)
            except Exception:
                log.exception("a %r callback raised", event)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("an async callback raised", exc_info=task.exception())

    async def drain(self, timeout: Optional[float]) -> None:
        """Waits (at most ``timeout``) for the async callbacks still running, then cancels the
        rest. The calling task is never waited for (a callback may call ``close()``)."""
        current = asyncio.current_task()
        tasks = {t for t in self._tasks if t is not current}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
