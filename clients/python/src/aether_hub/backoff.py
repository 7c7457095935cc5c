"""The reconnect delay: full-jitter exponential backoff (as clients/js/src/backoff.ts)."""

from __future__ import annotations

import random as _random
from typing import Callable

__all__ = ["backoff_delay"]


def backoff_delay(
    attempt: int,
    min_delay: float,
    max_delay: float,
    random: Callable[[], float] = _random.random,
) -> float:
    """Full jitter: a uniformly random delay in ``[0, min(max_delay, min_delay * 2**attempt))``
    seconds. ``attempt`` counts the failed attempts since the last open, from 0."""
    exp = min(max(attempt, 0), 30)
    cap = min(max_delay, min_delay * 2**exp)
    return float(random() * cap)
