"""Helpers of test_client_rules.py: watching what the client and the REAL hub exchange.

Nothing here answers the client in the hub's place. :class:`Tap` is a transparent TCP relay
put between a client and a real aether-hub process: for every connection the client opens
it opens one to the hub, copies the bytes both ways unchanged (closing each side when the
other closes, resetting it when the other was reset), and keeps a copy, so that a test can
read exactly what the client wrote (the upgrade request, its frames, its close frame) and
what the hub answered. It runs in threads of its own, so it adds no asyncio task to the
test's event loop. :func:`tcp_sockets` reads the kernel's table of TCP sockets
(``/proc/net/tcp``), to see a connection that waits in a frozen hub's accept queue, and
:func:`freeze` stops a process and waits until it has stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aether_hub import Client

OP_TEXT = 0x1
OP_CLOSE = 0x8


def parse_frames(data: bytes, *, masked: bool) -> list[tuple[int, bytes]]:
    """The complete WebSocket frames (RFC 6455 section 5.2) at the start of ``data``:
    (opcode, unmasked payload). A frame cut at the end of ``data`` is left out."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i + 2 <= len(data):
        b0, b1 = data[i], data[i + 1]
        opcode, has_mask, n = b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        assert has_mask == masked, f"frame at byte {i}: mask bit {has_mask}, expected {masked}"
        j = i + 2
        if n == 126:
            if j + 2 > len(data):
                break
            n = struct.unpack("!H", data[j : j + 2])[0]
            j += 2
        elif n == 127:
            if j + 8 > len(data):
                break
            n = struct.unpack("!Q", data[j : j + 8])[0]
            j += 8
        key = b""
        if has_mask:
            if j + 4 > len(data):
                break
            key = data[j : j + 4]
            j += 4
        if j + n > len(data):
            break
        payload = data[j : j + n]
        if has_mask:
            payload = bytes(b ^ key[k % 4] for k, b in enumerate(payload))
        out.append((opcode, payload))
        i = j + n
    return out


def _split_head(data: bytes) -> tuple[bytes, bytes] | None:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    return data[:end], data[end + 4 :]


@dataclass
class Request:
    """The client's upgrade request as the hub got it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names as the client wrote them


class TapConn:
    """One TCP connection through the tap: the bytes of each direction, as they went."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._up = bytearray()  # client -> hub
        self._down = bytearray()  # hub -> client
        self.upstream_ok = False  # the hub accepted the TCP connection
        self.ended = threading.Event()

    def _add(self, up: bool, data: bytes) -> None:
        with self._lock:
            (self._up if up else self._down).extend(data)

    @property
    def up(self) -> bytes:
        with self._lock:
            return bytes(self._up)

    @property
    def down(self) -> bytes:
        with self._lock:
            return bytes(self._down)

    def request(self) -> Request | None:
        parts = _split_head(self.up)
        if parts is None:
            return None
        lines = parts[0].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        assert method == "GET", lines[0]
        url = urlsplit(target)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name not in headers, f"header {name} written twice"
            headers[name] = value.strip()
        return Request(url.path, dict(parse_qsl(url.query, keep_blank_values=True)), headers)

    def status(self) -> int | None:
        """The HTTP status the hub answered the upgrade with (None: no answer yet)."""
        parts = _split_head(self.down)
        if parts is None:
            return None
        return int(parts[0].split(b" ", 2)[1])

    def response_headers(self) -> dict[str, str]:
        parts = _split_head(self.down)
        assert parts is not None, "no answer from the hub"
        out: dict[str, str] = {}
        for line in parts[0].decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            out[name.lower()] = value.strip()
        return out

    def client_frames(self) -> list[tuple[int, bytes]]:
        parts = _split_head(self.up)
        return [] if parts is None else parse_frames(parts[1], masked=True)

    def hub_frames(self) -> list[tuple[int, bytes]]:
        parts = _split_head(self.down)
        if parts is None or self.status() != 101:
            return []
        return parse_frames(parts[1], masked=False)

    def sent_by_client(self, msg_type: str | None = None) -> list[dict[str, Any]]:
        """The JSON text frames the client wrote (of ``msg_type``), in order."""
        frames = [json.loads(p) for op, p in self.client_frames() if op == OP_TEXT]
        return [f for f in frames if msg_type is None or f.get("msg_type") == msg_type]

    def sent_by_hub(self, msg_type: str | None = None) -> list[dict[str, Any]]:
        frames = [json.loads(p) for op, p in self.hub_frames() if op == OP_TEXT]
        return [f for f in frames if msg_type is None or f.get("msg_type") == msg_type]

    def client_close(self) -> tuple[int, str] | None:
        """The close frame the client wrote: (code, reason); None when it wrote none."""
        for op, p in self.client_frames():
            if op == OP_CLOSE:
                code = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
                return code, p[2:].decode()
        return None

    def hub_close(self) -> tuple[int, str] | None:
        for op, p in self.hub_frames():
            if op == OP_CLOSE:
                code = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
                return code, p[2:].decode()
        return None


