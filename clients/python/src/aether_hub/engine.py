"""The engine under Client: the connection loop (attempts, backoff, close-code decisions, token
refresh), the writer of the send queue, the reading of deliveries, and stopping. Mirrors the
TypeScript client (clients/js/src/client.ts); the public API is in client.py."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections import deque
from dataclasses import replace
from datetime import datetime
from typing import Any, Awaitable, Deque, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple, Union

from websockets.exceptions import InvalidStatus

from ._version import __version__
from .acks import Ack, PendingAcks
from .backoff import backoff_delay
from .close_codes import CloseDecision, ServiceReconnects, decide_close, decide_http_status
from .errors import AetherError, ClientClosed, ConnectError, QueueFull
from .events import Emitter, FinalClose, PresenceEvent, Reconnecting
from .frames import Message, Target, build_frame, control_frame, parse_delivery
from .inbox import Inbox
from .options import Options
from .recovery import ROUTES, Positions
from .session import Session, open_connection, session_url
from .tokens import refresh_delay, subprotocols

__all__ = ["Engine"]

log = logging.getLogger("aether_hub")

_USER_AGENT = f"aether-hub-client-python/{__version__}"


class _Outgoing:
    """A send not yet written: its frame, ack id (None: no ack asked) and its caller's future."""

    __slots__ = ("ack_id", "future", "text")

    def __init__(self, text: str, ack_id: Optional[str], future: asyncio.Future[Ack]) -> None:
        self.text = text
        self.ack_id = ack_id
        self.future = future


class _Failed:
    """An attempt that did not open: close code (or HTTP status) and why."""

    __slots__ = ("code", "http", "reason", "retry_after")

    def __init__(self, code: int, reason: str, http: Optional[int] = None, retry_after: Optional[float] = None) -> None:
        self.code, self.reason, self.http, self.retry_after = code, reason, http, retry_after


