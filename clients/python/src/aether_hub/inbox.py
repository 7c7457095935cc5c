"""The delivered messages waiting for ``async for`` / ``receive()``: ordered, bounded (a full
inbox stops the client reading from the hub: backpressure), and closable (readers then get
what is left, then the end)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable, Deque, Generic, Optional, TypeVar

__all__ = ["Inbox", "InboxClosed"]

T = TypeVar("T")


class InboxClosed(Exception):
    """The inbox is closed and empty."""


class Inbox(Generic[T]):
    """Created inside a running loop (futures bind to it)."""

    def __init__(self, maxsize: int) -> None:
        self._items: Deque[T] = deque()
        self._maxsize = maxsize
        self._closed = False
        self._changed: Optional[asyncio.Future[None]] = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    async def _wait(self) -> None:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)

    async def put(self, item: T, give_up: Optional[Callable[[], bool]] = None) -> bool:
        """Adds an item, waiting while the inbox is full; False (not added) when it is or gets
        closed, or when ``give_up()`` is true once there is room. Cancelled while waiting: the
        item was not added."""
        while len(self._items) >= self._maxsize and not self._closed:
            await self._wait()
        if self._closed or (give_up is not None and give_up()):
            return False
        self._items.append(item)
        self._notify()
        return True

    async def get(self, timeout: Optional[float] = None) -> T:
        """The oldest item, waiting for one; raises InboxClosed once closed and empty, and
        asyncio.TimeoutError after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._items:
            if self._closed:
                raise InboxClosed
            if deadline is None:
                await self._wait()
            else:
                left = deadline - loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError
                try:
                    await asyncio.wait_for(self._wait(), left)
                except asyncio.TimeoutError:
                    if not self._items and not self._closed:
                        raise
        item = self._items.popleft()
        self._notify()
        return item

    def close(self) -> None:
        self._closed = True
        self._notify()
