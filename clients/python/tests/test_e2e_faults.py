"""Faults under traffic: two real hubs (hub-a, hub-b) on a real redis-server.

In every test a controller on hub B sends numbered cmds (``payload.n`` =
1, 2, ...) to the group and directly to the worker, each waiting for its
ack, while the worker, which was given both URLs ``[hub-a, hub-b]`` and
started on hub A, reads with ``async for``. A fault is made during the
traffic; at the end the worker's iterator must have yielded every kept
message exactly once and in order, per route, each with the offset and
epoch its ack named.

- (a) hub A killed with SIGKILL: the worker moves to hub B and resumes;
- (b) Redis killed (SIGKILL) and restarted with persistence on
  (``appendonly yes``, ``appendfsync always``), so the history and its
  numbering survive: the worker stays, recovers ``true``; sends that the
  hub answered ``failed`` while Redis was down are sent again by the
  controller (they reached nobody), ``unconfirmed`` ones are allowed to be
  there once or not at all;
- (c) hub A's pub/sub connection killed three times (``CLIENT KILL`` of
  ``aether:{instance}:pubsub``): gap repair fills in, the worker does not
  even need to reconnect;
- (d) hub A frozen (SIGSTOP) for longer than the worker's dead-link
  deadline (3 s, heartbeats every second): the worker notices, moves to
  hub B and resumes while A is still frozen; SIGCONT afterwards;
- (f) the other way round, the controller's hub killed: the sends it makes
  while reconnecting wait in its bounded queue (``send_queue``: one more is
  refused at once), are written once it is open on hub B, each acked ``ok``
  with the position the worker gets, in the order they were made.

The network partition is in ``test_e2e_netns.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aether_hub import AetherError, Client
from conftest import (
    Cluster,
    Collector,
    HubProc,
    Recorder,
    Sent,
    ahttp_status,
    assert_exactly_once,
    close_quietly,
    mint_token,
    run,
    send_numbered,
    uid,
    wait_all_delivered,
    wait_until,
    worker_client,
)

DEAD_LINK = 3.0


async def traffic_with_fault(
    c: Cluster,
    fault: Callable[[Recorder], Awaitable[None]],
    *,
    min_messages: int = 60,
    retry_failed: bool = False,
    deliver_within: float = 30.0,
) -> tuple[Collector, Recorder, dict[str, Sent], Client]:
    """Runs the controller's numbered traffic, makes ``fault`` after a second of it, and waits for delivery."""
    g, cid, wid = uid("g"), uid("ctl"), uid("w")
    w = worker_client([c.a.url, c.b.url], g, wid)
    ctl = Client(c.b.url, group=g, client=cid, token=mint_token(cid, g))
    rec = Recorder(w)
    col = Collector(w)
    await w.connect()
    assert (await sockets(c.a), await sockets(c.b)) == (1, 0), "the worker starts on hub A"
    await ctl.connect()
    fault_done = asyncio.Event()

    async def make_fault() -> None:
        await asyncio.sleep(1.0)
        try:
            await fault(rec)
        finally:
            fault_done.set()

    faulting = asyncio.create_task(make_fault())
    try:
        sent = await send_numbered(
            ctl,
            wid,
            interval=0.04,
            retry_failed=retry_failed,
            until=lambda n: n >= min_messages and fault_done.is_set() and w.state == "open",
        )
        await faulting
        await wait_all_delivered(col, sent, deliver_within)
    except BaseException:
        faulting.cancel()
        await close_quietly(w, ctl)
        raise
    return col, rec, sent, ctl


async def sockets(hub: HubProc) -> int:
    """How many sockets ``hub`` holds (``GET /v3/info``)."""
    status, info = await asyncio.to_thread(hub.get_json, "/v3/info")
    assert status == 200, info
    return int(info["sockets"])


# --------------------------------------------------------------------------
# (a) kill -9 of the worker's hub


def test_a_worker_hub_killed(fresh_redis_cluster: Cluster) -> None:
    run(_hub_killed(fresh_redis_cluster), 120)


