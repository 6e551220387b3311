"""95% confidence intervals of mean scores: Wilson for proportions, bootstrap for the rest.

An exact-match accuracy is a proportion, so it gets the Wilson score interval (which stays in
[0, 1] and is not degenerate at 0 or n successes, as small per-source counts need); a mean
ROUGE-L F1 gets a percentile bootstrap with a fixed number of resamples and a fixed seed, so
the same scores always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: z for a two-sided 95% interval.
Z_95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def summarise(values: Sequence[float], metric: str) -> dict[str, float]:
    """``{"mean", "ci_low", "ci_high", "n"}`` of per-example scores, with a 95% CI: Wilson
    for exact match (values 0/1), percentile bootstrap for anything else."""
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    if n == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    if metric == "exact_match":
        low, high = wilson_interval(int(array.sum()), n)
    else:
        low, high = bootstrap_interval(array)
    return {"mean": float(array.mean()), "ci_low": low, "ci_high": high, "n": n}


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95% for the default z).

    Unlike the normal approximation it stays within [0, 1] and is not degenerate at 0 or n
    successes, which matters for small per-source counts.
    """
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # At 0 or n successes the bound is exactly 0 or 1; the formula leaves rounding noise there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (shape ``(n,)``), deterministic
    for a given seed."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, len(array), size=(resamples, len(array)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def interval_description(metric: str) -> str:
    """How :func:`summarise` computes the interval for ``metric``, for the record of a scores
    file."""
    if metric == "exact_match":
        return "95% Wilson score interval"
    return f"95% percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})"
