"""Full-jitter backoff, as clients/js/src/backoff.ts."""

from __future__ import annotations

import pytest

from aether_hub import backoff_delay


def test_full_jitter_bounds() -> None:
    assert backoff_delay(0, 0.5, 30, lambda: 0.0) == 0.0
    assert backoff_delay(0, 0.5, 30, lambda: 0.999) == pytest.approx(0.4995)
    assert backoff_delay(3, 0.5, 30, lambda: 0.5) == pytest.approx(2.0)
    assert backoff_delay(10, 0.5, 30, lambda: 0.999) == pytest.approx(29.97)  # capped
    assert backoff_delay(10_000, 0.5, 30, lambda: 0.5) == pytest.approx(15.0)  # no overflow
    assert backoff_delay(-3, 0.5, 30, lambda: 0.5) == pytest.approx(0.25)


def test_spread_over_the_window() -> None:
    samples = [backoff_delay(2, 1.0, 30) for _ in range(2000)]
    assert min(samples) >= 0
    assert max(samples) < 4.0
    assert min(samples) < 0.5
    assert max(samples) > 3.5
