"""Recovery positions (docs/protocol.md section 9), as clients/js/src/recovery.ts: the epoch and
highest offset seen per route, the ``since_*`` query parameters, duplicate detection by offset,
and reading the hub's ``recovery`` summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

from .frames import Message

__all__ = ["ROUTES", "Position", "Positions", "Recovery", "Route", "route_of"]

Route = Literal["client", "group", "broadcast"]
ROUTES: Tuple[Route, ...] = ("client", "group", "broadcast")


@dataclass(frozen=True)
class Position:
    """A place in a route's history: its epoch and an offset (0: nothing of the epoch seen)."""

    epoch: str
    offset: int


@dataclass(frozen=True)
class Recovery:
    """One route's entry of a resume summary (the ``recovered`` event).

    ``recovered`` False: messages of this route were lost (the epoch changed, or history no
    longer holds them); nothing was replayed for it, and the application must re-read its
    state. ``missed``: how many messages the hub replayed just now. ``epoch``/``offset``: the
    route's current position (they take no part in comparisons)."""

    route: str
    recovered: bool
    missed: int
    epoch: str = field(default="", compare=False)
    offset: int = field(default=0, compare=False)


def route_of(target: str) -> Optional[Route]:
    """The route a delivered message belongs to, from its target."""
    if target == "direct":
        return "client"
    if target == "group":
        return "group"
    if target == "broadcast":
        return "broadcast"
    return None


def _int(value: object) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Positions:
    """The position kept per route."""

    def __init__(self) -> None:
        self._pos: Dict[Route, Position] = {}

    def get(self) -> Dict[Route, Position]:
        return dict(self._pos)

    def has(self, route: Route) -> bool:
        p = self._pos.get(route)
        return p is not None and p.epoch != ""

    def since_params(self) -> List[Tuple[str, str]]:
        """The ``since_*`` query parameters: ``EPOCH:OFFSET``, or ``new`` for a route with no
        position (or the empty epoch a hub without history answers)."""
        out: List[Tuple[str, str]] = []
        for route in ROUTES:
            p = self._pos.get(route)
            out.append((f"since_{route}", f"{p.epoch}:{p.offset}" if p is not None and p.epoch else "new"))
        return out

    def is_duplicate(self, m: Message) -> bool:
        """A message already seen: same epoch, offset not above the highest seen on its route."""
        route = route_of(m.target)
        if route is None or m.offset is None or m.epoch is None:
            return False
        p = self._pos.get(route)
        return p is not None and p.epoch == m.epoch and m.offset <= p.offset

    def record(self, m: Message) -> None:
        """Records a delivered message's position (call once it is handed to the application)."""
        route = route_of(m.target)
        if route is None or m.offset is None or m.epoch is None:
            return
        self._pos[route] = Position(m.epoch, m.offset)

    def accept(self, m: Message) -> bool:
        """``is_duplicate`` then ``record``: False for a duplicate (to be dropped)."""
        if self.is_duplicate(m):
            return False
        self.record(m)
        return True

    def apply_summary(self, payload: Mapping[str, Any]) -> Dict[Route, Recovery]:
        """Applies a ``recovery`` summary's payload; returns its per-route entries."""
        routes: Dict[Route, Recovery] = {}
        for route in ROUTES:
            entry = payload.get(route)
            if not isinstance(entry, dict):
                continue
            epoch = entry.get("epoch")
            s = Recovery(
                route=route,
                recovered=entry.get("recovered") is True,
                missed=_int(entry.get("missed")) or 0,
                epoch=epoch if isinstance(epoch, str) else "",
                offset=_int(entry.get("offset")) or 0,
            )
            routes[route] = s
            p = self._pos.get(route)
            # The summary's position covers everything up to it (replayed, or not meant for us).
            if p is None or p.epoch != s.epoch or p.offset < s.offset:
                self._pos[route] = Position(s.epoch, s.offset)
        return routes
