"""The exceptions the client raises. All of them derive from :class:`AetherError`.

``AetherError.code`` is a stable string an application can switch on; it uses the
TypeScript client's codes (clients/js/src/errors.ts).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .acks import Ack
    from .events import FinalClose

__all__ = [
    "AckFailed",
    "AetherError",
    "AetherTimeout",
    "ClientClosed",
    "ConnectError",
    "FrameError",
    "FrameTooLarge",
    "NotConnected",
    "OptionsError",
    "QueueFull",
]


class AetherError(Exception):
    """Base class of every exception of this package.

    ``code`` is one of ``invalid_options``, ``invalid_message``, ``too_large``,
    ``queue_full``, ``not_connected``, ``closed``, ``timeout``, ``token``,
    ``refused``, ``hub_closed``, ``disconnected_by_service``, ``failed``.
    ``close_code`` is the WebSocket close code (or, for ``refused``, the HTTP
    status of the refused upgrade) behind the error, when there is one.
    """

    code: str = "error"

    def __init__(self, message: str, *, close_code: Optional[int] = None, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.reason = reason


class OptionsError(AetherError, ValueError):
    """The ``Client`` was given an invalid option (a bad URL, group or client id, ...)."""

    code = "invalid_options"


class FrameError(AetherError, ValueError):
    """The frame would break the wire contract (docs/protocol.md section 2); nothing was sent."""

    code = "invalid_message"


class FrameTooLarge(FrameError):
    """The frame is larger than ``max_message_bytes`` (UTF-8 bytes); nothing was sent."""

    code = "too_large"


class QueueFull(AetherError):
    """``send_queue`` sends already wait to be written; this one was not queued (nothing sent)."""

    code = "queue_full"


class NotConnected(AetherError):
    """The operation needs a connection the client does not have (e.g. ``presence()`` before ``connect()``)."""

    code = "not_connected"


class ClientClosed(AetherError):
    """The client is closed (``close()``, or a final stop): it sends and connects no more."""

    code = "closed"


class AetherTimeout(AetherError, asyncio.TimeoutError):
    """No answer in time (``presence()``, ``receive(timeout=...)``)."""

    code = "timeout"


class ConnectError(AetherError):
    """``connect()`` gave up: the upgrade was refused for good, the client stopped before its
    first open, or ``reconnect=False`` and the first attempt failed.

    ``final`` is the :class:`~aether_hub.FinalClose` that stopped the client, when there is one.
    """

    code = "not_connected"

    def __init__(
        self,
        message: str,
        *,
        final: Optional[FinalClose] = None,
        close_code: Optional[int] = None,
        reason: Optional[str] = None,
    ) -> None:
        super().__init__(message, close_code=close_code, reason=reason)
        self.final = final
        if final is not None:
            self.code = final.kind


class AckFailed(AetherError):
    """The hub acknowledged the send ``failed`` (section 10): it was not published and reached
    nobody (``reason``: the hub's, e.g. ``unavailable``). Sending it again is safe."""

    code = "failed"

    def __init__(self, ack: Ack) -> None:
        super().__init__(
            f"not published, reached nobody ({ack.reason or 'no reason given'})",
            reason=ack.reason,
        )
        self.ack = ack
