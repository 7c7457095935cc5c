"""(e) A network partition longer than the client's dead-link deadline.

The worker runs in a network namespace of its own, joined to the root
namespace by a veth pair the test makes (``10.214.B.2`` inside,
``10.214.B.1`` outside), as ``ip netns exec <ns> python <this file>
worker ...``; the two hubs and the controller run in the root namespace, the
hubs listening on the root end of the link (Redis on 127.0.0.1). The
partition drops every packet crossing the link, both ways, with iptables
``INPUT`` rules on each side (silently: no reset, no ICMP, no error to
either end), for longer than the worker's dead-link deadline (3 s, with
heartbeats every second), then removes them.

The worker must notice within its deadline while the partition holds,
come back after the heal, and have received every message the controller
sent (numbered, acknowledged) exactly once and in order.

Needs root, ``ip`` and ``iptables`` (the approach of tests/support/netns.rs);
elsewhere it skips and says why. The namespace, the link and the rules are
removed in a ``finally``; namespaces left by a test process that no longer
exists are swept first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aether_hub import Client
from conftest import (
    HubProc,
    Received,
    RedisProc,
    _set_pdeathsig,
    assert_exactly_once,
    hub_env,
    mint_token,
    run,
    send_numbered,
    uid,
    wait_all_delivered,
    wait_until,
)

DEAD_LINK = 3.0
WORKER_SCRIPT = str(Path(__file__).resolve())
PARTITION = DEAD_LINK + 5.0


# --------------------------------------------------------------------------
# the worker, run inside the namespace


async def worker_main(args: argparse.Namespace) -> int:
    def emit(**fields: Any) -> None:
        print(json.dumps({"t": time.monotonic(), **fields}), flush=True)

    client = Client(
        args.urls.split(","),
        group=args.group,
        client=args.client,
        token=args.token,
        dead_link_timeout=DEAD_LINK,
        heartbeat_interval=1.0,
        min_delay=0.1,
        max_delay=1.0,
        connect_timeout=2.0,
    )
    client.on("state", lambda old, new: emit(ev="state", old=old, new=new))
    client.on("recovered", lambda r: emit(ev="recovered", route=r.route, recovered=r.recovered, missed=r.missed))
    base = len(asyncio.all_tasks())

    async def read() -> None:
        async for m in client:
            emit(ev="msg", target=m.target, cmd=m.cmd, n=m.payload.get("n"), offset=m.offset, epoch=m.epoch)

    reader = asyncio.create_task(read())
    await client.connect()
    emit(ev="ready")
    # Runs until the test says stop on stdin (or its deadline passes).
    stdin = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        await asyncio.wait_for(stdin.readline(), args.deadline)
    except asyncio.TimeoutError:
        emit(ev="deadline")
    transport.close()
    await client.close()
    try:
        await asyncio.wait_for(reader, 5)
    except asyncio.TimeoutError:
        reader.cancel()
    emit(ev="closed", tasks=len(asyncio.all_tasks()) - base)
    return 0


# --------------------------------------------------------------------------
# the lab


def _sh(*args: str, check: bool = True) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed: {out.stderr.strip()}")
    return out.stdout


def _why_no_lab() -> str | None:
    if os.geteuid() != 0:
        return "not root (ip netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _sweep_stale() -> None:
    """Deletes namespaces (and links) of earlier test processes that are gone."""
    for line in _sh("ip", "netns", "list", check=False).splitlines():
        name = line.split(" ")[0] if line else ""
        if name.startswith("aepy") and name[4:].isdigit() and not os.path.exists(f"/proc/{name[4:]}"):
            _sh("ip", "netns", "del", name, check=False)
            _sh("ip", "link", "del", f"{name}r", check=False)


@dataclass
class Lab:
    ns: str
    root_dev: str
    root_ip: str
    ns_ip: str
    rules: list[list[str]]

    @classmethod
    def build(cls) -> Lab:
        _sweep_stale()
        pid = os.getpid()
        ns = f"aepy{pid}"
        used = _sh("ip", "-4", "-o", "addr") + _sh("ip", "-4", "route")
        block = next(b for b in ((pid + i) % 250 + 1 for i in range(250)) if f"10.214.{b}." not in used)
        lab = cls(ns, f"{ns}r", f"10.214.{block}.1", f"10.214.{block}.2", [])
        try:
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "link", "add", lab.root_dev, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "addr", "add", f"{lab.root_ip}/30", "dev", lab.root_dev)
            _sh("ip", "link", "set", lab.root_dev, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{lab.ns_ip}/30", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            lab.teardown()
            raise
        return lab

    def cut(self) -> None:
        """Drops every packet crossing the link, both ways, silently."""
        for rule in (
            ["iptables", "-w", "5", "INPUT", "-i", self.root_dev, "-j", "DROP"],
            ["ip", "netns", "exec", self.ns, "iptables", "-w", "5", "INPUT", "-i", "eth0", "-j", "DROP"],
        ):
            at = rule.index("INPUT")
            _sh(*rule[:at], "-I", *rule[at:])
            self.rules.append(rule)

    def heal(self) -> None:
        while self.rules:
            rule = self.rules.pop()
            at = rule.index("INPUT")
            _sh(*rule[:at], "-D", *rule[at:], check=False)

    def teardown(self) -> None:
        self.heal()
        for pid in _sh("ip", "netns", "pids", self.ns, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        _sh("ip", "netns", "del", self.ns, check=False)
        _sh("ip", "link", "del", self.root_dev, check=False)


@pytest.fixture
def lab() -> Any:
    why = _why_no_lab()
    if why is not None:
        pytest.skip(why)
    try:
        lab = Lab.build()
    except RuntimeError as e:
        pytest.skip(f"no network namespace lab on this machine: {e}")
    try:
        yield lab
    finally:
        lab.teardown()


# --------------------------------------------------------------------------
# the test


@pytest.mark.netns
def test_e_partition_longer_than_dead_link(lab: Lab) -> None:
    redis = RedisProc()
    hubs: list[HubProc] = []
    try:
        for name in ("hub-a", "hub-b"):
            instance = f"{name}-{os.getpid()}"
            hubs.append(HubProc(hub_env(redis, instance=instance), host=lab.root_ip, name=instance).start())
        run(_partition(lab, hubs), 150)
    finally:
        for h in hubs:
            h.kill9()
        redis.stop()


class WorkerProcess:
    """The worker in the namespace: its events, from its stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.received = Received()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self.events.append(ev)
            if ev["ev"] == "msg":
                self.received.items.append(SimpleNamespace(payload={"n": ev["n"]}, **ev))

    def states(self) -> list[tuple[float, str, str]]:
        return [(e["t"], e["old"], e["new"]) for e in self.events if e["ev"] == "state"]

    def opens(self) -> int:
        return sum(1 for _, _, new in self.states() if new == "open")

    def has(self, ev: str) -> bool:
        return any(e["ev"] == ev for e in self.events)


