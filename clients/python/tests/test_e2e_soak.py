"""A soak: many clients in one process on two hubs, with reconnect churn.

``AETHER_PY_SOAK_CLIENTS`` workers (default 200) in ``AETHER_PY_SOAK_GROUPS``
groups (default 10), half given ``[hub-a, hub-b]`` and half ``[hub-b,
hub-a]``, read with ``async for``; one controller per group, on hub B, sends
a numbered group cmd and a numbered direct cmd (to each worker in turn)
every half second, each acknowledged, for ``AETHER_PY_SOAK_SECS`` seconds
(default 90). The churn, once in the default run: a third of the way in,
hub A is killed with SIGKILL (its workers move to hub B and resume; hub B
then holds every socket); half way, hub A is started again; two thirds of
the way, every worker is sent a 4011 (``POST /v3/disconnect``,
``reconnect: true``) and goes on to its next URL, hub A, at once (hub A then
holds every worker). ``test_soak_long_repeated_churn`` (marked slow) repeats
the cycle ``AETHER_PY_SOAK_CHURN`` times (default 4) over
``AETHER_PY_SOAK_LONG_SECS`` (default 480), so that every kill moves all 200.

At the end:

- no loss: each worker got its group's cmds 1..N and its own direct cmds
  1..K, each exactly once and in order, each at the offset its ack named
  (checked as they arrive: the test keeps nothing per message);
- memory roughly flat: the RSS grew by less than ``AETHER_PY_SOAK_RSS_MB``
  (default 16) MiB between the end of the warm-up and the end of the run
  (``AETHER_PY_SOAK_LONG_RSS_MB``, default 24, for the long one; measured
  here: 4 MiB in 90 s, 12 MiB in 480 s, while tracemalloc shows the Python
  objects flat: the rest is the allocator);
- descriptors flat: as many at the end as after the warm-up (sockets were
  replaced, not added to), and back to the baseline after ``close()``;
- no task leak: ``asyncio.all_tasks()`` is back to the baseline after every
  client is closed, and every ``async for`` ended by itself.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from aether_hub import Client
from conftest import (
    Cluster,
    HubProc,
    close_quietly,
    fd_count,
    mint_token,
    rss_bytes,
    run,
    uid,
    wait_until,
)

SOAK_SECS = float(os.environ.get("AETHER_PY_SOAK_SECS", "90"))
CLIENTS = int(os.environ.get("AETHER_PY_SOAK_CLIENTS", "200"))
GROUPS = int(os.environ.get("AETHER_PY_SOAK_GROUPS", "10"))
RSS_MB = float(os.environ.get("AETHER_PY_SOAK_RSS_MB", "16"))
LONG_RSS_MB = float(os.environ.get("AETHER_PY_SOAK_LONG_RSS_MB", "24"))
LONG_SECS = float(os.environ.get("AETHER_PY_SOAK_LONG_SECS", "480"))
LONG_CHURN = int(os.environ.get("AETHER_PY_SOAK_CHURN", "4"))
EVERY = 0.5


@dataclass
class Route:
    """One route of one worker, checked as messages arrive (the test keeps O(1) per worker, so
    that the RSS it measures is the client's): numbers 1, 2, 3, ... once each, in order, each at
    the offset of its number (each route of the soak has one sender, and starts empty)."""

    received: int = 0
    errors: list[str] = field(default_factory=list)

    def see(self, n: int, offset: int | None) -> None:
        if (n != self.received + 1 or offset != n) and len(self.errors) < 10:
            self.errors.append(f"after {self.received} got n={n} at offset {offset}")
        self.received = max(self.received, n)


class Counts:
    """What the soak needs of a client's events, counted (conftest's Recorder keeps every
    event, presence included: with 20 clients a group and every one reconnecting, that would
    be the test's own memory growing)."""

    def __init__(self, client: Client) -> None:
        self.opens = 0
        self.not_recovered: list[Any] = []
        self.last_states: list[tuple[str, str]] = []
        client.on("state", self._state)
        client.on("recovered", self._recovered)

    def _state(self, old: str, new: str) -> None:
        self.opens += new == "open"
        self.last_states = [*self.last_states[-5:], (old, new)]

    def _recovered(self, r: Any) -> None:
        if not r.recovered and len(self.not_recovered) < 10:
            self.not_recovered.append(r)


@dataclass
class Worker:
    id: str
    client: Client
    group: int
    starts_on_a: bool
    rec: Counts
    group_route: Route = field(default_factory=Route)
    direct_route: Route = field(default_factory=Route)
    direct_sent: int = 0
    task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        async for m in self.client:
            if m.cmd != "soak":
                continue
            route = self.group_route if m.target == "group" else self.direct_route
            route.see(int(m.payload["n"]), m.offset)


def test_soak_many_clients_with_hub_churn(fresh_redis_cluster: Cluster) -> None:
    run(_soak(fresh_redis_cluster, SOAK_SECS, 1, RSS_MB), SOAK_SECS + 240)


@pytest.mark.slow
def test_soak_long_repeated_churn(fresh_redis_cluster: Cluster) -> None:
    """The same for ``AETHER_PY_SOAK_LONG_SECS`` (default 480) with ``AETHER_PY_SOAK_CHURN`` (default 4) kill-restart-rotate cycles."""
    run(_soak(fresh_redis_cluster, LONG_SECS, LONG_CHURN, LONG_RSS_MB), LONG_SECS + 300)


async def _soak(c: Cluster, secs: float, churn: int, rss_mb: float) -> None:
    gc.collect()
    base_tasks = set(asyncio.all_tasks())
    base_fds = fd_count()
    base_rss = rss_bytes()
    t_start = time.monotonic()

    groups = [uid("sg") for _ in range(GROUPS)]
    ctls = [Client(c.b.url, group=g, client=f"ctl-{g}"[:64], token=mint_token(f"ctl-{g}"[:64], g)) for g in groups]
    workers: list[Worker] = []
    for i in range(CLIENTS):
        g = i % GROUPS
        wid = uid(f"sw{i}")
        urls = [c.a.url, c.b.url] if i % 2 == 0 else [c.b.url, c.a.url]
        client = Client(
            urls,
            group=groups[g],
            client=wid,
            token=mint_token(wid, groups[g]),
            heartbeat_interval=5.0,
            dead_link_timeout=15.0,
            min_delay=0.2,
            max_delay=2.0,
            connect_timeout=5.0,
        )
        workers.append(Worker(wid, client, g, i % 2 == 0, Counts(client)))
    by_group: list[list[Worker]] = [[w for w in workers if w.group == g] for g in range(GROUPS)]

    try:
        await asyncio.gather(*(ctl.connect() for ctl in ctls))
        for w in workers:
            w.task = asyncio.create_task(w.read())
        for i in range(0, len(workers), 50):
            await asyncio.gather(*(w.client.connect() for w in workers[i : i + 50]))
        connected = time.monotonic() - t_start
        await asyncio.sleep(3.0)  # warm-up
        gc.collect()
        warm_rss, warm_fds = rss_bytes(), fd_count()

        group_sent = [0] * GROUPS
        stop = asyncio.Event()

        async def control(g: int) -> None:
            ctl, mine = ctls[g], by_group[g]
            n = 0
            while not stop.is_set():
                n += 1
                ack = await ctl.send_group(cmd="soak", payload={"n": n})
                assert (ack.status, ack.offset) == ("ok", n), ack
                group_sent[g] = n
                w = mine[n % len(mine)]
                k = w.direct_sent + 1
                ack = await ctl.send_direct(w.id, cmd="soak", payload={"n": k})
                assert (ack.status, ack.offset) == ("ok", k), ack
                w.direct_sent = k
                await asyncio.sleep(EVERY)

        senders = [asyncio.create_task(control(g)) for g in range(GROUPS)]
        traffic_start = time.monotonic()
        moved: list[float] = []
        rotated: list[float] = []
        stayed_on_b: list[int] = []

        async def all_open_on(hub: HubProc, count: int) -> bool:
            return all(w.client.state == "open" for w in workers) and await hub.asockets() == count

        async def where() -> str:
            states: dict[str, int] = {}
            for w in workers:
                states[w.client.state] = states.get(w.client.state, 0) + 1
            return f"hub A holds {await c.a.asockets()}, hub B {await c.b.asockets()}; worker states {states}"

        try:
            period = secs / churn
            for k in range(churn):
                start = traffic_start + k * period
                # kill -9 hub A: every worker on it moves to hub B and resumes there.
                await _sleep_until(start + period / 3)
                c.a.kill9()
                t = time.monotonic()
                try:
                    await wait_until(lambda: all_open_on(c.b, CLIENTS + GROUPS), 60, "every worker open on hub B", interval=0.2)
                except AssertionError as e:
                    raise AssertionError(f"{e}: {await where()}") from None
                moved.append(time.monotonic() - t)
                await _sleep_until(start + period / 2)
                await c.a.astart()
                # 4011 for every worker: each goes on to its next URL, hub A, at once. (The hub
                # may close a worker's new socket on hub A too, when the request's control message
                # reaches hub A after the worker: that one gets a second 4011 and goes on to B
                # after a backoff. A few do; every socket must still be accounted for.)
                await _sleep_until(start + 2 * period / 3)
                t = time.monotonic()
                for w in workers:
                    status, body = await c.b.apost("/v3/disconnect", {"client_id": w.id, "reconnect": True, "reason": "rotate"})
                    assert status == 202, body

                async def rotated_to_a() -> bool:
                    if not all(w.client.state == "open" for w in workers):
                        return False
                    on_a, on_b = await c.a.asockets(), await c.b.asockets()
                    return on_a + on_b == CLIENTS + GROUPS and on_a >= CLIENTS * 0.9

                try:
                    await wait_until(rotated_to_a, 60, "every worker open again, most on hub A", interval=0.2)
                except AssertionError as e:
                    raise AssertionError(f"{e}: {await where()}") from None
                stayed_on_b.append(await c.b.asockets() - GROUPS)
                rotated.append(time.monotonic() - t)
            await _sleep_until(traffic_start + secs)
        finally:
            stop.set()
            results = await asyncio.gather(*senders, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors

        def delivered() -> bool:
            return all(w.group_route.received >= group_sent[w.group] and w.direct_route.received >= w.direct_sent for w in workers)

        await wait_until(delivered, 60, "every worker has every message", interval=0.2)
        await asyncio.sleep(2.0)  # duplicates, if any, would arrive now
        gc.collect()
        end_rss, end_fds = rss_bytes(), fd_count()

        total = 0
        for w in workers:
            assert not w.group_route.errors, f"{w.id}: group: {w.group_route.errors}"
            assert not w.direct_route.errors, f"{w.id}: direct: {w.direct_route.errors}"
            assert w.group_route.received == group_sent[w.group], f"{w.id}: group: {w.group_route.received} of {group_sent[w.group]}"
            assert w.direct_route.received == w.direct_sent, f"{w.id}: direct: {w.direct_route.received} of {w.direct_sent}"
            assert not w.rec.not_recovered, f"{w.id}: {w.rec.not_recovered}"
            total += w.group_route.received + w.direct_route.received
        print(
            f"soak: {len(workers)} workers, {secs:.0f} s, {total} messages delivered; connected in {connected:.1f} s;"
            f" hub A killed {churn}x: all on B within {_secs(moved)}; 4011 rotation: all open again within {_secs(rotated)},"
            f" {stayed_on_b} closed twice and on B;"
            f" RSS {base_rss / 2**20:.0f} -> {warm_rss / 2**20:.0f} -> {end_rss / 2**20:.0f} MiB;"
            f" fds {base_fds} -> {warm_fds} -> {end_fds}"
        )
        for w in workers:
            # Each 4011 moves every worker; the first kill moves those that started on hub A.
            want = 1 + churn + (1 if w.starts_on_a else 0)
            assert w.rec.opens >= want, f"{w.id}: {w.rec.opens} opens, want {want}: last states {w.rec.last_states}"
        assert end_rss - warm_rss < rss_mb * 2**20, f"RSS grew {(end_rss - warm_rss) / 2**20:.1f} MiB"
        assert abs(end_fds - warm_fds) <= 5, f"descriptors {warm_fds} after warm-up, {end_fds} at the end"
    finally:
        await asyncio.gather(*(close_quietly(w.client) for w in workers), *(close_quietly(ctl) for ctl in ctls))

    # After close(): every iterator ends, no task is left, descriptors are back.
    tasks = [w.task for w in workers if w.task is not None]
    _, pending = await asyncio.wait(tasks, timeout=10)
    for t in pending:
        t.cancel()
    assert not pending, f"{len(pending)} iterators did not end after close()"
    await wait_until(lambda: not [t for t in asyncio.all_tasks() - base_tasks if not t.done()], 10, "tasks back to the baseline")
    await wait_until(lambda: fd_count() <= base_fds + 2, 10, f"descriptors back to {base_fds}")
    gc.collect()
    print(f"soak: after close, RSS {rss_bytes() / 2**20:.0f} MiB, fds {fd_count()}")


async def _sleep_until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - time.monotonic()))


def _secs(xs: list[float]) -> str:
    return ", ".join(f"{x:.1f} s" for x in xs)
