"""Real processes for the end-to-end tests: the aether-hub binary and redis-server.

Everything here talks to real sockets on 127.0.0.1 (or, for the partition
test, on a veth link the test makes itself): no mock server. Every process
is started on a free port the OS picked, dies with the test run
(``PR_SET_PDEATHSIG``, plus an ``atexit`` sweep), and every wait is bounded.

The hub binary is ``target/debug/aether-hub`` (``AETHER_HUB_BIN`` overrides
it); ``scripts/test`` builds it before running these tests. Test bodies are
coroutines run with :func:`run` (``asyncio.run`` under a deadline), so they
do not depend on a pytest asyncio plugin's mode.

Tests marked ``slow`` run only with ``AETHER_PY_SLOW=1`` (or ``--run-slow``).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import ctypes
import hashlib
import hmac
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aether_hub import Ack, AckFailed, Client, Message

REPO = Path(__file__).resolve().parents[3]
HUB_BIN = Path(os.environ.get("AETHER_HUB_BIN", str(REPO / "target" / "debug" / "aether-hub")))
_log_root: list[Path] = []


def log_root() -> Path:
    """Where the processes' logs go (made on first use; removed after a green run)."""
    if not _log_root:
        _log_root.append(Path(tempfile.mkdtemp(prefix=f"aether-py-e2e-{os.getpid()}-")))
    return _log_root[0]


T = TypeVar("T")

# --------------------------------------------------------------------------
# pytest wiring


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long tests; run with AETHER_PY_SLOW=1 or --run-slow")
    config.addinivalue_line("markers", "netns: needs root, ip netns and iptables")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("AETHER_PY_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set AETHER_PY_SLOW=1 (or --run-slow) to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _kill_all()
    if not _log_root:
        return
    if exitstatus == 0:
        shutil.rmtree(_log_root[0], ignore_errors=True)
    else:
        print(f"\naether e2e: process logs kept in {_log_root[0]}")


# --------------------------------------------------------------------------
# small helpers

_ids = itertools.count(1)


def uid(prefix: str) -> str:
    """A fresh Vision ID (``[A-Za-z0-9_-]``, at most 64 characters)."""
    return f"{prefix}-{os.getpid()}-{next(_ids)}-{random.randrange(16**6):06x}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(factory: Coroutine[Any, Any, T], timeout: float) -> T:
    """Runs a test body on a fresh event loop, failing it after ``timeout`` s."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(factory, timeout)
        except asyncio.TimeoutError as e:
            raise AssertionError(f"test body did not finish within {timeout} s") from e

    return asyncio.run(bounded())


async def wait_until(
    pred: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> float:
    """Polls ``pred`` until true; returns how long it took; fails after ``timeout`` s."""
    start = time.monotonic()
    while True:
        got = pred()
        if not isinstance(got, bool):
            got = await got
        if got:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(interval)


def _set_pdeathsig() -> None:
    # The child dies with the pytest process even when no finalizer runs.
    # Processes are only ever started from the main thread (PR_SET_PDEATHSIG
    # follows the spawning thread).
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_live: set[subprocess.Popen[bytes]] = set()


def _kill_all() -> None:
    for p in list(_live):
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGCONT)
            p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
        _live.discard(p)


atexit.register(_kill_all)


def spawn(args: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
    out: Any = subprocess.DEVNULL
    if log is not None:
        out = open(log, "ab")  # noqa: SIM115 (closed below, the child keeps its copy)
    try:
        p = subprocess.Popen(
            list(args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            preexec_fn=_set_pdeathsig,
        )
    finally:
        if log is not None:
            out.close()
    _live.add(p)
    return p


def _stop(p: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL, grace: float = 5.0) -> None:
    if p is None:
        return
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGCONT)
            p.send_signal(sig)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    _live.discard(p)


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, str]:
    """One HTTP request; returns (status, body text)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


async def ahttp_status(host: str, port: int, path: str, timeout: float = 1.0) -> int:
    """GET ``path`` without blocking the loop; 0 when nothing answers in time."""

    async def once() -> int:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 else 0
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(once(), timeout)
    except (OSError, asyncio.TimeoutError, ValueError):
        return 0


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------
# tokens (HS256, stdlib only)

TOKEN_SECRET = f"py-e2e-secret-{os.getpid()}"
ADMIN_KEY = f"py-e2e-admin-{os.getpid()}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_token(
    sub: str,
    grp: str | list[str],
    *,
    secret: str = TOKEN_SECRET,
    exp: int | None = None,
    ttl: int = 3600,
    **claims: Any,
) -> str:
    """A JWT (HS256) for ``sub`` in ``grp``; ``exp`` defaults to now + ``ttl``."""
    now = int(time.time())
    body = {"sub": sub, "grp": grp, "aud": "aether-hub", "iat": now, "exp": now + ttl if exp is None else exp}
    body.update(claims)
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(body, separators=(",", ":")).encode())
    signing = f"{head}.{payload}".encode()
    sig = hmac.new(secret.encode(), signing, hashlib.sha256).digest()
    return f"{head}.{payload}.{_b64url(sig)}"


