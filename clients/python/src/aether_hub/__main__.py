"""The command line: ``python -m aether_hub tail|send|presence ...`` (see README.md).

Exit codes: 0 done (``send``: ack ``ok``); 1 ``send`` acked ``failed`` or ``unconfirmed``, or the
client stopped for good (a refused upgrade, 4010, ...); 2 bad arguments or an invalid frame;
3 no connection within ``--timeout``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any, Dict, List, Optional, Sequence

from ._version import __version__
from .acks import Ack
from .client import Client
from .errors import AckFailed, AetherError, ConnectError, FrameError
from .events import FinalClose
from .recovery import Recovery

EXIT_OK, EXIT_NOT_OK, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aether_hub", description="Talk to an aether-hub from the command line.")
    p.add_argument("--version", action="version", version=f"aether-hub-client {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--url", action="append", required=True, help="hub URL (ws://, wss://, http://, https://); repeat for several")
        sp.add_argument("--group", required=True, help="group id (a Vision ID)")
        sp.add_argument("--client", required=True, help="client id (a Vision ID)")
        cred = sp.add_mutually_exclusive_group()
        cred.add_argument("--token", default=os.environ.get("AETHER_TOKEN"), help="identity token (JWT); default $AETHER_TOKEN")
        cred.add_argument("--api-key", default=os.environ.get("AETHER_API_KEY"), help="API key; default $AETHER_API_KEY")
        sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the connection (and the answer); default 10")
        sp.add_argument("-v", "--verbose", action="store_true", help="state changes and events on stderr")

    tail = sub.add_parser("tail", help="print every delivered msg and cmd as a JSON line, resuming across drops")
    common(tail)
    tail.add_argument("--count", type=int, default=0, help="stop after this many messages (default: never)")

    send = sub.add_parser("send", help="send one msg or cmd and print its ack as a JSON line")
    common(send)
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--group-target", action="store_true", help="to every other client of the group")
    target.add_argument("--to", metavar="ID", help="direct, to client ID")
    target.add_argument("--broadcast", action="store_true", help="to every other client on the hub")
    target.add_argument("--echo", action="store_true", help="back to this socket only")
    body = send.add_mutually_exclusive_group(required=True)
    body.add_argument("--cmd")
    body.add_argument("--msg")
    send.add_argument("--payload", default="{}", help="a JSON object (default {})")
    send.add_argument("--no-ack", action="store_true", help="do not ask for an acknowledgement (status sent)")

    presence = sub.add_parser("presence", help="print the group's members as a JSON array")
    common(presence)
    return p


def _err(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _client(args: argparse.Namespace, **extra: Any) -> Client:
    return Client(
        args.url if len(args.url) > 1 else args.url[0],
        group=args.group,
        client=args.client,
        token=args.token or None,
        api_key=args.api_key or None,
        connect_timeout=args.timeout,
        **extra,
    )


def _verbose(client: Client) -> None:
    client.on("state", lambda old, new: _err(f"state: {old} -> {new}"))
    client.on("reconnecting", lambda r: _err(f"reconnecting: {r.code} {r.reason} (attempt {r.attempt}, in {r.delay:.2f} s, {r.url})"))
    client.on("presence", lambda p: _err(f"presence: {p.client_id} {p.event}"))
    client.on("error", lambda e: _err(f"error: {e}"))


async def _open(client: Client, args: argparse.Namespace) -> Optional[int]:
    """Logs its events with ``-v``, then connects; an exit code when it could not."""
    if args.verbose:
        _verbose(client)
    return await _connect(client, args.timeout)


async def _connect(client: Client, timeout: float) -> Optional[int]:
    """Connects; an exit code when it could not."""
    try:
        await asyncio.wait_for(client.connect(), timeout)
    except asyncio.TimeoutError:
        _err(f"no connection within {timeout:g} s")
        await client.close()
        return EXIT_TIMEOUT
    except ConnectError as e:
        _err(f"cannot connect: {e}")
        await client.close()
        return EXIT_NOT_OK
    return None


async def _tail(args: argparse.Namespace) -> int:
    client = _client(args)
    stopped: List[FinalClose] = []
    client.on("disconnected", stopped.append)

    def recovered(r: Recovery) -> None:
        if not r.recovered:
            _err(f"recovered: false on route {r.route}: messages were lost (epoch {r.epoch}, offset {r.offset})")

    client.on("recovered", recovered)
    if args.verbose:
        _verbose(client)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(sig, done.set)
    code = await _connect(client, args.timeout)
    if code is not None:
        return code
    printed = 0

    async def pump() -> None:
        nonlocal printed
        async for m in client:
            sys.stdout.write(json.dumps(m.raw) + "\n")
            sys.stdout.flush()
            printed += 1
            if args.count and printed >= args.count:
                return

    pumping = asyncio.ensure_future(pump())
    stop = asyncio.ensure_future(done.wait())
    await asyncio.wait({pumping, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    pumping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pumping
    await client.close()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    if stopped:
        f = stopped[0]
        _err(f"stopped: {f.kind} ({f.code} {f.reason})")
        return EXIT_NOT_OK
    return EXIT_OK


def _ack_line(ack: Ack) -> str:
    line: Dict[str, Any] = {"ack_id": ack.ack_id, "status": ack.status, "offset": ack.offset, "epoch": ack.epoch}
    if ack.duplicate:
        line["duplicate"] = True
    if ack.reason is not None:
        line["reason"] = ack.reason
    return json.dumps(line)


async def _send(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as e:
        _err(f"--payload is not JSON: {e}")
        return EXIT_USAGE
    if not isinstance(payload, dict):
        _err("--payload must be a JSON object")
        return EXIT_USAGE
    client = _client(args)
    code = await _open(client, args)
    if code is not None:
        return code
    body: Dict[str, Any] = {"cmd": args.cmd, "msg": args.msg, "payload": payload, "ack": not args.no_ack}
    try:
        if args.to is not None:
            ack = await client.send_direct(args.to, **body)
        elif args.broadcast:
            ack = await client.broadcast(**body)
        elif args.echo:
            ack = await client.echo(**body)
        else:
            ack = await client.send_group(**body)
    except AckFailed as e:
        print(_ack_line(e.ack), flush=True)
        return EXIT_NOT_OK
    except FrameError as e:
        _err(f"invalid frame, nothing sent: {e}")
        return EXIT_USAGE
    finally:
        await client.close()
    print(_ack_line(ack), flush=True)
    return EXIT_OK if ack.status in ("ok", "sent") else EXIT_NOT_OK


async def _presence(args: argparse.Namespace) -> int:
    client = _client(args)
    code = await _open(client, args)
    if code is not None:
        return code
    try:
        members = await client.presence(timeout=args.timeout)
    finally:
        await client.close()
    print(json.dumps(members), flush=True)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    run = {"tail": _tail, "send": _send, "presence": _presence}[args.command]
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return EXIT_OK
    except AetherError as e:
        _err(f"error: {e}")
        return EXIT_USAGE if e.code == "invalid_options" else EXIT_NOT_OK


if __name__ == "__main__":
    sys.exit(main())