async def _hub_killed(c: Cluster) -> None:
    killed_at: list[float] = []

    async def fault(rec: Recorder) -> None:
        c.a.kill9()
        killed_at.append(time.monotonic())
        await wait_until(lambda: rec.opens() >= 2, 15, "worker open again on hub B")

    col, rec, sent, ctl = await traffic_with_fault(c, fault)
    try:
        assert_exactly_once(col, sent)
        print(f"hub killed: recoveries {rec.recoveries}")
        assert rec.reconnects() >= 1, rec.states
        assert rec.recoveries, "a recovery summary after the reconnect"
        assert all(r.recovered for r in rec.recoveries), rec.recoveries
        assert await sockets(c.b) == 2, "hub B holds the worker and the controller"
    finally:
        await close_quietly(ctl, col.client)


# --------------------------------------------------------------------------
# (b) Redis restarted, with persistence on


def test_b_redis_restarted_with_persistence(persistent_redis_cluster: Cluster) -> None:
    run(_redis_restarted(persistent_redis_cluster), 150)


async def _redis_restarted(c: Cluster) -> None:
    assert c.redis is not None
    redis = c.redis

    async def fault(rec: Recorder) -> None:
        redis.kill()
        await asyncio.sleep(1.0)  # down long enough for sends to fail
        redis.start()  # from the loop's thread: processes are only started from the main thread

        async def ready() -> bool:
            return all([await ahttp_status(h.host, h.port, "/readyz") == 200 for h in c.hubs])

        await wait_until(ready, 30, "both hubs ready again", interval=0.1)

    col, rec, sent, ctl = await traffic_with_fault(c, fault, retry_failed=True, deliver_within=40)
    try:
        assert_exactly_once(col, sent, allow_unconfirmed=True)
        failed = sum(s.failed_attempts for s in sent.values())
        unconfirmed = sum(len(s.unconfirmed) for s in sent.values())
        print(f"redis restart: {failed} sends acked failed and sent again, {unconfirmed} unconfirmed")
        # The numbering survived (persistence): one epoch per route throughout.
        for route in ("group", "direct"):
            epochs = {m.epoch for m in col.of(route)}
            assert len(epochs) == 1, f"{route}: epochs {epochs}"
        assert all(r.recovered for r in rec.recoveries), rec.recoveries
        assert ctl.state == "open"
    finally:
        await close_quietly(ctl, col.client)


# --------------------------------------------------------------------------
# (c) the worker's instance loses its pub/sub connection


def test_c_pubsub_connection_killed(fresh_redis_cluster: Cluster) -> None:
    run(_pubsub_killed(fresh_redis_cluster), 120)


async def _pubsub_killed(c: Cluster) -> None:
    assert c.redis is not None
    redis = c.redis
    name = f"aether:{c.a.name}:pubsub"
    kills: list[int] = []

    async def fault(rec: Recorder) -> None:
        for _ in range(3):
            # Each kill on a live connection: wait for it to be back first.
            await wait_until(lambda: asyncio.to_thread(lambda: name in redis.client_names()), 15, f"{name} open")
            kills.append(await asyncio.to_thread(redis.kill_named, name))
            await asyncio.sleep(0.7)

    col, rec, sent, ctl = await traffic_with_fault(c, fault)
    try:
        assert kills == [1, 1, 1], kills
        assert_exactly_once(col, sent)
        assert all(r.recovered for r in rec.recoveries), rec.recoveries
    finally:
        await close_quietly(ctl, col.client)


# --------------------------------------------------------------------------
# (d) the worker's hub frozen longer than the dead-link deadline


def test_d_hub_frozen_past_dead_link(fresh_redis_cluster: Cluster) -> None:
    run(_hub_frozen(fresh_redis_cluster), 120)