# --------------------------------------------------------------------------
# redis-server


class RedisProc:
    """A real redis-server on a free 127.0.0.1 port (optionally persistent)."""

    def __init__(self, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.persistent = persistent
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-", dir=log_root()))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    def start(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        self.proc = spawn(args)
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING within 15 s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        _stop(self.proc, signal.SIGKILL)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        _stop(self.proc, signal.SIGKILL)
        self.proc = None

    def command(self, *args: str, timeout: float = 5.0) -> Any:
        """One Redis command over a fresh connection (RESP2, enough for tests)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            req = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
            s.sendall(req.encode())
            return _read_resp(s.makefile("rb"))

    def client_names(self) -> list[str]:
        listing = str(self.command("CLIENT", "LIST"))
        names = []
        for line in listing.splitlines():
            for f in line.split(" "):
                if f.startswith("name=") and len(f) > 5:
                    names.append(f[5:])
        return names

    def kill_named(self, name: str) -> int:
        """``CLIENT KILL ID`` of every connection named ``name``; returns how many."""
        listing = str(self.command("CLIENT", "LIST"))
        killed = 0
        for line in listing.splitlines():
            fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
            if fields.get("name") == name:
                killed += int(self.command("CLIENT", "KILL", "ID", fields["id"]))
        return killed


def _read_resp(f: Any) -> Any:
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_resp(f) for _ in range(n)]
    raise RuntimeError(f"unexpected RESP line {line!r}")


# --------------------------------------------------------------------------
# aether-hub


def hub_binary() -> Path:
    if not HUB_BIN.exists():
        pytest.fail(f"{HUB_BIN} is missing: build it first (`cargo build --bin aether-hub`; scripts/test does)")
    return HUB_BIN


class HubProc:
    """The real aether-hub binary on a free port, with ``env``."""

    def __init__(self, env: dict[str, str] | None = None, *, host: str = "127.0.0.1", name: str | None = None) -> None:
        self.host = host
        self.port = free_port() if host == "127.0.0.1" else _free_port_on(host)
        self.name = name or uid("hub")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AETHER_LOG": "warn",
            "AETHER_SHUTDOWN_GRACE_SECS": "1",
            "AETHER_CONSOLE": "false",
            **(env or {}),
            "AETHER_BIND": f"{host}:{self.port}",
        }
        self.log = log_root() / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> None:
        self.proc = spawn([str(hub_binary())], env=self.env, log=self.log)

    def start(self, timeout: float = 20.0) -> HubProc:
        """Launches and waits (blocking) until ``/readyz`` answers 200."""
        self.launch()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http_request(self.host, self.port, "GET", "/readyz", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"hub {self.name} not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    async def astart(self, timeout: float = 20.0) -> HubProc:
        """Like :meth:`start`, without blocking the running event loop."""
        self.launch()
        start = time.monotonic()
        while await ahttp_status(self.host, self.port, "/readyz") != 200:
            self._check_alive()
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"hub {self.name} not ready within {timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return self

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"hub {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def kill9(self) -> None:
        _stop(self.proc, signal.SIGKILL)
        self.proc = None

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, grace=5)
        self.proc = None

    def sigstop(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def sigcont(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def readyz(self) -> int:
        try:
            return http_request(self.host, self.port, "GET", "/readyz", timeout=2)[0]
        except OSError:
            return 0

    def post(self, path: str, body: Any, *, key: str | None = ADMIN_KEY) -> tuple[int, Any]:
        headers = {"X-Aether-API-Key": key} if key else {}
        status, text = http_request(self.host, self.port, "POST", path, body, headers)
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    async def apost(self, path: str, body: Any, *, key: str | None = ADMIN_KEY) -> tuple[int, Any]:
        return await asyncio.to_thread(self.post, path, body, key=key)

    def get_json(self, path: str, *, key: str | None = ADMIN_KEY) -> tuple[int, Any]:
        headers = {"X-Aether-API-Key": key} if key else {}
        status, text = http_request(self.host, self.port, "GET", path, None, headers)
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def metric(self, sample: str) -> float:
        """One sample of ``/metrics`` (``name{label="v"}``), 0 when absent."""
        status, text = http_request(self.host, self.port, "GET", "/metrics")
        assert status == 200, text
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def asockets(self) -> int:
        """How many sockets this hub holds (``GET /v3/info``); -1 when it does not answer."""
        try:
            status, info = await asyncio.to_thread(self.get_json, "/v3/info")
        except OSError:
            return -1
        return int(info["sockets"]) if status == 200 else -1

    async def ametric(self, sample: str) -> float:
        return await asyncio.to_thread(self.metric, sample)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _free_port_on(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def closed_with(code: int) -> str:
    """The /metrics sample counting sockets closed with ``code``."""
    return f'aether_connections_closed_total{{code="{code}"}}'


def hub_env(redis: RedisProc | None = None, *, instance: str | None = None, **extra: str) -> dict[str, str]:
    """The settings the tests run hubs with: tokens, an admin key, a long history."""
    env = {
        "AETHER_TOKEN_SECRETS": TOKEN_SECRET,
        "AETHER_ADMIN_API_KEYS": ADMIN_KEY,
        "AETHER_TOKEN_LEEWAY_SECS": "0",
        "AETHER_HISTORY_SIZE": "1000",
        "AETHER_PRESENCE_TTL_SECS": "15",
    }
    if redis is not None:
        env["AETHER_REDIS_URL"] = redis.url
        env["AETHER_REDIS_PREFIX"] = f"py{os.getpid()}:"
    if instance is not None:
        env["AETHER_INSTANCE_ID"] = instance
    env.update(extra)
    return env


@dataclass
class Cluster:
    """What a test runs against: one hub in memory, or two hubs on one Redis."""

    mode: str
    hubs: list[HubProc]
    redis: RedisProc | None = None

    @property
    def a(self) -> HubProc:
        return self.hubs[0]

    @property
    def b(self) -> HubProc:
        return self.hubs[-1]

    def close(self) -> None:
        for h in self.hubs:
            h.kill9()
        if self.redis is not None:
            self.redis.stop()


def redis_cluster(*, persistent: bool = False, **extra: str) -> Cluster:
    redis = RedisProc(persistent=persistent)
    hubs: list[HubProc] = []
    try:
        for name in ("hub-a", "hub-b"):
            instance = f"{name}-{os.getpid()}-{random.randrange(16**4):04x}"
            hubs.append(HubProc(hub_env(redis, instance=instance, **extra), name=instance).start())
    except BaseException:
        for h in hubs:
            h.kill9()
        redis.stop()
        raise
    return Cluster("redis", hubs, redis)


def memory_cluster(**extra: str) -> Cluster:
    return Cluster("memory", [HubProc(hub_env(**extra), name=uid("hub-mem")).start()])


@pytest.fixture(scope="module", params=["memory", "redis"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Shared by a module's tests (fresh ids per test): memory, then Redis mode."""
    c = memory_cluster() if request.param == "memory" else redis_cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fresh_redis_cluster() -> Iterator[Cluster]:
    """Two hubs (hub-a, hub-b) on a Redis of their own, for a test that breaks things."""
    c = redis_cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def persistent_redis_cluster() -> Iterator[Cluster]:
    """Like ``fresh_redis_cluster``, on a Redis with ``appendonly yes``, ``appendfsync always``."""
    c = redis_cluster(persistent=True)
    try:
        yield c
    finally:
        c.close()


# --------------------------------------------------------------------------
# the client, seen from a test


class Received:
    """Messages a worker received, in arrival order (anything with ``cmd``, ``target``, ``payload``, ``offset``, ``epoch``)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def numbers(self, target: str, cmd: str = "job") -> list[int]:
        """``payload["n"]`` of the received ``cmd`` messages to ``target``, in arrival order."""
        return [int(m.payload["n"]) for m in self.items if m.cmd == cmd and m.target == target]

    def of(self, target: str, cmd: str = "job") -> list[Any]:
        return [m for m in self.items if m.cmd == cmd and m.target == target]


class Collector(Received):
    """Drains ``async for m in client`` into a list, in a task of its own."""

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client
        self.items: list[Message] = []
        self.error: BaseException | None = None
        self.ended_by_itself = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for m in self.client:
                self.items.append(m)
            self.ended_by_itself = True
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the iterator ended with an error
            self.error = e
            self.ended_by_itself = True

    async def wait_ended(self, timeout: float = 5.0) -> bool:
        """Waits for the iteration to end by itself; cancels it after ``timeout`` s.

        Returns whether it ended by itself.
        """
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except asyncio.TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        return self.ended_by_itself


class Recorder:
    """A client's events, each with the ``time.monotonic()`` it came at."""

    def __init__(self, client: Client) -> None:
        self.states: list[tuple[float, str, str]] = []
        self.recoveries: list[Any] = []
        self.presence: list[Any] = []
        self.disconnected: list[Any] = []
        self.unsubscribe = [
            client.on("state", lambda old, new: self.states.append((time.monotonic(), old, new))),
            client.on("recovered", self.recoveries.append),
            client.on("presence", self.presence.append),
            client.on("disconnected", self.disconnected.append),
        ]

    def opens(self) -> int:
        return sum(1 for _, _, new in self.states if new == "open")

    def reconnects(self) -> int:
        return sum(1 for _, old, new in self.states if old == "open" and new in ("reconnecting", "connecting"))

    def new_states(self) -> list[str]:
        return [new for _, _, new in self.states]


@dataclass
class Sent:
    """What the controller sent on one route: numbers and their acks."""

    ok: dict[int, Ack] = field(default_factory=dict)
    unconfirmed: dict[int, Ack] = field(default_factory=dict)
    failed_attempts: int = 0

    @property
    def last(self) -> int:
        return max([0, *self.ok, *self.unconfirmed])


ROUTES = ("group", "direct")


async def send_numbered(
    ctl: Client,
    worker_id: str,
    *,
    until: Callable[[int], bool],
    interval: float,
    retry_failed: bool = False,
    max_n: int = 100_000,
) -> dict[str, Sent]:
    """Sends cmd ``job`` with ``payload.n`` = 1, 2, ... to the group and to the worker directly.

    Each send waits for its ack. Stops after the number ``n`` for which
    ``until(n)`` is true (bounded by ``max_n``). ``retry_failed``: a send
    acked ``failed`` (AckFailed: not published, reached nobody) is sent
    again with the same number (bounded); otherwise it fails the test.
    """
    sent = {r: Sent() for r in ROUTES}
    n = 0
    while n < max_n:
        n += 1
        for route in ROUTES:
            for attempt in itertools.count():
                try:
                    if route == "group":
                        ack = await ctl.send_group(cmd="job", payload={"n": n})
                    else:
                        ack = await ctl.send_direct(worker_id, cmd="job", payload={"n": n})
                except AckFailed:
                    if not retry_failed or attempt >= 300:
                        raise
                    sent[route].failed_attempts += 1
                    await asyncio.sleep(0.1)
                    continue
                if ack.status == "ok":
                    sent[route].ok[n] = ack
                elif ack.status == "unconfirmed":
                    sent[route].unconfirmed[n] = ack
                else:
                    raise AssertionError(f"send {route} {n}: unexpected ack {ack!r}")
                break
        if until(n):
            break
        await asyncio.sleep(interval)
    return sent


async def wait_all_delivered(col: Received, sent: dict[str, Sent], timeout: float, quiet: float = 1.5) -> None:
    """Waits until the worker holds every ok-acked number of each route, then ``quiet`` s more."""

    def complete() -> bool:
        for route, s in sent.items():
            got = set(col.numbers(route))
            if not set(s.ok) <= got:
                return False
        return True

    def progress() -> str:
        parts = []
        for route, s in sent.items():
            got = col.numbers(route)
            missing = sorted(set(s.ok) - set(got))
            parts.append(f"{route}: {len(got)} received, {len(missing)} missing (first {missing[:10]})")
        return "every acked message delivered; " + "; ".join(parts)

    try:
        await wait_until(complete, timeout, "every acked message delivered")
    except AssertionError as e:
        raise AssertionError(progress()) from e
    await asyncio.sleep(quiet)  # duplicates, if any, would arrive now


def assert_exactly_once(col: Received, sent: dict[str, Sent], *, allow_unconfirmed: bool = False) -> None:
    """Every kept (ok-acked) message exactly once, in order, with its ack's offset and epoch.

    Without ``allow_unconfirmed`` every send must have been acked ok, and each
    route must be exactly 1..N. With it, a number acked ``unconfirmed`` may
    be there (once, in its place) or not.
    """
    for route, s in sent.items():
        got = col.numbers(route)
        if not allow_unconfirmed:
            assert not s.unconfirmed, f"{route}: sends acked unconfirmed: {sorted(s.unconfirmed)}"
            assert got == list(range(1, s.last + 1)), f"{route}: want 1..{s.last} once in order, got {_summary(got)}"
        else:
            assert len(got) == len(set(got)), f"{route}: duplicates {_dups(got)}"
            assert got == sorted(got), f"{route}: out of order {_summary(got)}"
            assert set(s.ok) <= set(got), f"{route}: lost {sorted(set(s.ok) - set(got))[:20]}"
            extra = set(got) - set(s.ok) - set(s.unconfirmed)
            assert not extra, f"{route}: received numbers never sent: {sorted(extra)[:20]}"
        # The ack's position is the delivered message's.
        for m in col.of(route):
            ack = s.ok.get(int(m.payload["n"]))
            if ack is not None:
                assert (m.offset, m.epoch) == (ack.offset, ack.epoch), f"{route} {m.payload}: {m.offset}/{m.epoch} vs ack {ack!r}"


def _dups(xs: list[int]) -> list[int]:
    seen: set[int] = set()
    dups: set[int] = set()
    for x in xs:
        if x in seen:
            dups.add(x)
        seen.add(x)
    return sorted(dups)


def _summary(xs: list[int]) -> str:
    if len(xs) <= 40:
        return str(xs)
    dups = _dups(xs)
    disorder = [(a, b) for a, b in zip(xs, xs[1:]) if b <= a][:10]
    return f"{len(xs)} numbers, first {xs[:10]}, last {xs[-10:]}, duplicates {dups[:10]}, out of order {disorder}"


def worker_client(urls: Sequence[str], group: str, client: str, **options: Any) -> Client:
    """A worker as the fault tests run it: a 3 s dead-link deadline, heartbeats every second."""
    settings: dict[str, Any] = {
        "token": mint_token(client, group),
        "dead_link_timeout": 3.0,
        "heartbeat_interval": 1.0,
        "min_delay": 0.1,
        "max_delay": 1.0,
        "connect_timeout": 2.0,
    }
    settings.update(options)
    return Client(list(urls), group=group, client=client, **settings)


async def close_quietly(*clients: Client) -> None:
    for c in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(c.close(), 10)