class Engine:
    """State and machinery of a Client (see client.py for the API)."""

    def __init__(self, options: Options) -> None:
        self._opts = options
        self.group = options.group
        self.client_id = options.client
        self._urls = options.urls
        self._state = "idle"
        self._events = Emitter()
        self._positions = Positions()
        self._acks = PendingAcks(options.ack_timeout)
        self._service = ServiceReconnects()
        self._members: FrozenSet[str] = frozenset()
        self._final: Optional[FinalClose] = None
        self._queue: Deque[_Outgoing] = deque()
        self._control: Deque[str] = deque()
        self._inflight: Optional[_Outgoing] = None
        self._session: Optional[Session] = None
        self._sessions: Set[Session] = set()
        self._side_tasks: Set[asyncio.Task[None]] = set()
        self._connect_waiters: List[asyncio.Future[None]] = []
        self._presence_waiters: List[asyncio.Future[List[str]]] = []
        self._ever_opened = False
        self._attempt = 0
        self._url_index = 0
        # Created in a running loop (Python 3.9 binds asyncio objects to a loop when made).
        self._wake: Optional[asyncio.Event] = None
        self._inbox: Optional[Inbox[Message]] = None
        self._runner: Optional[asyncio.Task[None]] = None
        self._writer: Optional[asyncio.Task[None]] = None
        self._teardown_task: Optional[asyncio.Task[None]] = None

    @property
    def url(self) -> str:
        """The hub URL of the current (or next) connection."""
        return self._urls[self._url_index]

    # ---- sending ----

    def _check_not_closed(self) -> None:
        if self._state == "closed":
            if self._final is not None:
                raise ClientClosed(
                    f"the client stopped: {self._final.kind} ({self._final.code} {self._final.reason})".strip(),
                    close_code=self._final.code,
                    reason=self._final.reason,
                )
            raise ClientClosed("the client was closed")

    def _runtime(self) -> Optional[Inbox[Message]]:
        if self._wake is None:
            self._wake = asyncio.Event()
            self._inbox = Inbox(self._opts.inbox_size) if self._opts.inbox_size > 0 else None
        return self._inbox

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _write_control(self, text: str) -> None:
        self._control.append(text)
        self._kick()

    async def _send(
        self,
        target: Target,
        to: Optional[str],
        cmd: Optional[str],
        msg: Optional[str],
        payload: Optional[Mapping[str, Any]],
        sent_at: Union[str, datetime, None],
        ack: bool,
    ) -> Ack:
        self._check_not_closed()
        ack_id = self._acks.next_id() if ack else None
        text = build_frame(
            client=self.client_id,
            group=self.group,
            target=target,
            to=to,
            cmd=cmd,
            msg=msg,
            payload=payload,
            sent_at=sent_at,
            ack_id=ack_id,
            max_message_bytes=self._opts.max_message_bytes,
        )
        if len(self._queue) >= self._opts.send_queue:
            raise QueueFull(f"{self._opts.send_queue} sends already wait to be written (send_queue); nothing sent")
        self._runtime()
        item = _Outgoing(text, ack_id, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._kick()
        try:
            return await item.future
        except asyncio.CancelledError:
            if item in self._queue:  # not written: it never will be
                self._queue.remove(item)
            raise

    async def _write_loop(self) -> None:
        """Writes control frames, then queued sends in order, to the current connection."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                s = self._session
                if s is None or not s.writable:
                    break
                if self._control:
                    try:
                        await s.send(self._control.popleft())
                    except Exception:
                        break
                    continue
                if not self._queue:
                    break
                item = self._queue.popleft()
                if item.future.done():  # its sender stopped waiting
                    continue
                if item.ack_id is not None:
                    self._acks.wait(item.ack_id, item.future, s)
                self._inflight = item
                try:
                    await s.send(item.text)
                except Exception:  # handed to the socket or not: its fate is unknown
                    if item.ack_id is not None:
                        self._acks.fail(item.ack_id, "disconnected")
                    elif not item.future.done():
                        item.future.set_result(Ack("", "unconfirmed", reason="disconnected"))
                    break
                finally:
                    self._inflight = None
                if item.ack_id is None and not item.future.done():
                    item.future.set_result(Ack("", "sent"))

    # ---- connecting ----

    def _set_state(self, new: str) -> None:
        old, self._state = self._state, new
        if old != new:
            log.debug("state %s -> %s", old, new)
            self._events.emit("state", old, new)

    async def _run(self) -> None:
        try:
            while True:
                self._set_state("reconnecting" if self._ever_opened else "connecting")
                result = await self._attempt_open(self._urls[self._url_index])
                if isinstance(result, Session):
                    code, reason = await self._serve(result)
                    result = _Failed(code, reason)
                if not await self._after_close(result):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not leave connect() waiting forever
            log.exception("the connection loop failed")
            self._finish(None, FinalClose(1006, "internal error", "not_connected"))

    async def _fetch_token(self) -> Optional[str]:
        if self._opts.get_token is None:
            return self._opts.token
        result = self._opts.get_token()
        token = await result if inspect.isawaitable(result) else result
        if not isinstance(token, str) or not token:
            raise TypeError(f"get_token() returned {type(token).__name__} {token!r}, not a non-empty string")
        return token

    async def _attempt_open(self, url: str) -> Union[Session, _Failed]:
        try:
            token = await asyncio.wait_for(self._fetch_token(), self._opts.connect_timeout)
        except Exception as e:
            err = AetherError(f"get_token() failed: {e!r}")
            err.code = "token"
            self._events.emit("error", err)
            return _Failed(1006, "get_token() failed")
        token_at = time.monotonic()
        since = self._positions.since_params()
        full = session_url(url, self.group, self.client_id, since)
        try:
            ws = await open_connection(full, subprotocols(token), self._opts.headers, self._opts.connect_timeout, self._opts.ssl, _USER_AGENT)
        except InvalidStatus as e:
            status = e.response.status_code
            retry_after: Optional[float] = None
            with contextlib.suppress(ValueError):
                retry_after = float(e.response.headers.get("Retry-After", ""))
            return _Failed(status, f"upgrade refused with HTTP {status}", status, retry_after)
        except Exception as e:  # refused connection, timeout, a broken handshake: retry
            return _Failed(1006, f"connect failed: {e!r}")
        session = Session(ws, url, self.client_id, self._on_frame, self._opts.heartbeat_interval, self._opts.dead_link_timeout, token, token_at)
        session.asked_new = [route for route, (_, value) in zip(ROUTES, since) if value == "new"]
        session.reconnected = self._ever_opened
        self._sessions.add(session)
        session.done.add_done_callback(lambda _: self._ended(session))
        return session

    def _ended(self, session: Session) -> None:
        self._sessions.discard(session)
        self._acks.drop(session, "disconnected")
        if self._session is session:
            self._session = None

    def _opened(self, session: Session) -> None:
        self._session = session
        self._attempt = 0
        self._ever_opened = True
        self._set_state("open")
        self._write_control(control_frame("presence", self.client_id))
        for w in self._connect_waiters:
            if not w.done():
                w.set_result(None)

    async def _serve(self, session: Session) -> Tuple[int, str]:
        """Runs the open connection until it ends; before its token expires, moves to a new
        connection with a fresh token (opened first, so nothing is missed nor presence flaps)."""
        self._opened(session)
        failures = 0
        due = self._refresh_due(session)
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(session.done), due)
            except asyncio.TimeoutError:
                pass
            new = await self._attempt_open(session.url)
            if isinstance(new, Session):
                self._retire(session)
                session, failures = new, 0
                self._opened(session)
                due = self._refresh_due(session)
            else:
                log.warning("token refresh: a new connection did not open (%s); retrying", new.reason)
                failures += 1
                due = max(1.0, backoff_delay(failures, self._opts.min_delay, self._opts.max_delay))

    def _refresh_due(self, session: Session) -> Optional[float]:
        if not self._opts.refresh_token or not session.token:
            return None
        return refresh_delay(session.token, time.time(), time.monotonic() - session.token_at)

    def _retire(self, old: Session) -> None:
        """The old connection of a token refresh: it only reads the acks of what was written on
        it, then closes with 1000 (at most ack_timeout later)."""
        old.retired = True

        async def drain() -> None:
            settled: asyncio.Future[Any] = asyncio.ensure_future(self._acks.settled(old))
            ended: asyncio.Future[Any] = old.done
            await asyncio.wait({settled, ended}, timeout=self._acks.timeout, return_when=asyncio.FIRST_COMPLETED)
            settled.cancel()
            await old.close(1000, "token refresh")

        self._spawn(drain())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _after_close(self, failed: _Failed) -> bool:
        """Decides what follows a close or a failed attempt; waits the delay. False: stopped."""
        can_refresh = self._opts.get_token is not None
        decision: CloseDecision
        if failed.http is not None:
            decision = decide_http_status(failed.http, can_refresh, self._opts.token is not None)
        else:
            decision = decide_close(failed.code, can_refresh, self._service.note() if failed.code == 4011 else 1)
        log.info("connection to %s closed: %s %s", self.url, failed.code, failed.reason)
        if decision.action == "stop":
            self._finish(None, FinalClose(failed.code, failed.reason, decision.kind or "hub_closed"))
            return False
        if not self._opts.reconnect:
            self._finish(None, FinalClose(failed.code, failed.reason, "not_connected"))
            return False
        self._url_index = (self._url_index + 1) % len(self._urls)
        attempt = max(self._attempt, decision.min_attempt or 0)
        delay = 0.0 if decision.immediate else backoff_delay(attempt, self._opts.min_delay, self._opts.max_delay)
        if decision.min_delay is not None:
            delay = max(delay, decision.min_delay)
        if failed.retry_after is not None and failed.retry_after > 0:
            # The hub's Retry-After (503 over its accept rate), spread so a crowd does not return at once.
            delay = max(delay, failed.retry_after * (1.0 + random.random() / 2))
        self._attempt += 1
        self._set_state("reconnecting" if self._ever_opened else "connecting")
        self._events.emit("reconnecting", Reconnecting(failed.code, failed.reason, self._attempt, delay, self.url))
        await asyncio.sleep(delay)
        return True

    # ---- stopping ----

    def _finish(self, error: Optional[AetherError], final: Optional[FinalClose]) -> None:
        """Stops for good (close() with ``error``, or a final stop): settles everything at once."""
        if self._state == "closed":
            return
        self._final = final
        closed = error if error is not None else ClientClosed(f"the client stopped: {final.kind if final else ''}")
        self._acks.drop(None, "closed")
        if self._inflight is not None and not self._inflight.future.done():
            self._inflight.future.set_result(Ack(self._inflight.ack_id or "", "unconfirmed", reason="closed"))
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(ClientClosed(str(closed)))
        self._queue.clear()
        self._control.clear()
        for f in self._presence_waiters:
            if not f.done():
                f.set_exception(ClientClosed(str(closed)))
        for w in self._connect_waiters:
            if not w.done():
                if final is not None:
                    w.set_exception(
                        ConnectError(f"could not connect: {final.kind} ({final.code} {final.reason})", final=final, close_code=final.code, reason=final.reason)
                    )
                else:
                    w.set_exception(ClientClosed(str(closed)))
        if self._inbox is not None:
            self._inbox.close()
        self._set_state("closed")
        if final is not None:
            log.warning("stopped for good: %s (%s %s)", final.kind, final.code, final.reason)
            self._events.emit("disconnected", final)
        self._begin_teardown()

    def _begin_teardown(self) -> asyncio.Task[None]:
        if self._teardown_task is None:
            self._teardown_task = asyncio.ensure_future(self._teardown())
        return self._teardown_task

    async def _teardown(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in (self._runner, self._writer) if t is not None and t is not current and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._sessions:
            await asyncio.wait([asyncio.ensure_future(s.close(1000, "client closed")) for s in list(self._sessions)])
        side = [t for t in self._side_tasks if not t.done()]
        for t in side:
            t.cancel()
        if side:
            await asyncio.wait(side)

    # ---- receiving ----

    async def _on_frame(self, session: Session, data: Union[str, bytes]) -> None:
        raw = parse_delivery(data)
        if raw is None:
            return
        kind = raw["msg_type"]
        if kind == "ack":
            self._acks.settle(raw["payload"])
            return
        if session.retired:  # a newer connection delivers the rest
            return
        if kind in ("msg", "cmd"):
            m = Message.from_dict(raw)
            if self._positions.is_duplicate(m):
                return
            if self._inbox is not None and not await self._inbox.put(m, lambda: session.retired):
                return  # closed, or replaced meanwhile (the new connection replays it)
            self._positions.record(m)
            self._events.emit("message", m)
        elif kind == "presence":
            self._on_presence(raw)
        elif kind == "recovery":
            routes = self._positions.apply_summary(raw["payload"])
            for route in ROUTES:
                r = routes.get(route)
                if r is None:
                    continue
                if session.reconnected and route in session.asked_new:
                    # A route asked as `new` on a reconnect had no position: what it missed is unknown.
                    r = replace(r, recovered=False)
                self._events.emit("recovered", r)

    def _on_presence(self, raw: Dict[str, Any]) -> None:
        payload = raw["payload"]
        members = payload.get("members")
        if isinstance(members, list):
            listed = sorted({m for m in members if isinstance(m, str)})
            self._members = frozenset(listed)
            for f in self._presence_waiters:
                if not f.done():
                    f.set_result(list(listed))
            return
        event = payload.get("event")
        client_id = payload.get("client_id", raw.get("from_id"))
        if event not in ("join", "leave") or not isinstance(client_id, str):
            return
        self._members = self._members | {client_id} if event == "join" else self._members - {client_id}
        group = raw.get("group_id")
        self._events.emit("presence", PresenceEvent(str(event), client_id, group if isinstance(group, str) else self.group))
