"""aether-hub-client: the Python (asyncio) client of aether-hub, for device workers,
controllers and services. See README.md; the wire contract is docs/protocol.md."""

from ._version import __version__
from .acks import Ack
from .backoff import backoff_delay
from .client import Client
from .close_codes import CloseDecision, decide_close, decide_http_status
from .errors import (
    AckFailed,
    AetherError,
    AetherTimeout,
    ClientClosed,
    ConnectError,
    FrameError,
    FrameTooLarge,
    NotConnected,
    OptionsError,
    QueueFull,
)
from .events import EVENTS, FinalClose, PresenceEvent, Reconnecting
from .frames import Message, build_frame, is_vision_id
from .options import TokenGetter
from .recovery import Position, Recovery

__all__ = [
    "EVENTS",
    "Ack",
    "AckFailed",
    "AetherError",
    "AetherTimeout",
    "Client",
    "ClientClosed",
    "CloseDecision",
    "ConnectError",
    "FinalClose",
    "FrameError",
    "FrameTooLarge",
    "Message",
    "NotConnected",
    "OptionsError",
    "Position",
    "PresenceEvent",
    "QueueFull",
    "Reconnecting",
    "Recovery",
    "TokenGetter",
    "__version__",
    "backoff_delay",
    "build_frame",
    "decide_close",
    "decide_http_status",
    "is_vision_id",
]
