"""Uncertainty of an accuracy: the Wilson score interval for a mean of per-sample scores in [0, 1]."""

from __future__ import annotations

import math


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% (default z) Wilson score interval for ``successes`` out of ``n`` (fractions of [0, 1]). Partial credit
    (RULER's multi-needle tasks) counts as fractional successes, which keeps the interval a close approximation.
    (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