class Tap:
    """A transparent TCP relay on a free 127.0.0.1 port in front of a real hub on ``port``."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._target = (host, port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._conns: list[TapConn] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept_loop)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def conns(self) -> list[TapConn]:
        """Every TCP connection the client opened, in order."""
        with self._lock:
            return list(self._conns)

    def opened(self) -> list[TapConn]:
        """The connections the hub upgraded (101), in order."""
        return [c for c in self.conns if c.status() == 101]

    def _start(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                down, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn = TapConn()
            with self._lock:
                self._conns.append(conn)
                self._sockets.append(down)
            try:
                up = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(down)
                conn.ended.set()
                continue
            up.settimeout(None)
            conn.upstream_ok = True
            with self._lock:
                self._sockets.append(up)
            done = [threading.Event(), threading.Event()]
            self._start(self._pump, down, up, conn, True, done[0])
            self._start(self._pump, up, down, conn, False, done[1])
            self._start(self._reap, done, conn, down, up)

    def _pump(self, src: socket.socket, dst: socket.socket, conn: TapConn, up: bool, done: threading.Event) -> None:
        try:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:  # reset (or torn down by close()): end both sides
                    _abort(src, dst)
                    return
                if not data:  # a clean end: pass the half-close on
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                conn._add(up, data)
                try:
                    dst.sendall(data)
                except OSError:
                    _abort(src, dst)
                    return
        finally:
            done.set()

    def _reap(self, done: list[threading.Event], conn: TapConn, down: socket.socket, up: socket.socket) -> None:
        for d in done:
            while not d.wait(0.2):
                if self._closed.is_set():
                    break
        for s in (down, up):
            with contextlib.suppress(OSError):
                s.close()
        conn.ended.set()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in threads:
            t.join(timeout=5)


def _reset(s: socket.socket) -> None:
    """Closes ``s`` with a TCP reset (as a crashed peer's kernel would)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()


def _abort(*sockets: socket.socket) -> None:
    """Ends both sides of a relayed connection at once: the threads blocked on them wake up,
    and the final close (by the reaper) resets them."""
    for s in sockets:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def thread_states(pid: int) -> list[str]:
    """The scheduler state of each thread of process ``pid`` (``T``: stopped)."""
    out: list[str] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/stat") as f:
            out.append(f.read().rsplit(")", 1)[1].split()[0])
    return out


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP, then waits until every thread has actually stopped: ``kill`` returns before
    the threads do, and one still running could yet read (and act on) what comes next."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not all(st == "T" for st in thread_states(pid)):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} not stopped within {timeout} s: {thread_states(pid)}")
        time.sleep(0.005)


@dataclass
class TcpSocket:
    local_port: int
    remote_port: int
    state: int  # 1 ESTABLISHED, 4 FIN_WAIT1, 5 FIN_WAIT2, 6 TIME_WAIT, 8 CLOSE_WAIT, 10 LISTEN, ...
    rx_queue: int  # bytes received and not read by the process (yet)


def tcp_sockets() -> list[TcpSocket]:
    """The IPv4 TCP sockets of this network namespace (``/proc/net/tcp``)."""
    out: list[TcpSocket] = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            local, remote, st, queues = cols[1], cols[2], cols[3], cols[4]
            rx = int(queues.split(":")[1], 16)
            out.append(TcpSocket(int(local.split(":")[1], 16), int(remote.split(":")[1], 16), int(st, 16), rx))
    return out


ESTABLISHED = 1


class Events:
    """Every event of a client, in order, by name."""

    NAMES = ("state", "presence", "recovered", "disconnected", "reconnecting", "error")

    def __init__(self, c: Client) -> None:
        self.seen: dict[str, list[Any]] = {k: [] for k in self.NAMES}
        c.on("state", lambda old, new: self.seen["state"].append((old, new)))
        for k in self.NAMES[1:]:
            c.on(k, self.seen[k].append)

    def __getitem__(self, name: str) -> list[Any]:
        return self.seen[name]
