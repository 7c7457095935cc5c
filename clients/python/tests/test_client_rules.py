"""The client's rules, each against the REAL hub binary (and a real redis-server where the rule
needs Redis): acks (ok, failed, unconfirmed, timeout, lost with the connection), sends queued
while reconnecting, the bounded queue, the close codes 4010, 4011 (and its storm guard),
4001 and 1001, refused upgrades (401, 403, 429, 503, and 503 with Retry-After), rotation over
URLs, heartbeats and the dead link, resume positions, duplicates and ``recovered: false``,
presence, iteration after close, token refresh, and that ``close()`` leaves nothing running.

Every situation is made by the real processes: wrong or foreign tokens, a full hub, a hub
over its accept rate, ``POST /v3/disconnect`` and ``POST /v3/revoke``,
tokens that expire, a hub or a Redis frozen with SIGSTOP or killed with SIGKILL, a hub shut
down with SIGTERM. Where a test must see exactly what the client wrote (the upgrade request,
its frames, its close frame), the client connects through ``_hub.Tap``, a transparent TCP
relay that only copies the bytes between the client and the real hub and keeps a copy; it
answers nothing itself.

Hubs run in memory unless the rule needs Redis; each test uses fresh ids, and the tests that
break or tune a hub get a hub of their own (a hub starts in well under a second).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from _hub import ESTABLISHED, Events, Tap, freeze, tcp_sockets
from aether_hub import (
    Ack,
    AckFailed,
    AetherTimeout,
    Client,
    ClientClosed,
    ConnectError,
    FinalClose,
    FrameError,
    Message,
    NotConnected,
    PresenceEvent,
    QueueFull,
    Recovery,
    backoff_delay,
)
from conftest import (
    HubProc,
    RedisProc,
    ahttp_status,
    close_quietly,
    closed_with,
    free_port,
    hub_env,
    mint_token,
    run,
    uid,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

API_KEY = f"py-rules-api-key-{os.getpid()}"


# --------------------------------------------------------------------------
# fixtures: real hubs, real Redis, taps


@pytest.fixture(scope="module")
def hub() -> Iterator[HubProc]:
    """One in-memory hub for the tests that do not break it: token secrets, an admin key, and
    a (service) API key."""
    h = HubProc(hub_env(AETHER_API_KEYS=API_KEY), name=uid("hub-rules")).start()
    try:
        yield h
    finally:
        h.kill9()


@pytest.fixture(scope="module")
def limits_hub() -> Iterator[HubProc]:
    """A hub that holds two sockets at most, one per client."""
    h = HubProc(hub_env(AETHER_MAX_CONNECTIONS="2", AETHER_MAX_SOCKETS_PER_CLIENT="1"), name=uid("hub-limits")).start()
    try:
        yield h
    finally:
        h.kill9()


@pytest.fixture
def new_hub() -> Iterator[Callable[..., HubProc]]:
    """Starts hubs of the test's own (with ``redis``: in Redis mode); all killed afterwards."""
    made: list[HubProc] = []

    def make(redis: RedisProc | None = None, **extra: str) -> HubProc:
        h = HubProc(hub_env(redis, instance=uid("hub-r") if redis else None, **extra), name=uid("hub-rules"))
        made.append(h)
        return h.start()

    try:
        yield make
    finally:
        for h in made:
            h.kill9()


@pytest.fixture
def redis() -> Iterator[RedisProc]:
    r = RedisProc()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def tap() -> Iterator[Callable[[HubProc], Tap]]:
    made: list[Tap] = []

    def make(h: HubProc) -> Tap:
        made.append(Tap(h.port))
        return made[-1]

    try:
        yield make
    finally:
        for t in made:
            t.close()


# --------------------------------------------------------------------------
# helpers


def tok_client(url: str | list[str], group: str, client: str, **kw: Any) -> Client:
    """A client with a valid token of its own and a short backoff."""
    kw.setdefault("min_delay", 0.05)
    kw.setdefault("max_delay", 0.2)
    if "get_token" not in kw:
        kw.setdefault("token", mint_token(client, group))
    return Client(url, group=group, client=client, **kw)


async def readyz_is(h: HubProc, status: int) -> bool:
    return await ahttp_status(h.host, h.port, "/readyz") == status


