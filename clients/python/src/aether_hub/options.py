"""The client's options, checked once (a bad one raises OptionsError from ``Client(...)``)."""

from __future__ import annotations

import ssl as _ssl
from dataclasses import dataclass
from typing import Awaitable, Callable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import OptionsError
from .frames import is_vision_id
from .session import normalise_url

__all__ = ["Options", "TokenGetter"]

TokenGetter = Callable[[], Union[Awaitable[str], str]]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise OptionsError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def _integer(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OptionsError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class Options:
    urls: List[str]
    group: str
    client: str
    token: Optional[str]
    get_token: Optional[TokenGetter]
    headers: List[Tuple[str, str]]
    min_delay: float
    max_delay: float
    heartbeat_interval: float
    dead_link_timeout: float
    ack_timeout: float
    send_queue: int
    reconnect: bool
    connect_timeout: float
    max_message_bytes: int
    inbox_size: int
    presence_timeout: float
    refresh_token: bool
    ssl: Optional[_ssl.SSLContext]

    @classmethod
    def build(
        cls,
        url: Union[str, Sequence[str]],
        *,
        group: str,
        client: str,
        token: Optional[str],
        get_token: Optional[TokenGetter],
        api_key: Optional[str],
        min_delay: float,
        max_delay: float,
        heartbeat_interval: float,
        dead_link_timeout: float,
        ack_timeout: float,
        send_queue: int,
        reconnect: bool,
        connect_timeout: float,
        max_message_bytes: int,
        inbox_size: int,
        presence_timeout: float,
        refresh_token: bool,
        ssl: Optional[_ssl.SSLContext],
        headers: Optional[Mapping[str, str]],
    ) -> Options:
        raw_urls = [url] if isinstance(url, str) else list(url)
        if not raw_urls:
            raise OptionsError("url is required (a string or a non-empty sequence)")
        try:
            urls = [normalise_url(u) for u in raw_urls]
        except ValueError as e:
            raise OptionsError(str(e)) from None
        for name, value in (("group", group), ("client", client)):
            if not is_vision_id(value):
                raise OptionsError(f"{name} must be a Vision ID (1-64 characters of A-Z a-z 0-9 _ -), got {value!r}")
        if get_token is not None and not callable(get_token):
            raise OptionsError("get_token must be callable")
        if token is not None and get_token is not None:
            raise OptionsError("give token or get_token, not both")
        if token is not None and (not isinstance(token, str) or not token):
            raise OptionsError("token must be a non-empty string")
        if max_delay < min_delay:
            raise OptionsError("max_delay must be >= min_delay")
        all_headers = list((headers or {}).items())
        if api_key is not None:
            all_headers.append(("X-Aether-API-Key", api_key))
        return cls(
            urls=urls,
            group=group,
            client=client,
            token=token,
            get_token=get_token,
            headers=all_headers,
            min_delay=_positive("min_delay", min_delay),
            max_delay=_positive("max_delay", max_delay),
            heartbeat_interval=_positive("heartbeat_interval", heartbeat_interval),
            dead_link_timeout=_positive("dead_link_timeout", dead_link_timeout),
            ack_timeout=_positive("ack_timeout", ack_timeout),
            send_queue=_integer("send_queue", send_queue, 1),
            reconnect=bool(reconnect),
            connect_timeout=_positive("connect_timeout", connect_timeout),
            max_message_bytes=_integer("max_message_bytes", max_message_bytes, 64),
            inbox_size=_integer("inbox_size", inbox_size, 0),
            presence_timeout=_positive("presence_timeout", presence_timeout),
            refresh_token=bool(refresh_token) and get_token is not None,
            ssl=ssl,
        )
