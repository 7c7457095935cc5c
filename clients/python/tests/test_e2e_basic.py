"""The client against the real hub, in memory mode and in Redis mode (two hubs on one Redis).

Each test runs twice (the ``cluster`` fixture): once against one in-memory
hub, once with the controller on hub A and the worker on hub B sharing a
real redis-server, so that everything also crosses instances.

- every send helper (group, direct, broadcast) resolves with its ack:
  ``ok`` with the offset and epoch the recipient gets; ``ack=False`` is
  ``sent``; the async iterator yields in order; ``receive(timeout)``;
  presence (query and join/leave events);
- a token that expires on the open socket (exp a few seconds ahead, issued
  long ago so the client cannot refresh it ahead of time, hub leeway 0):
  the hub closes with 4001 (counted in its /metrics), ``get_token`` is
  called again, the client is back at once (not after its 5 s backoff) and
  nothing sent meanwhile is lost or duplicated;
- a short token issued now: the client refreshes it ahead of exp on a new
  socket (the hub never closes it); while both sockets are open the
  iterator still yields each message once;
- ``POST /v3/disconnect`` with ``reconnect: false`` (4010): the client stops
  for good and fires ``disconnected`` (kind ``disconnected_by_service``),
  calls ``get_token`` no more, refuses sends with ``ClientClosed``, and its
  iterator ends; with ``reconnect: true`` (4011) it comes back at once with
  a fresh token, losing nothing;
- ``close()`` (also ``async with``, a close while a send waits for its ack,
  a client that never got in) leaves no task and no descriptor behind, and
  ends ``async for``;
- the command line: ``tail`` prints what ``send`` sent, ``send`` prints the ack;
- the in-memory hub restarted: the resuming client is told
  ``recovered: false`` (a new epoch), and nothing is replayed twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import pytest

from aether_hub import AetherError, Client, ClientClosed, ConnectError
from conftest import (
    Cluster,
    Collector,
    HubProc,
    Recorder,
    assert_exactly_once,
    close_quietly,
    closed_with,
    fd_count,
    free_port,
    memory_cluster,
    mint_token,
    run,
    send_numbered,
    uid,
    wait_all_delivered,
    wait_until,
)


def token_client(url: str | list[str], group: str, client: str, **options: Any) -> Client:
    return Client(url, group=group, client=client, token=mint_token(client, group), **options)


# --------------------------------------------------------------------------
# send helpers, acks, presence, order


def test_send_helpers_acks_presence_and_order(cluster: Cluster) -> None:
    run(_send_helpers(cluster), 90)


async def _send_helpers(c: Cluster) -> None:
    g, far_g = uid("g"), uid("gf")
    cid, wid, fid = uid("ctl"), uid("w"), uid("far")
    ctl = token_client(c.a.url, g, cid)
    w = token_client(c.b.url, g, wid)
    far = token_client(c.b.url, far_g, fid)
    ctl_events = Recorder(ctl)
    try:
        await ctl.connect()
        await far.connect()
        assert ctl.state == "open"
        col = Collector(w)
        await w.connect()
        assert w.state == "open"

        # Presence: the controller hears the worker join; both see both.
        await wait_until(
            lambda: any(p.event == "join" and p.client_id == wid and p.group_id == g for p in ctl_events.presence),
            10,
            "the controller hears the worker join",
        )
        assert await ctl.presence() == sorted([cid, wid])
        assert await w.presence() == sorted([cid, wid])
        assert await far.presence() == [fid]

        # Every send helper, acknowledged.
        a_group = await ctl.send_group(cmd="start", payload={"n": 1})
        a_direct = await ctl.send_direct(wid, msg="to you", payload={"n": 2})
        a_bcast = await ctl.broadcast(msg="everyone", payload={"n": 3})
        a_group2 = await ctl.send_group(cmd="second", payload={"n": 4})
        for a in (a_group, a_direct, a_bcast, a_group2):
            assert a.status == "ok", a
            assert isinstance(a.offset, int), a
            assert a.offset >= 1, a
            assert isinstance(a.epoch, str), a
            assert a.epoch, a
            assert a.duplicate is False, a
        assert len({a_group.ack_id, a_direct.ack_id, a_bcast.ack_id, a_group2.ack_id}) == 4
        assert (a_group2.offset, a_group2.epoch) == (a_group.offset + 1, a_group.epoch)

        # ack=False: not waited for, status "sent"; the message is still kept.
        fired = await ctl.send_group(cmd="fired", payload={"n": 5}, ack=False)
        assert fired.status == "sent", fired
        a_after = await ctl.send_group(cmd="after", payload={"n": 6})
        assert (a_after.status, a_after.offset) == ("ok", a_group2.offset + 2), a_after

        # A burst, half acknowledged one by one, half fire-and-forget.
        burst = []
        for i in range(40):
            burst.append(await ctl.send_group(cmd="burst", payload={"n": 100 + i}, ack=i % 2 == 0))

        want = [
            ("cmd", "group", "start", None, 1),
            ("msg", "direct", None, "to you", 2),
            ("msg", "broadcast", None, "everyone", 3),
            ("cmd", "group", "second", None, 4),
            ("cmd", "group", "fired", None, 5),
            ("cmd", "group", "after", None, 6),
        ] + [("cmd", "group", "burst", None, 100 + i) for i in range(40)]
        await wait_until(lambda: len(col.items) >= len(want), 15, f"worker gets {len(want)} messages")
        await asyncio.sleep(0.5)
        got = [(m.msg_type, m.target, m.cmd, m.msg, m.payload["n"]) for m in col.items]
        assert got == want, "the iterator yields every message once, in order"

        by_n = {m.payload["n"]: m for m in col.items}
        for n, ack in ((1, a_group), (2, a_direct), (3, a_bcast), (4, a_group2), (6, a_after)):
            m = by_n[n]
            assert (m.offset, m.epoch) == (ack.offset, ack.epoch), (n, m, ack)
            assert m.from_id == cid
        assert (by_n[1].group_id, by_n[1].to_id) == (g, None)
        assert by_n[2].to_id == wid
        group_offsets = [m.offset for m in col.items if m.target == "group"]
        assert group_offsets == list(range(group_offsets[0], group_offsets[0] + len(group_offsets)))
        for ack in burst[::2]:
            assert ack.status == "ok"
        for ack in burst[1::2]:
            assert ack.status == "sent"
        for m in col.items:
            assert isinstance(m.raw, (str, bytes, dict)), type(m.raw)
            raw = json.loads(m.raw) if isinstance(m.raw, (str, bytes)) else m.raw
            assert "ack_id" not in raw, "recipients never see ack_id"

        # receive(): the client in another group gets the broadcast only.
        m = await far.receive(timeout=10)
        assert (m.target, m.msg, m.from_id) == ("broadcast", "everyone", cid)
        nothing = await _receive_nothing(far, 0.5)
        assert nothing, "a group message of another group reached the far client"

        # The worker leaves: the controller hears it.
        await w.close()
        assert w.state == "closed"
        await wait_until(
            lambda: any(p.event == "leave" and p.client_id == wid for p in ctl_events.presence),
            10,
            "the controller hears the worker leave",
        )
        assert await ctl.presence() == [cid]
        assert await col.wait_ended(5), "the iterator ends after close()"
        assert col.error is None, col.error
    finally:
        await close_quietly(ctl, w, far)


async def _receive_nothing(client: Client, timeout: float) -> bool:
    try:
        m = await client.receive(timeout=timeout)
    except asyncio.TimeoutError:
        return True
    return m is None


# --------------------------------------------------------------------------
# tokens: a short-lived token expires on the open socket


def test_expired_token_4001_fresh_token_and_no_loss(cluster: Cluster) -> None:
    run(_token_expiry(cluster), 90)


async def _token_expiry(c: Cluster) -> None:
    g, cid, wid = uid("g"), uid("ctl"), uid("w")
    calls: list[float] = []

    async def get_token() -> str:
        calls.append(time.monotonic())
        now = int(time.time())
        if len(calls) == 1:
            # Expires 2 to 3 s from now (the hub's leeway is 0). Issued long ago, so that the
            # client cannot schedule a refresh ahead of exp: the hub's 4001 is what ends it.
            return mint_token(wid, g, iat=now - 3600, exp=now + 3)
        return mint_token(wid, g, exp=now + 3600)

    # A large backoff: a reconnect that went through it would show.
    w = Client(c.b.url, group=g, client=wid, get_token=get_token, min_delay=5.0, max_delay=10.0)
    ctl = token_client(c.a.url, g, cid)
    rec = Recorder(w)
    try:
        await ctl.connect()
        col = Collector(w)
        await w.connect()
        assert len(calls) == 1
        closed_4001 = await c.b.ametric(closed_with(4001))
        opened = time.monotonic()
        sent = await send_numbered(
            ctl,
            wid,
            interval=0.05,
            max_n=400,
            until=lambda n: n >= 20 and rec.opens() >= 2 and time.monotonic() - opened > 1,
        )
        await wait_all_delivered(col, sent, 15)
        assert_exactly_once(col, sent)
        # The hub closed the socket (4001) at exp; the client asked for a fresh token and was back at once.
        assert await c.b.ametric(closed_with(4001)) == closed_4001 + 1, "the hub closed the socket with 4001"
        assert len(calls) == 2, f"get_token called {len(calls)} times"
        assert rec.reconnects() == 1, rec.states
        down = next(t for t, old, new in rec.states if old == "open" and new != "open")
        up = [t for t, _, new in rec.states if new == "open"][-1]
        assert up - down < 2.0, f"back after {up - down:.2f} s: 4001 reconnects at once, not after the backoff"
        assert down - opened < 5.0, f"closed {down - opened:.2f} s after the open: the hub closes at exp"
        assert not rec.disconnected, rec.disconnected
        assert rec.recoveries, "a recovery summary after the reconnect"
        assert all(r.recovered for r in rec.recoveries), rec.recoveries
        assert w.state == "open"
    finally:
        await close_quietly(ctl, w)


def test_short_token_refreshed_before_expiry_no_loss_no_duplicate(cluster: Cluster) -> None:
    run(_token_refresh(cluster), 90)


async def _token_refresh(c: Cluster) -> None:
    """A token good for 4 s (issued now): the client moves to a new socket with a fresh token
    before exp, so the hub never closes it; while both sockets are open, messages reach both,
    and the iterator still yields each once."""
    g, cid, wid = uid("g"), uid("ctl"), uid("w")
    calls: list[float] = []

    def get_token() -> str:
        calls.append(time.monotonic())
        return mint_token(wid, g, ttl=4 if len(calls) == 1 else 3600)

    w = Client(c.b.url, group=g, client=wid, get_token=get_token, min_delay=5.0, max_delay=10.0)
    ctl = token_client(c.a.url, g, cid)
    rec = Recorder(w)
    try:
        await ctl.connect()
        col = Collector(w)
        await w.connect()
        closed_4001 = await c.b.ametric(closed_with(4001))
        opened = time.monotonic()
        sent = await send_numbered(ctl, wid, interval=0.02, max_n=1000, until=lambda n: n >= 20 and time.monotonic() - opened > 6)
        await wait_all_delivered(col, sent, 15)
        assert_exactly_once(col, sent)
        assert len(calls) == 2, f"get_token called {len(calls)} times"
        assert calls[1] - opened < 4.0, "the fresh token was fetched before the first one expired"
        assert rec.new_states() == ["connecting", "open"], f"never left open: {rec.states}"
        assert await c.b.ametric(closed_with(4001)) == closed_4001, "the hub never had to close it with 4001"
        assert not rec.disconnected, rec.disconnected
    finally:
        await close_quietly(ctl, w)


# --------------------------------------------------------------------------
# server API: 4010 and 4011


def test_disconnect_4010_stops_for_good(cluster: Cluster) -> None:
    run(_disconnect_4010(cluster), 60)


async def _disconnect_4010(c: Cluster) -> None:
    g, cid, wid = uid("g"), uid("ctl"), uid("w")
    calls: list[float] = []

    def get_token() -> str:
        calls.append(time.monotonic())
        return mint_token(wid, g)

    w = Client(c.b.url, group=g, client=wid, get_token=get_token, min_delay=0.05, max_delay=0.3)
    ctl = token_client(c.a.url, g, cid)
    rec = Recorder(w)
    try:
        await ctl.connect()
        col = Collector(w)
        await w.connect()
        await wait_until(lambda: _has_member(ctl, wid), 10, "worker present")

        closed_4010 = await c.b.ametric(closed_with(4010))
        # On the other instance than the worker's: the server API reaches every instance.
        status, body = await c.a.apost("/v3/disconnect", {"client_id": wid, "reconnect": False, "reason": "account suspended"})
        assert (status, body) == (202, {"status": "accepted"})
        await wait_until(lambda: len(rec.disconnected) == 1, 5, "disconnected fired")
        final = rec.disconnected[0]
        assert (final.code, final.reason, final.kind) == (4010, "account suspended", "disconnected_by_service"), final
        await wait_until(lambda: w.state == "closed", 5, "state closed")
        assert rec.states[-1][1:] == ("open", "closed"), rec.states
        assert await c.b.ametric(closed_with(4010)) == closed_4010 + 1

        # For good: nothing more happens, well past the backoff.
        await asyncio.sleep(2.0)
        assert len(calls) == 1, "get_token not called again"
        assert rec.new_states().count("closed") == 1, rec.states
        assert rec.new_states()[-1] == "closed", rec.states
        assert (rec.opens(), len(rec.disconnected)) == (1, 1), rec.states
        assert w.state == "closed"
        await wait_until(lambda: _lacks_member(ctl, wid), 10, "worker gone from presence")
        with pytest.raises(ClientClosed):
            await w.send_group(cmd="after")
        assert await col.wait_ended(5), "the iterator ends after a final close"
        assert col.error is None or isinstance(col.error, AetherError), col.error
        await w.close()  # closing again is harmless
        assert ctl.state == "open", "only the named client was disconnected"
    finally:
        await close_quietly(ctl, w)


def _has_member(c: Client, who: str) -> Any:
    async def check() -> bool:
        return who in await c.presence()

    return check()


def _lacks_member(c: Client, who: str) -> Any:
    async def check() -> bool:
        return who not in await c.presence()

    return check()


def test_disconnect_4011_reconnects_at_once(cluster: Cluster) -> None:
    run(_disconnect_4011(cluster), 60)


async def _disconnect_4011(c: Cluster) -> None:
    g, cid, wid = uid("g"), uid("ctl"), uid("w")
    issued: list[str] = []

    def get_token() -> str:
        issued.append(mint_token(wid, g, jti=uid("jti")))
        return issued[-1]

    w = Client(c.b.url, group=g, client=wid, get_token=get_token, min_delay=5.0, max_delay=10.0)
    ctl = token_client(c.a.url, g, cid)
    rec = Recorder(w)
    try:
        await ctl.connect()
        col = Collector(w)
        await w.connect()
        closed_4011 = await c.b.ametric(closed_with(4011))
        t0 = time.monotonic()
        status, body = await c.a.apost("/v3/disconnect", {"client_id": wid, "reconnect": True, "reason": "moved"})
        assert (status, body) == (202, {"status": "accepted"})
        # Sent while the worker is being moved: none lost, none twice.
        sent = await send_numbered(ctl, wid, interval=0.02, until=lambda n: n >= 30 and rec.opens() >= 2)
        await wait_until(lambda: rec.opens() >= 2, 5, "back open")
        took = [t for t, _, new in rec.states if new == "open"][-1] - t0
        assert took < 3.0, f"4011: back after {took:.2f} s (the hub closes within 1 s; no backoff)"
        await wait_all_delivered(col, sent, 15)
        assert_exactly_once(col, sent)
        assert await c.b.ametric(closed_with(4011)) == closed_4011 + 1
        assert len(issued) == 2, issued
        assert issued[0] != issued[1], "a fresh token for the new socket"
        assert not rec.disconnected, rec.disconnected
        assert rec.reconnects() == 1, rec.states
        assert w.state == "open"
    finally:
        await close_quietly(ctl, w)


# --------------------------------------------------------------------------
# no leak after close()


def test_close_leaves_no_task_and_no_descriptor(cluster: Cluster) -> None:
    run(_no_leak(cluster), 90)


async def _no_leak(c: Cluster) -> None:
    base = set(asyncio.all_tasks())
    fds = fd_count()
    g = uid("g")
    for round_ in range(3):
        cid, wid = uid("ctl"), uid("w")
        ctl = token_client(c.a.url, g, cid)
        w = token_client([c.b.url, c.a.url], g, wid, heartbeat_interval=0.2)
        await ctl.connect()
        col = Collector(w)
        await w.connect()
        acks = [await ctl.send_direct(wid, cmd="job", payload={"n": i}) for i in range(1, 6)]
        assert all(a.status == "ok" for a in acks)
        await ctl.send_direct(wid, cmd="job", payload={"n": 6}, ack=False)
        assert await ctl.presence() == sorted([cid, wid])
        await wait_until(lambda col=col: len(col.numbers("direct")) == 6, 10, "worker got 6")
        await asyncio.sleep(0.5)  # a few heartbeats
        if round_ == 1:
            # Closed while a send waits for its ack.
            pending = asyncio.create_task(ctl.send_group(cmd="late", payload={"n": 0}))
            await asyncio.sleep(0)
            await ctl.close()
            with_error = await asyncio.gather(pending, return_exceptions=True)
            assert not isinstance(with_error[0], BaseException) or isinstance(with_error[0], (AetherError, asyncio.CancelledError))
        else:
            await ctl.close()
        await w.close()
        assert (ctl.state, w.state) == ("closed", "closed")
        assert await col.wait_ended(5), "async for ends by itself after close()"

    # async with
    cid = uid("ctl")
    async with token_client(c.a.url, g, cid) as ctx:
        assert ctx.state == "open"
        assert (await ctx.send_group(cmd="x", payload={"n": 1})).status == "ok"
    assert ctx.state == "closed"

    # A client that never got in: reconnect=False raises ConnectError.
    dead = f"ws://127.0.0.1:{free_port()}"
    lonely = token_client(dead, g, uid("lonely"), reconnect=False, connect_timeout=2.0)
    with pytest.raises(ConnectError):
        await lonely.connect()
    await lonely.close()

    # One retrying with backoff, closed while it waits.
    retrying = token_client(dead, g, uid("retry"), min_delay=0.05, max_delay=0.2, connect_timeout=1.0)
    connecting = asyncio.create_task(retrying.connect())
    await asyncio.sleep(1.5)  # several refused attempts
    assert not connecting.done(), "connect() keeps trying (reconnect=True)"
    assert retrying.state in ("connecting", "reconnecting"), retrying.state
    await retrying.close()
    done, _ = await asyncio.wait({connecting}, timeout=5)
    assert done, "connect() ends once the client is closed"
    exc = connecting.exception() if not connecting.cancelled() else None
    assert exc is None or isinstance(exc, AetherError), repr(exc)
    assert retrying.state == "closed"

    await asyncio.sleep(0.2)
    left = [t for t in asyncio.all_tasks() - base if not t.done()]
    await wait_until(lambda: not [t for t in asyncio.all_tasks() - base if not t.done()], 5, f"tasks back to the baseline: {left}")
    await wait_until(lambda: fd_count() <= fds + 1, 5, f"descriptors back to {fds} (now {fd_count()})")


# --------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def open_hub() -> Any:
    """A hub in memory with no credentials (the CLI's default)."""
    hub = HubProc({"AETHER_HISTORY_SIZE": "100"}, name=uid("hub-cli")).start()
    try:
        yield hub
    finally:
        hub.kill9()


def test_cli_tail_and_send(open_hub: HubProc) -> None:
    run(_cli(open_hub), 60)


async def _cli(hub: HubProc) -> None:
    g, tail_id, send_id = uid("g"), uid("tail"), uid("send")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aether_hub", "tail", "--url", hub.url, "--group", g, "--client", tail_id,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:

        async def tail_present() -> bool:
            status, body = await asyncio.to_thread(hub.get_json, f"/v3/groups/{g}/presence", key=None)
            return status == 200 and tail_id in body["members"]

        await wait_until(tail_present, 15, "tail connected")
        send = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aether_hub", "send", "--url", hub.url, "--group", g, "--client", send_id,
            "--group-target", "--cmd", "reboot",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(send.communicate(), 20)
        assert send.returncode == 0, (send.returncode, out, err)
        lines = [line for line in out.decode().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        ack = json.loads(lines[0])
        assert ack["status"] == "ok", ack
        assert isinstance(ack["offset"], int), ack
        assert ack["epoch"], ack

        assert tail.stdout is not None
        line = await asyncio.wait_for(tail.stdout.readline(), 10)
        m = json.loads(line)
        assert (m["msg_type"], m["target"], m["cmd"], m["from_id"], m["group_id"]) == ("cmd", "group", "reboot", send_id, g), m
        assert (m["offset"], m["epoch"]) == (ack["offset"], ack["epoch"]), (m, ack)
    finally:
        if tail.returncode is None:
            tail.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(tail.wait(), 5)
            except asyncio.TimeoutError:
                tail.kill()
                await tail.wait()


def test_memory_restart_is_a_new_epoch() -> None:
    """The in-memory hub restarted: a resuming client is told recovered:false, nothing replayed twice."""
    c = memory_cluster()
    try:
        run(_memory_restart(c), 60)
    finally:
        c.close()


async def _memory_restart(c: Cluster) -> None:
    g, cid, wid = uid("g"), uid("ctl"), uid("w")
    w = token_client(c.a.url, g, wid, min_delay=0.05, max_delay=0.3)
    rec = Recorder(w)
    try:
        col = Collector(w)
        await w.connect()
        ctl = token_client(c.a.url, g, cid)
        await ctl.connect()
        first = await ctl.send_direct(wid, cmd="job", payload={"n": 1})
        await wait_until(lambda: len(col.items) == 1, 10, "first message")
        await ctl.close()
        c.a.kill9()
        await c.a.astart()
        await wait_until(lambda: rec.opens() >= 2, 15, "worker back")
        await wait_until(lambda: any(r.route == "client" for r in rec.recoveries), 5, "recovery of the client route")
        client_rec = [r for r in rec.recoveries if r.route == "client"]
        assert client_rec[-1].recovered is False, rec.recoveries
        ctl = token_client(c.a.url, g, cid)
        await ctl.connect()
        second = await ctl.send_direct(wid, cmd="job", payload={"n": 2})
        assert second.epoch != first.epoch
        await wait_until(lambda: len(col.items) == 2, 10, "second message")
        await asyncio.sleep(0.5)
        assert [m.payload["n"] for m in col.items] == [1, 2]
        await ctl.close()
    finally:
        await close_quietly(w)
