"""One WebSocket connection to the hub: opening it (URL, credentials, since_*), reading its
frames in order, and its liveness (heartbeats, and the dead-link deadline)."""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from typing import Any, Awaitable, Callable, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.typing import Subprotocol

from .frames import control_frame

__all__ = ["Session", "normalise_url", "open_connection", "session_url"]

log = logging.getLogger("aether_hub")

#: Frames the hub delivers may exceed what a client may send (a large group's presence answer).
MAX_INBOUND_BYTES = 16 * 1024 * 1024


class HubConnection(ClientConnection):
    """A websockets connection that notes when bytes last came from the hub: any frame,
    a ping included, proves the link alive."""

    last_rx = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        super().data_received(data)


def normalise_url(url: str) -> str:
    """``http(s)://`` becomes ``ws(s)://``; a trailing ``/`` goes. Raises ValueError otherwise."""
    if not isinstance(url, str):
        raise ValueError(f"url must be a string, got {type(url).__name__}")
    lower = url.lower()
    for prefix, scheme in (("ws://", "ws://"), ("wss://", "wss://"), ("http://", "ws://"), ("https://", "wss://")):
        if lower.startswith(prefix):
            rest = url[len(prefix) :].rstrip("/")
            if not rest:
                raise ValueError(f"url has no host: {url!r}")
            return scheme + rest
    raise ValueError(f"url must start with ws://, wss://, http:// or https://, got {url!r}")


def session_url(base: str, group: str, client: str, params: Sequence[Tuple[str, str]]) -> str:
    """The upgrade URL of section 1 (ids are Vision IDs, so they need no escaping)."""
    query = urlencode(list(params))
    return f"{base}/v3/ws/group/{group}/client/{client}" + (f"?{query}" if query else "")


async def open_connection(
    url: str,
    protocols: List[str],
    headers: List[Tuple[str, str]],
    timeout: float,
    ssl: Optional[_ssl.SSLContext],
    user_agent: str,
) -> HubConnection:
    """Opens the WebSocket (raises what websockets raises: InvalidStatus for a refused upgrade,
    OSError, TimeoutError, ...). Keepalive is the client's (heartbeats), not websockets'."""
    kwargs: dict[str, Any] = {}
    if ssl is not None:
        kwargs["ssl"] = ssl

    async def handshake() -> ClientConnection:
        return await connect(
            url,
            subprotocols=[Subprotocol(p) for p in protocols],
            additional_headers=headers,
            user_agent_header=user_agent,
            compression=None,
            open_timeout=timeout,
            ping_interval=None,
            ping_timeout=None,
            close_timeout=2.0,
            max_size=MAX_INBOUND_BYTES,
            create_connection=HubConnection,
            **kwargs,
        )

    # Cancelled (close()) while opening: stop the handshake, or drop a socket that opened at
    # that very moment, before giving up; nothing is left behind.
    opening = asyncio.ensure_future(handshake())
    try:
        ws = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.cancel()
        await asyncio.wait({opening})
        if not opening.cancelled() and opening.exception() is None:
            opening.result().transport.abort()
        raise
    assert isinstance(ws, HubConnection)
    ws.last_rx = ws.loop.time()
    return ws


FrameHandler = Callable[["Session", Union[str, bytes]], Awaitable[None]]


class Session:
    """An open connection: a reader task handing each frame to ``on_frame`` in order, and a
    liveness task sending a heartbeat every ``heartbeat_interval`` and dropping the
    connection when nothing at all came from the hub for ``dead_link_timeout`` (except while
    the reader waits for the application to take messages: then nothing is read, so nothing
    can be judged). ``done`` resolves with the close code and reason once it has ended."""

    def __init__(
        self,
        ws: HubConnection,
        url: str,
        client: str,
        on_frame: FrameHandler,
        heartbeat_interval: float,
        dead_link_timeout: float,
        token: Optional[str] = None,
        token_at: float = 0.0,
    ) -> None:
        self.ws = ws
        self.url = url
        self.token = token
        self.token_at = token_at
        self.retired = False  # replaced by a newer connection (token refresh): reads acks only
        self.reconnected = False  # opened after an earlier open of the client
        self.asked_new: List[str] = []  # the routes asked with since_*=new
        self.blocked = False  # the reader waits for room in the inbox
        self._client = client
        self._on_frame = on_frame
        self._heartbeat = heartbeat_interval
        self._dead = dead_link_timeout
        self._abort: Optional[Tuple[int, str]] = None
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[Tuple[int, str]] = loop.create_future()
        self._reader = loop.create_task(self._read())
        self._liveness = loop.create_task(self._live())

    @property
    def writable(self) -> bool:
        return not self.retired and not self.done.done() and self.ws.state is State.OPEN

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    def abort(self, code: int, reason: str) -> None:
        """Drops the connection at once (no closing handshake); ``done`` gets code and reason."""
        if self._abort is None:
            self._abort = (code, reason)
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Closes with a closing handshake (at most 2 s, then the connection is dropped) and
        waits for the reader to end."""
        if self._abort is None:
            self._abort = (code, reason)
        try:
            await self.ws.close(code, reason)
        except Exception:  # already closing or broken: drop it
            self.abort(code, reason)
        await asyncio.wait({self._reader, self._liveness})

    async def _read(self) -> None:
        code, reason = 1006, "connection lost"
        try:
            while True:
                data = await self.ws.recv()
                self.blocked = True
                try:
                    await self._on_frame(self, data)
                finally:
                    self.blocked = False
                    self.ws.last_rx = self.ws.loop.time()
        except ConnectionClosed as e:
            if e.rcvd is not None:
                code, reason = e.rcvd.code, e.rcvd.reason
        except asyncio.CancelledError:
            code, reason = 1006, "cancelled"
            self.abort(code, reason)
        except Exception:  # a bug in handling a frame must not leave the session half alive
            log.exception("handling a frame from the hub failed")
            self.abort(1006, "internal error")
        finally:
            if self._abort is not None:
                code, reason = self._abort
            self._liveness.cancel()
            if not self.done.done():
                self.done.set_result((code, reason))

    async def _live(self) -> None:
        loop = self.ws.loop
        next_heartbeat = loop.time() + self._heartbeat
        try:
            while True:
                now = loop.time()
                if self.blocked:
                    # The application holds the reader; judge the link again once it lets go.
                    self.ws.last_rx = now
                deadline = self.ws.last_rx + self._dead
                if now >= deadline:
                    self.abort(1006, f"dead link: nothing from the hub for {self._dead:g} s")
                    return
                if now >= next_heartbeat:
                    next_heartbeat = now + self._heartbeat
                    await self.ws.send(control_frame("heartbeat", self._client))
                await asyncio.sleep(max(0.0, min(deadline, next_heartbeat) - loop.time()) + 0.001)
        except ConnectionClosed:
            return