async def history(h: HubProc, path: str) -> dict[str, Any]:
    status, body = await asyncio.to_thread(h.get_json, f"/v3/history/{path}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def protocol_header(t: Tap, i: int) -> str:
    req = t.opened()[i].request()
    assert req is not None
    return req.headers["Sec-WebSocket-Protocol"]


async def received(c: Client, n: int, timeout: float = 5.0) -> list[Message]:
    return [await c.receive(timeout=timeout) for _ in range(n)]


# --------------------------------------------------------------------------
# connecting: the upgrade request, credentials, acks


def test_connect_credentials_and_acks(hub: HubProc, tap: Callable[[HubProc], Tap]) -> None:
    run(_connect_credentials_and_acks(hub, tap(hub)), 30)


async def _connect_credentials_and_acks(hub: HubProc, t: Tap) -> None:
    g, me, peer, w1 = uid("g"), uid("me"), uid("peer"), uid("w1")
    token = mint_token(me, g)
    p = tok_client(hub.url, g, peer)
    c = Client(t.url, group=g, client=me, token=token)
    seen = Events(c)
    try:
        await p.connect()
        await c.connect()
        assert c.state == "open"
        [conn] = t.conns
        req = conn.request()
        assert req is not None
        assert req.path == f"/v3/ws/group/{g}/client/{me}"
        assert req.query == {"since_client": "new", "since_group": "new", "since_broadcast": "new"}
        assert req.headers["Sec-WebSocket-Protocol"] == f"aether.v3, aether.token.{token}"
        assert "Authorization" not in req.headers
        assert "X-Aether-API-Key" not in req.headers
        # The hub took the token (it needs one: no API key was given) and chose aether.v3.
        assert (conn.status(), conn.response_headers()["sec-websocket-protocol"]) == (101, "aether.v3")
        await wait_until(lambda: len(seen["recovered"]) == 3, 5, "the first recovery summary")
        rc, rg, rb = seen["recovered"]
        assert seen["recovered"] == [Recovery("client", True, 0), Recovery("group", True, 0), Recovery("broadcast", True, 0)]
        assert (rc.offset, rg.offset) == (0, 0), "fresh routes"
        assert all(r.epoch for r in (rc, rg, rb))

        ack = await c.send_group(cmd="start", payload={"job": 42})
        assert (ack.status, ack.offset, ack.epoch, ack.duplicate) == ("ok", 1, rg.epoch, False)
        direct = await c.send_direct(w1, msg="hi")
        assert (direct.status, direct.offset) == ("ok", 1)
        kept = await history(hub, f"client/{w1}")
        assert (kept["epoch"], kept["offset"]) == (direct.epoch, 1)
        bc = await c.broadcast(msg="all")
        assert (bc.status, bc.epoch, bc.offset) == ("ok", rb.epoch, rb.offset + 1)
        sent = await c.send_group(msg="fire and forget", ack=False)
        assert sent == Ack("", "sent")
        assert await c.presence() == sorted([me, peer])  # a round trip: the hub has read everything

        frames = conn.sent_by_client("cmd") + conn.sent_by_client("msg")
        assert [f.get("ack_id") is not None for f in frames] == [True, True, True, False]
        assert frames[0] == {
            "version": "3",
            "msg_type": "cmd",
            "target": "group",
            "from_id": me,
            "to_id": None,
            "group_id": g,
            "cmd": "start",
            "msg": None,
            "payload": {"job": 42},
            "ack_id": ack.ack_id,
        }
        assert [f["ack_id"] for f in frames[:3]] == [ack.ack_id, direct.ack_id, bc.ack_id]
        # Each ack the hub wrote names the frame's ack_id, in order.
        acks = [f["payload"] for f in conn.sent_by_hub("ack")]
        assert [(a["ack_id"], a["status"], a.get("offset")) for a in acks] == [
            (ack.ack_id, "ok", 1),
            (direct.ack_id, "ok", 1),
            (bc.ack_id, "ok", bc.offset),
        ]

        # What the peer got: the group cmd, the broadcast and the fire-and-forget message, no ack_id.
        got = await received(p, 3)
        assert [(m.msg_type, m.target, m.cmd, m.msg) for m in got] == [
            ("cmd", "group", "start", None),
            ("msg", "broadcast", None, "all"),
            ("msg", "group", None, "fire and forget"),
        ]
        assert (got[0].from_id, got[0].payload, got[0].offset, got[0].epoch) == (me, {"job": 42}, 1, rg.epoch)
        assert all("ack_id" not in m.raw for m in got)

        await c.close()
        assert c.state == "closed"
        assert conn.client_close() == (1000, "client closed")
    finally:
        await close_quietly(c, p)


def test_api_key_header_and_url_forms(hub: HubProc, tap: Callable[[HubProc], Tap]) -> None:
    run(_api_key(hub, tap(hub)), 30)


async def _api_key(hub: HubProc, t: Tap) -> None:
    g, me = uid("g"), uid("me")
    c = Client(t.url.replace("ws://", "http://") + "/", group=g, client=me, api_key=API_KEY)
    wrong = Client(hub.url.replace("ws://", "http://") + "/", group=g, client=uid("wrong"), api_key="not-a-key", reconnect=False)
    try:
        await c.connect()
        assert c.url == t.url
        [conn] = t.conns
        req = conn.request()
        assert req is not None
        assert req.path == f"/v3/ws/group/{g}/client/{me}"
        assert req.headers["X-Aether-API-Key"] == API_KEY
        assert req.headers["Sec-WebSocket-Protocol"] == "aether.v3"
        assert "api_key" not in req.query, "the key travels in the header, never in the URL"
        assert conn.status() == 101
        assert (await c.send_group(msg="with a key")).status == "ok"
        await c.close()
        # The key is what let it in: a wrong one is refused.
        with pytest.raises(ConnectError) as info:
            await wrong.connect()
        assert info.value.final == FinalClose(401, "upgrade refused with HTTP 401", "refused")
    finally:
        await close_quietly(c, wrong)


def test_invalid_frame_sends_nothing(hub: HubProc, tap: Callable[[HubProc], Tap]) -> None:
    run(_invalid_frame(hub, tap(hub)), 30)


async def _invalid_frame(hub: HubProc, t: Tap) -> None:
    g, me, peer = uid("g"), uid("me"), uid("peer")
    p = tok_client(hub.url, g, peer)
    c = tok_client(t.url, g, me)
    try:
        await p.connect()
        await c.connect()
        closed_4000 = await hub.ametric(closed_with(4000))
        with pytest.raises(FrameError):
            await c.send_group(msg="x", payload=[1])  # type: ignore[arg-type]
        with pytest.raises(FrameError):
            await c.send_direct("not an id", msg="x")
        with pytest.raises(FrameError):
            await c.send_group(cmd="a", msg="b")
        assert (await c.send_group(msg="fine")).status == "ok"
        [conn] = t.conns
        assert [f.get("msg") for f in conn.sent_by_client("msg")] == ["fine"]
        assert conn.sent_by_client("cmd") == []
        # The hub closed nothing (it would have closed with 4000 on a bad frame), and the
        # group got only the valid message.
        assert [m.msg for m in await received(p, 1)] == ["fine"]
        with pytest.raises(AetherTimeout):
            await p.receive(timeout=0.3)
        assert c.state == "open"
        assert len(t.conns) == 1
        assert await hub.ametric(closed_with(4000)) == closed_4000
    finally:
        await close_quietly(c, p)


# --------------------------------------------------------------------------
# acks: failed, unconfirmed (the hub's, the timeout's, the lost connection's)

ACK_TIMEOUT = 3.5  # above the hub's 2 s wait for Redis (docs/protocol.md section 10)


def test_failed_raises_and_unconfirmed_is_not_resent(redis: RedisProc, new_hub: Callable[..., HubProc], tap: Callable[[HubProc], Tap]) -> None:
    h = new_hub(redis)
    run(_acks(h, redis, tap(h)), 60)


async def _acks(h: HubProc, redis: RedisProc, t: Tap) -> None:
    g, me = uid("g"), uid("me")
    c = tok_client(t.url, g, me, ack_timeout=ACK_TIMEOUT, connect_timeout=2.0)
    try:
        await c.connect()

        # failed: Redis is gone, the hub cannot publish (reason "unavailable").
        redis.kill()
        await wait_until(lambda: readyz_is(h, 503), 5, "the hub sees Redis gone")
        with pytest.raises(AckFailed) as info:
            await c.send_group(cmd="x")
        assert (info.value.ack.status, info.value.reason) == ("failed", "unavailable")
        await asyncio.to_thread(redis.start)
        await wait_until(lambda: readyz_is(h, 200), 15, "the hub back on Redis")

        # unconfirmed, from the hub: Redis frozen, its answer does not come within 2 s.
        assert redis.proc is not None
        freeze(redis.proc.pid)
        try:
            t0 = time.monotonic()
            y = await c.send_group(cmd="y")
            took = time.monotonic() - t0
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        assert y.status == "unconfirmed", y
        assert y.reason != "timeout", "the hub's answer, not the client's timer"
        assert 1.5 <= took < ACK_TIMEOUT, took
        await wait_until(lambda: readyz_is(h, 200), 15, "Redis answering again")

        # No ack at all: the hub frozen. unconfirmed (timeout) after ack_timeout.
        freeze(h.pid)
        try:
            t0 = time.monotonic()
            z = await c.send_group(cmd="z")
            took = time.monotonic() - t0
            assert (z.status, z.reason) == ("unconfirmed", "timeout")
            assert took >= ACK_TIMEOUT - 0.05, took
            # Written, then the connection drops before the ack: unconfirmed, never sent again.
            pending = asyncio.ensure_future(c.send_group(cmd="cut"))
            await wait_until(lambda: any(f.get("cmd") == "cut" for f in t.conns[0].sent_by_client("cmd")), 5, "cut written")
            assert not pending.done()
        finally:
            os.kill(h.pid, signal.SIGKILL)  # while frozen: it never reads z nor cut
            h.kill9()
        ack = await asyncio.wait_for(pending, 10)
        assert (ack.status, ack.reason) == ("unconfirmed", "disconnected")

        await h.astart()  # the same hub again, on the same port and Redis
        await wait_until(lambda: c.state == "open" and len(t.opened()) == 2, 15, "the client back on the hub")
        after = await c.send_group(cmd="after")
        assert after.status == "ok"
        assert [f["cmd"] for f in t.opened()[1].sent_by_client("cmd")] == ["after"]
        every = [f["cmd"] for conn in t.conns for f in conn.sent_by_client("cmd")]
        assert every == ["x", "y", "z", "cut", "after"], "each written once, none sent again"
        kept = [m["cmd"] for m in (await history(h, f"group/{g}"))["messages"]]
        assert kept in (["y", "after"], ["after"]), kept  # x failed; z and cut never read by the hub
    finally:
        await close_quietly(c)


# --------------------------------------------------------------------------
# sends while reconnecting, and the bounded queue


def test_sends_while_reconnecting_are_queued_flushed_in_order_and_acked(new_hub: Callable[..., HubProc], tap: Callable[[HubProc], Tap]) -> None:
    h = new_hub()
    run(_queued(h, tap(h)), 40)


async def _queued(h: HubProc, t: Tap) -> None:
    g, me = uid("g"), uid("me")
    c = tok_client(t.url, g, me, connect_timeout=1.0)
    seen = Events(c)
    try:
        await c.connect()
        stopping = asyncio.ensure_future(asyncio.to_thread(h.stop))  # SIGTERM: 1001 to every socket, then exit
        await wait_until(lambda: c.state == "reconnecting", 5, "the client sees the 1001")
        sends = [asyncio.ensure_future(c.send_group(cmd=f"c{i}")) for i in range(5)]
        await stopping
        await asyncio.sleep(0.3)  # attempts fail meanwhile: nothing listens
        assert not any(s.done() for s in sends)
        assert c.state == "reconnecting"
        await h.astart()
        acks = await asyncio.wait_for(asyncio.gather(*sends), 10)
        assert [a.status for a in acks] == ["ok"] * 5
        opened = t.opened()
        assert len(opened) == 2
        assert [f["cmd"] for f in opened[1].sent_by_client("cmd")] == [f"c{i}" for i in range(5)]
        assert [a.offset for a in acks] == [1, 2, 3, 4, 5]
        kept = (await history(h, f"group/{g}"))["messages"]
        assert [(m["cmd"], m["offset"], m["from_id"]) for m in kept] == [(f"c{i}", i + 1, me) for i in range(5)]
        assert seen["state"] == [("idle", "connecting"), ("connecting", "open"), ("open", "reconnecting"), ("reconnecting", "open")]
        r = seen["reconnecting"][0]
        assert (r.code, r.reason, r.attempt) == (1001, "the hub is shutting down", 1)
        assert opened[0].hub_close() == (1001, "the hub is shutting down")
    finally:
        await close_quietly(c)


def test_bounded_queue(hub: HubProc) -> None:
    run(_bounded_queue(hub), 30)


async def _bounded_queue(hub: HubProc) -> None:
    g = uid("g")
    c = tok_client(hub.url, g, uid("me"), send_queue=2)
    queued = tok_client(hub.url, g, uid("q"), send_queue=3)
    try:
        first = [asyncio.ensure_future(c.send_group(msg=str(i))) for i in range(2)]  # before connect: queued
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await c.send_group(msg="one too many")
        await c.connect()
        acks = await asyncio.gather(*first)
        assert [(a.status, a.offset) for a in acks] == [("ok", 1), ("ok", 2)]
        await c.close()

        waiting = asyncio.ensure_future(queued.send_group(msg="never"))
        await asyncio.sleep(0)
        await queued.close()
        with pytest.raises(ClientClosed):
            await waiting
        assert [m["msg"] for m in (await history(hub, f"group/{g}"))["messages"]] == ["0", "1"]
    finally:
        await close_quietly(c, queued)


# --------------------------------------------------------------------------
# close codes from the server API and from tokens: 4010, 4011, 4001


def test_4010_stops_for_good(hub: HubProc, tap: Callable[[HubProc], Tap]) -> None:
    run(_4010(hub, tap(hub)), 30)


async def _4010(hub: HubProc, t: Tap) -> None:
    base = asyncio.all_tasks()
    g, me, peer = uid("g"), uid("me"), uid("peer")
    calls: list[float] = []

    def get_token() -> str:
        calls.append(time.monotonic())
        return mint_token(me, g)

    c = Client(t.url, group=g, client=me, get_token=get_token, min_delay=0.05, max_delay=0.2)
    p = tok_client(hub.url, g, peer)
    seen = Events(c)

    async def receive_all() -> list[Message]:
        return [m async for m in c]

    try:
        await p.connect()
        await c.connect()
        reading = asyncio.ensure_future(receive_all())
        last = await p.send_direct(me, cmd="last")
        assert last.status == "ok"
        await wait_until(lambda: "client" in c.positions and c.positions["client"].offset == last.offset, 5, "last delivered")
        status, body = await hub.apost("/v3/disconnect", {"client_id": me, "reconnect": False, "reason": "account suspended"})
        assert (status, body) == (202, {"status": "accepted"})
        await wait_until(lambda: c.state == "closed", 5, "closed")
        assert seen["disconnected"] == [FinalClose(4010, "account suspended", "disconnected_by_service")]
        assert c.final == seen["disconnected"][0]
        assert [(m.cmd, m.offset) for m in await asyncio.wait_for(reading, 2)] == [("last", last.offset)]
        assert t.conns[0].hub_close() == (4010, "account suspended")
        await asyncio.sleep(1.0)  # well past the backoff
        assert (len(t.conns), len(calls)) == (1, 1)
        with pytest.raises(ClientClosed):
            await c.send_group(cmd="after")
        with pytest.raises(ClientClosed):
            await c.connect()
        await c.close()
        assert seen["state"][-1] == ("open", "closed")
        await p.close()
        assert asyncio.all_tasks() == base
    finally:
        await close_quietly(c, p)


def test_4011_at_once_then_the_storm_guard(hub: HubProc, tap: Callable[[HubProc], Tap], monkeypatch: pytest.MonkeyPatch) -> None:
    # The jitter's random draw pinned to its top (1.0), so each delay is the backoff's cap.
    monkeypatch.setattr("aether_hub.engine.backoff_delay", lambda a, lo, hi: backoff_delay(a, lo, hi, lambda: 1.0))
    run(_4011(hub, tap(hub)), 40)


async def _4011(hub: HubProc, t: Tap) -> None:
    g, me = uid("g"), uid("me")
    tokens: list[str] = []

    def get_token() -> str:
        tokens.append(mint_token(me, g, jti=uid("jti")))
        return tokens[-1]

    c = Client(t.url, group=g, client=me, get_token=get_token, min_delay=0.1, max_delay=5.0)
    seen = Events(c)
    try:
        closed_4011 = await hub.ametric(closed_with(4011))
        await c.connect()

        def open_on(n: int) -> Callable[[], bool]:
            return lambda: c.state == "open" and len(t.opened()) == n

        def closed_times(n: int) -> Callable[[], bool]:
            return lambda: len(seen["reconnecting"]) >= n

        for k in range(1, 5):
            await wait_until(open_on(k), 5, f"open #{k}")
            status, _ = await hub.apost("/v3/disconnect", {"client_id": me, "reconnect": True, "reason": "moved"})
            assert status == 202
            await wait_until(closed_times(k), 5, f"4011 #{k}")
        await c.close()
        delays = [r.delay for r in seen["reconnecting"][:4]]
        assert delays == pytest.approx([0.0, 0.2, 0.4, 0.8])
        assert len(seen["reconnecting"]) == 4
        assert all(r.code == 4011 and r.reason == "moved" for r in seen["reconnecting"])
        # A fresh token for every connection.
        opened = t.opened()
        assert len(opened) >= 4
        assert [protocol_header(t, i) for i in range(len(opened))] == [f"aether.v3, aether.token.{tok}" for tok in tokens[: len(opened)]]
        assert len(set(tokens)) == len(tokens)
        assert [o.hub_close() for o in opened[:4]] == [(4011, "moved")] * 4
        assert not seen["disconnected"]
        assert await hub.ametric(closed_with(4011)) == closed_4011 + 4
    finally:
        await close_quietly(c)


def test_4001_fetches_a_new_token_at_once(hub: HubProc, tap: Callable[[HubProc], Tap]) -> None:
    run(_4001(hub, tap(hub)), 30)


async def _4001(hub: HubProc, t: Tap) -> None:
    g, me, st = uid("g"), uid("me"), uid("static")
    issued: list[str] = []

    async def get_token() -> str:
        now = int(time.time())
        # The first expires 2-3 s from now (the hub's leeway is 0). Issued an hour ago, so the
        # client schedules no refresh ahead of exp: the hub's 4001 is what ends it.
        issued.append(mint_token(me, g, iat=now - 3600, exp=now + 2) if not issued else mint_token(me, g))
        return issued[-1]

    now = int(time.time())
    c = Client(t.url, group=g, client=me, get_token=get_token, min_delay=5.0, max_delay=5.0)
    static = Client(hub.url, group=g, client=st, token=mint_token(st, g, iat=now - 3600, exp=now + 2), min_delay=0.05, max_delay=0.2)
    seen, seen_static = Events(c), Events(static)
    states: list[tuple[float, str]] = []
    c.on("state", lambda old, new: states.append((time.monotonic(), new)))
    try:
        await c.connect()
        await static.connect()
        await wait_until(lambda: c.state == "open" and len(t.opened()) == 2, 6, "the second connection")
        r = seen["reconnecting"][0]
        assert (r.code, r.reason, r.delay) == (4001, "token expired", 0.0)
        down = next(ts for ts, new in states if new == "reconnecting")
        up = [ts for ts, new in states if new == "open"][-1]
        assert up - down < 2.0, f"back after {up - down:.2f} s: at once, not after the 5 s backoff"
        assert t.opened()[0].hub_close() == (4001, "token expired")
        assert protocol_header(t, 1) == f"aether.v3, aether.token.{issued[1]}"
        assert len(issued) == 2

        await wait_until(lambda: static.state == "closed", 6, "the static-token client stops")
        assert seen_static["disconnected"] == [FinalClose(4001, "token expired", "token")]
        assert not seen["disconnected"]
    finally:
        await close_quietly(c, static)


def test_revoked_token_4001(hub: HubProc) -> None:
    run(_revoked(hub), 30)


async def _revoked(hub: HubProc) -> None:
    """``POST /v3/revoke``: 4001 at once; a static token stops, get_token gets a fresh one."""
    g, me, st = uid("g"), uid("me"), uid("static")
    jtis: list[str] = []

    def get_token() -> str:
        jtis.append(uid("jti"))
        return mint_token(me, g, jti=jtis[-1])

    static_jti = uid("jti")
    c = Client(hub.url, group=g, client=me, get_token=get_token, min_delay=5.0, max_delay=5.0)
    static = Client(hub.url, group=g, client=st, token=mint_token(st, g, jti=static_jti))
    seen, seen_static = Events(c), Events(static)
    try:
        await c.connect()
        await static.connect()
        until = int(time.time()) + 600
        for jti in (jtis[0], static_jti):
            status, body = await hub.apost("/v3/revoke", {"jti": jti, "until": until})
            assert (status, body) == (202, {"status": "accepted"})
        await wait_until(lambda: static.state == "closed", 5, "the static-token client stops")
        assert seen_static["disconnected"] == [FinalClose(4001, "token revoked", "token")]
        await wait_until(lambda: len(seen["reconnecting"]) == 1 and c.state == "open", 5, "back at once with a fresh token")
        r = seen["reconnecting"][0]
        assert (r.code, r.reason, r.delay) == (4001, "token revoked", 0.0)
        assert len(jtis) == 2
        assert (await c.send_group(msg="on the fresh token")).status == "ok"
    finally:
        await close_quietly(c, static)


# --------------------------------------------------------------------------
# refused upgrades


def test_refused_upgrades(hub: HubProc, limits_hub: HubProc) -> None:
    run(_refused(hub, limits_hub), 40)


async def _refused(hub: HubProc, lim: HubProc) -> None:
    g, me = uid("g"), uid("me")
    # 403: a valid token, for another client.
    c = Client(hub.url, group=g, client=me, token=mint_token(uid("other"), g))
    seen = Events(c)
    with pytest.raises(ConnectError) as info:
        await c.connect()
    assert info.value.final == FinalClose(403, "upgrade refused with HTTP 403", "refused")
    assert seen["disconnected"] == [info.value.final]
    await c.close()

    # 401: a token the hub cannot verify, and no get_token to fetch another.
    static = Client(hub.url, group=g, client=me, token=mint_token(me, g, secret="not-the-hub-secret"))
    with pytest.raises(ConnectError) as info:
        await static.connect()
    assert info.value.final is not None
    assert (info.value.final.kind, info.value.final.code) == ("token", 401)
    await static.close()

    # With get_token, a 401 is retried with a new token; 503 (the hub full) and 429 (this
    # client already holds its one socket) with backoff. get_token, called before each
    # attempt, sets the hub up for it.
    g2 = uid("g")
    holders: list[Client] = []
    calls: list[int] = []

    async def drop_holders() -> None:
        await close_quietly(*holders)
        holders.clear()
        await wait_until(lambda: _sockets_are(lim, 0), 5, "the holders gone")

    async def get_token() -> str:
        calls.append(0)
        if len(calls) == 1:
            return mint_token(me, g2, secret="not-the-hub-secret")  # 401
        if len(calls) == 2:  # 503: two sockets held, the hub's maximum
            for _ in range(2):
                holders.append(tok_client(lim.url, g2, uid("hold")))
                await holders[-1].connect()
        elif len(calls) == 3:  # 429: the same client id holds its one socket
            await drop_holders()
            holders.append(tok_client(lim.url, g2, me))
            await holders[-1].connect()
        else:
            await drop_holders()
        return mint_token(me, g2)

    refused = {r: await lim.ametric(f'aether_upgrades_refused_total{{reason="{r}"}}') for r in ("unauthorized", "capacity", "client_limit")}
    renewing = Client(lim.url, group=g2, client=me, get_token=get_token, min_delay=0.05, max_delay=0.2)
    seen = Events(renewing)
    try:
        await renewing.connect()
        assert len(calls) == 4
        assert [r.code for r in seen["reconnecting"]] == [401, 503, 429]
        assert seen["state"] == [("idle", "connecting"), ("connecting", "open")]
        assert await lim.asockets() == 1
        for r, n in refused.items():
            assert await lim.ametric(f'aether_upgrades_refused_total{{reason="{r}"}}') == n + 1, r
    finally:
        await close_quietly(renewing, *holders)


async def _sockets_are(h: HubProc, n: int) -> bool:
    return await h.asockets() == n


def test_retry_after_is_honoured(new_hub: Callable[..., HubProc]) -> None:
    h = new_hub(AETHER_MAX_CONNECTS_PER_SEC="1")
    run(_retry_after(h), 30)


async def _retry_after(h: HubProc) -> None:
    g = uid("g")
    holder = tok_client(h.url, g, uid("hold"))
    c = tok_client(h.url, g, uid("me"))
    seen = Events(c)
    try:
        await holder.connect()  # takes this second's one admission
        started = time.monotonic()
        await c.connect()
        assert time.monotonic() - started >= 1.0
        r = seen["reconnecting"][0]
        assert r.code == 503
        assert 1.0 <= r.delay <= 1.5, r
        assert await h.ametric('aether_upgrades_refused_total{reason="rate"}') >= 1
    finally:
        await close_quietly(c, holder)


def test_reconnect_false(new_hub: Callable[..., HubProc]) -> None:
    h = new_hub()
    run(_reconnect_false(h), 30)


async def _reconnect_false(h: HubProc) -> None:
    g = uid("g")
    c = tok_client(h.url, g, uid("me"), reconnect=False)
    lonely = Client(f"ws://127.0.0.1:{free_port()}", group=g, client=uid("lonely"), reconnect=False)
    seen = Events(c)
    try:
        await c.connect()
        await asyncio.to_thread(h.stop)  # SIGTERM: the hub closes every socket with 1001
        await wait_until(lambda: c.state == "closed", 5, "closed")
        assert seen["disconnected"] == [FinalClose(1001, "the hub is shutting down", "not_connected")]
        await c.close()
        with pytest.raises(ConnectError) as info:
            await lonely.connect()
        assert info.value.final is not None
        assert (info.value.final.code, info.value.final.kind) == (1006, "not_connected")
        await lonely.close()
    finally:
        await close_quietly(c, lonely)


# --------------------------------------------------------------------------
# rotation over URLs


def test_rotates_over_the_urls(hub: HubProc) -> None:
    run(_rotates(hub), 30)


async def _rotates(hub: HubProc) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    c = tok_client([dead, hub.url], uid("g"), uid("me"), max_delay=0.1)
    seen = Events(c)
    try:
        await c.connect()
        assert c.url == hub.url
        assert (seen["reconnecting"][0].url, seen["reconnecting"][0].code) == (hub.url, 1006)
        assert seen["state"] == [("idle", "connecting"), ("connecting", "open")]
    finally:
        await close_quietly(c)


def test_rotates_to_the_other_hub_when_one_dies(redis: RedisProc, new_hub: Callable[..., HubProc]) -> None:
    a, b = new_hub(redis), new_hub(redis)
    run(_rotates_on_death(a, b), 40)


async def _rotates_on_death(a: HubProc, b: HubProc) -> None:
    g, me, peer = uid("g"), uid("me"), uid("peer")
    w = tok_client([a.url, b.url], g, me, heartbeat_interval=0.5, dead_link_timeout=2.0, connect_timeout=1.0)
    p = tok_client(b.url, g, peer)
    seen = Events(w)
    try:
        await w.connect()
        await p.connect()
        assert w.url == a.url
        first = await p.send_direct(me, cmd="before")
        assert [m.cmd for m in await received(w, 1)] == ["before"]
        a.kill9()
        await wait_until(lambda: len(seen["reconnecting"]) == 1, 5, "the worker sees hub A die")
        meanwhile = await p.send_direct(me, cmd="meanwhile")
        await wait_until(lambda: w.state == "open", 10, "the worker on hub B")
        assert w.url == b.url
        got = await received(w, 1)
        assert [(m.cmd, m.offset, m.epoch) for m in got] == [("meanwhile", meanwhile.offset, meanwhile.epoch)]
        assert meanwhile.offset == (first.offset or 0) + 1
        assert [r.recovered for r in seen["recovered"][3:]] == [True, True, True]
        assert seen["reconnecting"][0].url == b.url
        with pytest.raises(AetherTimeout):
            await w.receive(timeout=0.3)
    finally:
        await close_quietly(w, p)


# --------------------------------------------------------------------------
# liveness: heartbeats and the dead link


def test_heartbeats_and_the_dead_link(new_hub: Callable[..., HubProc], tap: Callable[[HubProc], Tap]) -> None:
    h = new_hub()
    run(_dead_link(h, tap(h)), 40)


HEARTBEAT, DEAD_LINK = 0.25, 1.5


async def _dead_link(h: HubProc, t: Tap) -> None:
    base = asyncio.all_tasks()
    c = tok_client(t.url, uid("g"), uid("me"), heartbeat_interval=HEARTBEAT, dead_link_timeout=DEAD_LINK, connect_timeout=1.0)
    seen = Events(c)
    try:
        await c.connect()
        await asyncio.sleep(DEAD_LINK + 0.2)  # longer than the deadline: the answers keep it alive
        conn = t.conns[0]
        beats, answers = len(conn.sent_by_client("heartbeat")), len(conn.sent_by_hub("heartbeat"))
        assert beats >= 5, beats
        assert answers >= beats - 1, (beats, answers)
        assert all(a["target"] == "echo" and "server_time" in a["payload"] for a in conn.sent_by_hub("heartbeat"))
        assert (len(t.conns), seen["reconnecting"]) == (1, [])

        freeze(h.pid)  # the hub answers nothing from now on; the kernel still takes the bytes
        try:
            frozen = time.monotonic()
            await wait_until(lambda: len(seen["reconnecting"]) >= 1, DEAD_LINK + 3, "the dead link noticed")
            noticed = time.monotonic() - frozen
            dead = seen["reconnecting"][0]
            assert dead.reason.startswith("dead link"), dead
            assert dead.code == 1006
            assert DEAD_LINK - HEARTBEAT - 0.1 <= noticed <= DEAD_LINK + 1.0, noticed
            assert conn.client_close() is None, "dropped, not closed with a handshake"
        finally:
            h.sigcont()
        await wait_until(lambda: c.state == "open", 10, "open again once the hub answers")
        assert len(t.opened()) >= 2
        await c.close()
        assert asyncio.all_tasks() == base
    finally:
        h.sigcont()
        await close_quietly(c)


# --------------------------------------------------------------------------
# resume positions, duplicates, recovered: false


def test_resume_positions_duplicates_and_recovered_false(redis: RedisProc, new_hub: Callable[..., HubProc], tap: Callable[[HubProc], Tap]) -> None:
    h = new_hub(redis, AETHER_HISTORY_SIZE="3")
    run(_resume(h, redis, tap(h)), 40)


async def _resume(h: HubProc, redis: RedisProc, t: Tap) -> None:
    g, me, peer, w2 = uid("g"), uid("me"), uid("peer"), uid("w2")
    gate = asyncio.Event()
    gate.set()

    async def get_token() -> str:
        await asyncio.wait_for(gate.wait(), 8)
        return mint_token(me, g)

    p = tok_client(h.url, g, peer)
    other = tok_client(h.url, g, w2)
    c = Client(t.url, group=g, client=me, get_token=get_token, min_delay=0.05, max_delay=0.2)
    seen = Events(c)
    try:
        await p.connect()  # before the worker: it hears no join of the peer
        await c.connect()
        await wait_until(lambda: len(seen["recovered"]) == 3, 5, "the first summary")
        rc, rg, rb = seen["recovered"]
        assert seen["recovered"] == [Recovery("client", True, 0), Recovery("group", True, 0), Recovery("broadcast", True, 0)]
        assert [(r.offset, bool(r.epoch)) for r in (rc, rg, rb)] == [(0, True)] * 3

        acks = [await p.send_group(cmd=f"g{i}") for i in (1, 2, 3)]
        assert [(a.offset, a.epoch) for a in acks] == [(1, rg.epoch), (2, rg.epoch), (3, rg.epoch)]
        d1 = await p.send_direct(me, msg="d1")
        assert (d1.offset, d1.epoch) == (1, rc.epoch)
        got = await received(c, 4)
        await c.echo(msg="not kept")  # back to this socket only, no offset
        got += await received(c, 1)
        assert [m.cmd or m.msg for m in got] == ["g1", "g2", "g3", "d1", "not kept"]
        assert [m.offset for m in got] == [1, 2, 3, 1, None]
        await other.connect()
        await wait_until(lambda: len(seen["presence"]) == 1, 5, "the join of w2")

        # Away: 4011, and get_token holds the reconnect while 4 more group messages go by.
        # The hub keeps 3, so the worker's since_group (3) is no longer covered.
        gate.clear()
        status, _ = await h.apost("/v3/disconnect", {"client_id": me, "reconnect": True, "reason": "away"})
        assert status == 202
        await wait_until(lambda: c.state == "reconnecting", 5, "the worker away")
        missed = [await p.send_group(cmd=f"g{i}") for i in (4, 5, 6, 7)]
        assert [a.offset for a in missed] == [4, 5, 6, 7]
        gate.set()
        await wait_until(lambda: c.state == "open" and len(t.opened()) == 2, 10, "the worker back")
        req = t.opened()[1].request()
        assert req is not None
        assert req.query == {"since_client": f"{rc.epoch}:1", "since_group": f"{rg.epoch}:3", "since_broadcast": f"{rb.epoch}:0"}
        await wait_until(lambda: len(seen["recovered"]) == 6, 5, "the second summary")
        again = seen["recovered"][3:]
        assert [(r.route, r.recovered, r.missed) for r in again] == [("client", True, 0), ("group", False, 0), ("broadcast", True, 0)]
        assert [(r.epoch, r.offset) for r in again] == [(rc.epoch, 1), (rg.epoch, 7), (rb.epoch, 0)]
        assert c.positions["group"].offset == 7

        # The real hub never sends a duplicate itself (its reader and its replay drop them). A
        # service that publishes straight to Redis is passed on byte for byte (docs/protocol.md
        # section 5), and with the position fields first the hub reads no place from the text
        # (it looks for them last, where its numbering writes them): so a service re-publishing
        # g3 (seen already) reaches the worker, which must drop it as a duplicate. g8 is new.
        copy = {"offset": got[2].offset, "epoch": got[2].epoch, **{k: v for k, v in got[2].raw.items() if k not in ("offset", "epoch")}}
        subscribers = await asyncio.to_thread(redis.command, "PUBLISH", f"{h.env['AETHER_REDIS_PREFIX']}ws:group:{g}", json.dumps(copy))
        assert int(subscribers) >= 1
        await wait_until(lambda: any(f.get("cmd") == "g3" for f in t.opened()[1].sent_by_hub("cmd")), 5, "the hub delivers the copy")
        g8 = await p.send_group(cmd="g8")
        m = await c.receive(timeout=5)
        assert (m.cmd, m.offset) == ("g8", g8.offset) == ("g8", 8)
        with pytest.raises(AetherTimeout):
            await c.receive(timeout=0.3)
        assert [f["cmd"] for f in t.opened()[1].sent_by_hub("cmd")] == ["g3", "g8"], "nothing replayed (recovered: false)"
        assert seen["presence"] == [PresenceEvent("join", w2, g)]
        assert c.positions["group"].offset == 8
    finally:
        gate.set()
        await close_quietly(c, p, other)


# --------------------------------------------------------------------------
# presence, iteration


def test_presence_members_and_async_callbacks(hub: HubProc) -> None:
    run(_presence(hub), 30)


async def _presence(hub: HubProc) -> None:
    g = uid("g")
    zed, amy, me, bob, cy = (uid(n) for n in ("zed", "amy", "me", "bob", "cy"))
    zc, ac, bc, cc = (tok_client(hub.url, g, n) for n in (zed, amy, bob, cy))
    c = tok_client(hub.url, g, me)
    got: list[tuple[str, str]] = []
    all_events: list[PresenceEvent] = []

    async def on_presence(p: PresenceEvent) -> None:
        await asyncio.sleep(0.01)
        got.append((p.event, p.client_id))

    off = c.on("presence", on_presence)
    c.on("presence", lambda p: 1 / 0)  # a raising callback breaks nothing
    c.on("presence", all_events.append)
    try:
        with pytest.raises(NotConnected):
            await c.presence()
        await zc.connect()
        await ac.connect()
        await c.connect()
        assert await c.presence() == sorted([zed, me, amy])
        assert c.members == {amy, me, zed}
        await bc.connect()
        await wait_until(lambda: len(all_events) == 1, 5, "bob's join")
        await ac.close()
        await wait_until(lambda: len(got) == 2, 5, "both events")
        assert got == [("join", bob), ("leave", amy)]
        assert all_events == [PresenceEvent("join", bob, g), PresenceEvent("leave", amy, g)]
        assert c.members == {bob, me, zed}
        off()
        await cc.connect()
        await wait_until(lambda: len(all_events) == 3, 5, "cy's join")
        await asyncio.sleep(0.05)
        assert len(got) == 2
        assert c.members == {bob, cy, me, zed}
        assert c.state == "open"
        with pytest.raises(ValueError, match="unknown event"):
            c.on("nope", print)
    finally:
        await close_quietly(c, zc, ac, bc, cc)


def test_iteration_ends_after_the_buffered_messages(hub: HubProc) -> None:
    run(_iteration(hub), 30)


async def _iteration(hub: HubProc) -> None:
    g, me = uid("g"), uid("me")
    p = tok_client(hub.url, g, uid("peer"))
    try:
        await p.connect()
        async with tok_client(hub.url, g, me) as c:
            for i in range(3):
                await p.send_group(msg=str(i))
            await wait_until(lambda: c.positions.get("group") is not None and c.positions["group"].offset == 3, 5, "3 messages in")
        assert c.state == "closed"
        assert [m.msg async for m in c] == ["0", "1", "2"]
        with pytest.raises(ClientClosed):
            await c.receive()
    finally:
        await close_quietly(p)


# --------------------------------------------------------------------------
# token refresh


def test_token_refreshed_on_a_new_socket_before_expiry(hub: HubProc, tap: Callable[[HubProc], Tap]) -> None:
    run(_refresh(hub, tap(hub)), 30)


async def _refresh(hub: HubProc, t: Tap) -> None:
    g, me = uid("g"), uid("me")
    issued: list[str] = []

    def get_token() -> str:
        issued.append(mint_token(me, g, ttl=3))  # iat now, exp in 3 s; the hub's leeway is 0
        return issued[-1]

    c = Client(t.url, group=g, client=me, get_token=get_token, min_delay=0.05, max_delay=0.2)
    seen = Events(c)
    try:
        closed_4001 = await hub.ametric(closed_with(4001))
        await c.connect()
        opened_at = time.monotonic()
        await wait_until(lambda: len(t.opened()) == 2, 5, "a second connection")  # about 2.4 s: 20 % of 3 s before exp
        took = time.monotonic() - opened_at
        assert 1.0 <= took < 3.0, took
        conn1, conn2 = t.opened()
        assert protocol_header(t, 1) == f"aether.v3, aether.token.{issued[1]}"
        await asyncio.to_thread(conn1.ended.wait, 3)
        assert conn1.client_close() == (1000, "token refresh")
        assert seen["state"] == [("idle", "connecting"), ("connecting", "open")]  # no flap
        req = conn2.request()
        assert req is not None
        group_epoch = seen["recovered"][1].epoch
        assert req.query["since_group"] == f"{group_epoch}:0"
        assert (await c.send_group(msg="on the new socket")).status == "ok"
        assert [f["msg"] for f in conn2.sent_by_client("msg")] == ["on the new socket"]
        assert conn1.sent_by_client("msg") == []
        await asyncio.sleep(max(0.0, opened_at + 3.3 - time.monotonic()))  # past the first token's exp
        assert await hub.ametric(closed_with(4001)) == closed_4001, "the hub never had to close it"
        assert not seen["disconnected"]
    finally:
        await close_quietly(c)


# --------------------------------------------------------------------------
# close() leaves nothing running


def test_close_leaves_nothing_running(hub: HubProc, limits_hub: HubProc) -> None:
    run(_close_nothing(hub, limits_hub), 30)


async def _close_nothing(hub: HubProc, lim: HubProc) -> None:
    base = asyncio.all_tasks()
    g = uid("g")
    c = tok_client(hub.url, g, uid("me"), heartbeat_interval=0.05)
    await c.connect()
    await c.send_group(msg="x")
    await asyncio.sleep(0.2)  # a few heartbeats
    c.on("state", lambda old, new: asyncio.sleep(0.01))  # an async callback in flight
    await c.close()
    await c.close()
    assert asyncio.all_tasks() == base

    # Closed while waiting for its backoff, and while an attempt is under way: the hub is full
    # (two sockets held), so it answers every attempt 503.
    holders = [tok_client(lim.url, g, uid("hold")) for _ in range(2)]
    for h in holders:
        await h.connect()
    waiting = tok_client(lim.url, g, uid("waiting"), min_delay=1.0, max_delay=1.0)
    seen = Events(waiting)
    try:
        connecting = asyncio.ensure_future(waiting.connect())
        await wait_until(lambda: len(seen["reconnecting"]) >= 1, 5, "a 503")
        assert seen["reconnecting"][0].code == 503
        await asyncio.sleep(0.2)
        await waiting.close()
        with pytest.raises(ClientClosed):
            await connecting
        assert waiting.state == "closed"
    finally:
        await close_quietly(waiting, *holders)
    assert asyncio.all_tasks() == base


def test_close_during_a_hanging_handshake_leaves_nothing(new_hub: Callable[..., HubProc]) -> None:
    h = new_hub()
    run(_hanging(h), 30)


async def _hanging(h: HubProc) -> None:
    """A frozen hub: the kernel completes the TCP handshake (the listen backlog), and the
    upgrade request then waits unread, unanswered."""
    base = asyncio.all_tasks()
    c = tok_client(h.url, uid("g"), uid("me"), connect_timeout=30.0)
    freeze(h.pid)
    try:

        def waiting_unread() -> bool:
            # The hub's end of the connection: established, the request in its receive queue.
            return any(s.local_port == h.port and s.state == ESTABLISHED and s.rx_queue > 0 for s in tcp_sockets())

        def client_end_open() -> bool:
            return any(s.remote_port == h.port and s.state == ESTABLISHED for s in tcp_sockets())

        connecting = asyncio.ensure_future(c.connect())
        await wait_until(waiting_unread, 5, "the upgrade request reached the frozen hub")
        assert c.state == "connecting"
        await c.close()
        with pytest.raises(ClientClosed):
            await connecting
        assert asyncio.all_tasks() == base
        assert c.state == "closed"
        assert not client_end_open(), "the client's socket is closed"
    finally:
        h.sigcont()
        await close_quietly(c)