async def _hub_frozen(c: Cluster) -> None:
    frozen: list[float] = []
    thawed: list[float] = []

    async def fault(rec: Recorder) -> None:
        c.a.sigstop()
        frozen.append(time.monotonic())
        try:
            # The worker notices (no frame within 3 s) and moves to hub B, all while A is frozen.
            await wait_until(lambda: rec.opens() >= 2, DEAD_LINK + 12, "worker open again while hub A is frozen")
            await asyncio.sleep(1.0)
        finally:
            c.a.sigcont()
            thawed.append(time.monotonic())

    col, rec, sent, ctl = await traffic_with_fault(c, fault)
    try:
        assert_exactly_once(col, sent)
        down = next(t for t, old, new in rec.states if old == "open" and new != "open")
        up = [t for t, _, new in rec.states if new == "open"][1]
        noticed = down - frozen[0]
        print(f"hub frozen: the worker noticed after {noticed:.2f} s, was back after {up - frozen[0]:.2f} s")
        assert DEAD_LINK * 0.8 <= noticed <= DEAD_LINK + 2.5, f"dead link noticed after {noticed:.2f} s"
        assert up < thawed[0], "back (on hub B) before hub A was thawed"
        # What hub A could not deliver during those seconds came as a replay.
        assert sum(r.missed for r in rec.recoveries) > 0, rec.recoveries
        assert rec.recoveries, "a recovery summary after the reconnect"
        assert all(r.recovered for r in rec.recoveries), rec.recoveries
        assert await sockets(c.b) == 2, "hub B holds the worker and the controller"
    finally:
        await close_quietly(ctl, col.client)


# --------------------------------------------------------------------------
# (f) the controller's hub killed: sends made while it reconnects are queued, flushed, acked


def test_f_sender_hub_killed_queued_sends_flushed(fresh_redis_cluster: Cluster) -> None:
    run(_sender_hub_killed(fresh_redis_cluster), 120)


async def _sender_hub_killed(c: Cluster) -> None:
    g, cid, small_id, wid = uid("g"), uid("ctl"), uid("small"), uid("w")
    w = worker_client([c.b.url], g, wid)
    ctl = worker_client([c.a.url, c.b.url], g, cid)
    small = worker_client([c.a.url, c.b.url], g, small_id, send_queue=3)
    rec = Recorder(ctl)
    col = Collector(w)
    queued: list[asyncio.Future[Any]] = []
    held: list[asyncio.Future[Any]] = []

    # The sends are made by the state callback, the moment each client starts reconnecting
    # (in this order: they are queued, then written once it is open again).
    def ctl_away(old: str, new: str) -> None:
        if new == "reconnecting" and not queued:
            queued.extend(asyncio.ensure_future(ctl.send_group(cmd="job", payload={"n": n})) for n in range(11, 41))
            queued.extend(asyncio.ensure_future(ctl.send_direct(wid, cmd="job", payload={"n": n})) for n in range(1, 11))

    def small_away(old: str, new: str) -> None:
        if new == "reconnecting" and not held:
            # A bounded queue: send_queue=3 holds three; the fourth is refused at once.
            held.extend(asyncio.ensure_future(small.send_group(cmd="small", payload={"n": n})) for n in range(1, 5))

    try:
        await w.connect()
        await ctl.connect()
        await small.connect()
        before = [await ctl.send_group(cmd="job", payload={"n": n}) for n in range(1, 11)]
        assert all(a.status == "ok" for a in before), before
        ctl.on("state", ctl_away)
        small.on("state", small_away)
        c.a.kill9()
        await wait_until(lambda: bool(queued) and bool(held), 10, "both senders notice")
        acks = await asyncio.wait_for(asyncio.gather(*queued), 30)
        assert all(a.status == "ok" for a in acks), [a for a in acks if a.status != "ok"]
        small_acks = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 30)
        assert [getattr(a, "status", None) for a in small_acks[:3]] == ["ok"] * 3, small_acks
        assert isinstance(small_acks[3], AetherError), f"the fourth send past send_queue=3: {small_acks[3]!r}"
        assert rec.opens() == 2, rec.states
        group_acks = before + list(acks[:30])
        await wait_until(lambda: len(col.numbers("group")) >= 40 and len(col.numbers("direct")) >= 10, 15, "the worker got them all")
        await asyncio.sleep(1.0)
        assert col.numbers("group") == list(range(1, 41)), col.numbers("group")
        assert col.numbers("direct") == list(range(1, 11)), col.numbers("direct")
        assert [m.payload["n"] for m in col.items if m.cmd == "small"] == [1, 2, 3]
        got = {m.payload["n"]: (m.offset, m.epoch) for m in col.of("group")}
        assert all(got[n] == (a.offset, a.epoch) for n, a in enumerate(group_acks, start=1)), "each ack names its message's position"
    finally:
        await close_quietly(ctl, small, w)
        for f in queued + held:
            if f.done() and not f.cancelled():
                f.exception()  # retrieved: a failed test leaves no "never retrieved" noise