async def _partition(lab: Lab, hubs: list[HubProc]) -> None:
    a, b = hubs
    g, cid, wid = uid("g"), uid("ctl"), uid("w")
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", lab.ns, sys.executable, WORKER_SCRIPT, "worker",
        "--urls", f"{a.url},{b.url}", "--group", g, "--client", wid, "--token", mint_token(wid, g),
        "--deadline", "120",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
        preexec_fn=_set_pdeathsig, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    worker = WorkerProcess(proc)
    ctl = Client(b.url, group=g, client=cid, token=mint_token(cid, g))
    try:
        await wait_until(lambda: worker.has("ready") or proc.returncode is not None, 30, "the worker in the namespace is connected")
        assert worker.has("ready"), f"worker exited: {proc.returncode}"
        await ctl.connect()
        cut_at: list[float] = []
        healed_at: list[float] = []
        done = asyncio.Event()

        async def partition() -> None:
            await asyncio.sleep(1.0)
            lab.cut()
            cut_at.append(time.monotonic())
            try:
                await asyncio.sleep(PARTITION)
            finally:
                lab.heal()
                healed_at.append(time.monotonic())
                done.set()

        parting = asyncio.create_task(partition())
        try:
            sent = await send_numbered(ctl, wid, interval=0.04, until=lambda n: n >= 60 and done.is_set() and worker.opens() >= 2)
        finally:
            await parting
        await wait_all_delivered(worker.received, sent, 30)
        assert_exactly_once(worker.received, sent)

        states = worker.states()
        down = next(t for t, old, new in states if old == "open" and new != "open")
        up = [t for t, _, new in states if new == "open"][1]
        noticed = down - cut_at[0]
        print(f"partition: noticed after {noticed:.2f} s, back {up - healed_at[0]:.2f} s after the heal")
        assert down < healed_at[0], "the dead link was noticed while the partition held"
        assert DEAD_LINK * 0.8 <= noticed <= DEAD_LINK + 2.5, f"dead link noticed after {noticed:.2f} s"
        assert up > healed_at[0], "no connection could be made through the partition"
        assert up - healed_at[0] < 2.0 + 1.0 + 3.0, "back within a connect timeout and a backoff of the heal"
        recoveries = [e for e in worker.events if e["ev"] == "recovered"]
        assert recoveries, "a recovery summary after the reconnect"
        assert all(r["recovered"] for r in recoveries), recoveries
        assert sum(r["missed"] for r in recoveries) > 0, f"the partition's messages came as a replay: {recoveries}"
    finally:
        await ctl.close()
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.wait_for(worker.task, 5)
    closed = [e for e in worker.events if e["ev"] == "closed"]
    assert closed, "the worker closed its client"
    assert closed[0]["tasks"] == 0, f"the worker's tasks after close(): {closed}"


# --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["worker"])
    parser.add_argument("--urls", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--deadline", type=float, default=120.0)
    return asyncio.run(worker_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
