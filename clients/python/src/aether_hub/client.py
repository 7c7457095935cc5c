"""Client: the public API (see README.md). The machinery is in engine.py."""

from __future__ import annotations

import asyncio
import ssl as _ssl
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Union

from .acks import Ack
from .engine import Engine
from .errors import AetherTimeout, ClientClosed, NotConnected, OptionsError
from .events import FinalClose
from .frames import DEFAULT_MAX_MESSAGE_BYTES, Message, control_frame
from .inbox import InboxClosed
from .options import Options, TokenGetter
from .recovery import Position, Route

__all__ = ["Client", "TokenGetter"]


class Client(Engine):
    """One connection of (``group``, ``client``) to the hub, kept up across drops. See README.md."""

    def __init__(
        self,
        url: Union[str, Sequence[str]],
        *,
        group: str,
        client: str,
        token: Optional[str] = None,
        get_token: Optional[TokenGetter] = None,
        api_key: Optional[str] = None,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        heartbeat_interval: float = 30.0,
        dead_link_timeout: float = 75.0,
        ack_timeout: float = 10.0,
        send_queue: int = 1000,
        reconnect: bool = True,
        connect_timeout: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        inbox_size: int = 10000,
        presence_timeout: float = 10.0,
        refresh_token: bool = True,
        ssl: Optional[_ssl.SSLContext] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(
            Options.build(
                url,
                group=group,
                client=client,
                token=token,
                get_token=get_token,
                api_key=api_key,
                min_delay=min_delay,
                max_delay=max_delay,
                heartbeat_interval=heartbeat_interval,
                dead_link_timeout=dead_link_timeout,
                ack_timeout=ack_timeout,
                send_queue=send_queue,
                reconnect=reconnect,
                connect_timeout=connect_timeout,
                max_message_bytes=max_message_bytes,
                inbox_size=inbox_size,
                presence_timeout=presence_timeout,
                refresh_token=refresh_token,
                ssl=ssl,
                headers=headers,
            )
        )

    # ---- public surface ----

    @property
    def state(self) -> str:
        """``idle``, ``connecting``, ``open``, ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def members(self) -> FrozenSet[str]:
        """The group's members as last known (the presence answer asked on every open, then
        join/leave events)."""
        return self._members

    @property
    def positions(self) -> Dict[Route, Position]:
        """The recovery position kept per route (what the next connect resumes from)."""
        return self._positions.get()

    @property
    def final(self) -> Optional[FinalClose]:
        """Why the client stopped for good, when it did (not set by ``close()``)."""
        return self._final

    def on(self, event: str, callback: Callable[..., Any]) -> Callable[[], None]:
        """Calls ``callback`` on ``event`` (see ``aether_hub.events.EVENTS``); returns the
        function that unsubscribes it. Callbacks may be sync or async."""
        return self._events.on(event, callback)

    async def connect(self) -> None:
        """Starts the client; returns at the first open. Raises ConnectError when the client
        stops for good before (refused upgrade, ``reconnect=False`` and the attempt failed),
        ClientClosed when it is closed. Cancelling the wait does not stop the client."""
        if self._state == "open":
            return
        self._check_not_closed()
        self._runtime()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._connect_waiters.append(fut)
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
            self._writer = asyncio.ensure_future(self._write_loop())
        try:
            await fut
        finally:
            if fut in self._connect_waiters:
                self._connect_waiters.remove(fut)

    async def close(self) -> None:
        """Closes with 1000 and never reconnects. Queued sends raise ClientClosed; written
        sends waiting for their ack return ``unconfirmed`` (``closed``); iteration ends once the
        messages already received are taken. Waits until no task, timer or socket is left
        (async callbacks get up to 5 s). Safe to call more than once."""
        if self._state != "closed":
            self._finish(ClientClosed("the client was closed"), None)
        await asyncio.shield(self._begin_teardown())
        await self._events.drain(5.0)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except ClientClosed:
            raise StopAsyncIteration from None

    async def receive(self, timeout: Optional[float] = None) -> Message:
        """The next delivered ``msg`` or ``cmd``, in order, across reconnects. Raises
        AetherTimeout after ``timeout`` seconds, ClientClosed once closed and drained."""
        inbox = self._runtime()
        if inbox is None:
            raise OptionsError("receive() needs an inbox, and inbox_size is 0: use the message event")
        try:
            return await inbox.get(timeout)
        except InboxClosed:
            raise ClientClosed("the client is closed") from None
        except asyncio.TimeoutError:
            raise AetherTimeout(f"no message within {timeout:g} s") from None

    async def send_group(
        self,
        *,
        cmd: Optional[str] = None,
        msg: Optional[str] = None,
        payload: Optional[Mapping[str, Any]] = None,
        sent_at: Union[str, datetime, None] = None,
        ack: bool = True,
    ) -> Ack:
        """To every other client of the group. Returns the hub's ack (``ok``/``unconfirmed``;
        ``sent`` with ``ack=False``); raises AckFailed, FrameError, QueueFull, ClientClosed."""
        return await self._send("group", None, cmd, msg, payload, sent_at, ack)

    async def send_direct(
        self,
        to: str,
        *,
        cmd: Optional[str] = None,
        msg: Optional[str] = None,
        payload: Optional[Mapping[str, Any]] = None,
        sent_at: Union[str, datetime, None] = None,
        ack: bool = True,
    ) -> Ack:
        """To every socket of client ``to``, whatever its group. As ``send_group``."""
        return await self._send("direct", to, cmd, msg, payload, sent_at, ack)

    async def broadcast(
        self,
        *,
        cmd: Optional[str] = None,
        msg: Optional[str] = None,
        payload: Optional[Mapping[str, Any]] = None,
        sent_at: Union[str, datetime, None] = None,
        ack: bool = True,
    ) -> Ack:
        """To every other client on the hub (the hub may forbid it: 4003). As ``send_group``."""
        return await self._send("broadcast", None, cmd, msg, payload, sent_at, ack)

    async def echo(
        self,
        *,
        cmd: Optional[str] = None,
        msg: Optional[str] = None,
        payload: Optional[Mapping[str, Any]] = None,
        sent_at: Union[str, datetime, None] = None,
        ack: bool = True,
    ) -> Ack:
        """Back to this socket only (not kept in history). As ``send_group``."""
        return await self._send("echo", None, cmd, msg, payload, sent_at, ack)

    async def presence(self, timeout: Optional[float] = None) -> List[str]:
        """The group's members online now, sorted (this client included). While reconnecting
        it waits for the next open. Raises AetherTimeout (default ``presence_timeout``)."""
        self._check_not_closed()
        if self._state == "idle":
            raise NotConnected("call connect() first")
        self._runtime()
        fut: asyncio.Future[List[str]] = asyncio.get_running_loop().create_future()
        self._presence_waiters.append(fut)
        if self._state == "open":  # otherwise the query made on every open answers it
            self._write_control(control_frame("presence", self.client_id))
        limit = self._opts.presence_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), limit)
        except asyncio.TimeoutError:
            raise AetherTimeout(f"no presence answer within {limit:g} s") from None
        finally:
            if fut in self._presence_waiters:
                self._presence_waiters.remove(fut)
            fut.cancel()
