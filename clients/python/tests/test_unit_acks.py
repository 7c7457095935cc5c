"""The pending-ack table, as clients/js/src/acks.ts: ids, settled exactly once, failed raises,
a lost connection and the timeout settle unconfirmed, no timer left."""

from __future__ import annotations

import asyncio
import re

import pytest

from aether_hub import Ack, AckFailed
from aether_hub.acks import PendingAcks


def test_ids() -> None:
    a, b = PendingAcks(1.0), PendingAcks(1.0)
    ids = [a.next_id() for _ in range(40)]
    assert len(set(ids)) == 40
    assert all(re.fullmatch(r"[a-z0-9]{7}-[a-z0-9]+", i) for i in ids)
    assert ids[0].endswith("-1")
    assert ids[35].endswith("-10")
    assert a.next_id().split("-")[0] != b.next_id().split("-")[0]


async def test_settles_once() -> None:
    acks = PendingAcks(5.0)
    loop = asyncio.get_running_loop()
    ok, failed, other = loop.create_future(), loop.create_future(), loop.create_future()
    acks.wait("a", ok, "s1")
    acks.wait("b", failed, "s1")
    acks.wait("c", other, "s2")
    assert acks.settle({"ack_id": "a", "status": "ok", "offset": 4, "epoch": "e", "duplicate": True})
    assert not acks.settle({"ack_id": "a", "status": "ok"})  # once
    assert acks.settle({"ack_id": "b", "status": "failed", "reason": "unavailable"})
    assert await ok == Ack("a", "ok", 4, "e", duplicate=True)
    with pytest.raises(AckFailed) as info:
        await failed
    assert info.value.ack == Ack("b", "failed")
    assert info.value.reason == "unavailable"
    assert acks.settle({"ack_id": "c", "status": "weird"})
    assert (await other).status == "unconfirmed"
    assert len(acks) == 0


async def test_drop_by_connection_and_timeout() -> None:
    acks = PendingAcks(0.05)
    loop = asyncio.get_running_loop()
    f1, f2, f3 = loop.create_future(), loop.create_future(), loop.create_future()
    acks.wait("a", f1, "s1")
    acks.wait("b", f2, "s2")
    acks.drop("s1", "disconnected")
    assert (f1.result(), f1.result().reason) == (Ack("a", "unconfirmed"), "disconnected")
    assert not f2.done()
    assert (await f2).reason == "timeout"
    acks.wait("c", f3, "s3")
    settled = asyncio.ensure_future(acks.settled("s3"))
    await asyncio.sleep(0)
    assert not settled.done()
    acks.settle({"ack_id": "c", "status": "ok"})
    await asyncio.wait_for(settled, 1)
    assert len(acks) == 0


async def test_a_cancelled_sender_is_skipped() -> None:
    acks = PendingAcks(5.0)
    f = asyncio.get_running_loop().create_future()
    acks.wait("a", f, None)
    f.cancel()
    assert acks.settle({"ack_id": "a", "status": "failed"})  # no InvalidStateError
